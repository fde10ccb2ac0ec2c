"""A real finished run (train API, synthetic data) shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")


def _export(run: Path, directory: Path, kinds: dict[str, dict]) -> dict[str, tuple[Path, object]]:
    from dslth_edge.exporters.pipeline import ExportOptions, export_node

    out = {}
    for kind, kw in kinds.items():
        path = directory / f"{kind}.{kw['format']}"
        # these files test shrink and conversion fidelity to the masked model: no deploy-time step
        # (tests/exporters/test_deploy_step.py and test_cli_export.py cover the step)
        out[kind] = (path, export_node(ExportOptions(run=str(run), out=str(path), **{"deploy_step": "none", **kw})))
    return out


@pytest.fixture(scope="session")
def exported_onnx(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """The node exported to ONNX once: {"onnx", "onnx-int8"} -> (file, ExportReport)."""
    return _export(trained_run, tmp_path_factory.mktemp("onnx"), {
        "onnx": dict(format="onnx", quantize="none"),
        "onnx-int8": dict(format="onnx", quantize="int8", compare_dense=False),
    })


@pytest.fixture(scope="session")
def exported_tflite(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """The node exported to TFLite once: {"tflite", "tflite-int8"} -> (file, ExportReport).

    Both pad the shrunk widths with zero channels to the profile's multiple (x86-host: 8),
    the default; tflite-int8 names it explicitly.
    """
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    return _export(trained_run, tmp_path_factory.mktemp("tflite"), {
        "tflite": dict(format="tflite", quantize="none", compare_dense=False),
        "tflite-int8": dict(format="tflite", quantize="int8", channel_multiple=8, compare_dense=False),
    })


@pytest.fixture(scope="session")
def mcu_fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A short simulated fleet of two microcontroller nodes (nrf52840, esp32-s3), then
    ``dslth-edge export`` with no run, format or dtype option, run from the folder that
    holds runs/: {"cwd", "run", "exit_code", "output"}. Each node becomes a TFLite Micro
    int8 bundle (its profile's default); aeq route and 300 test samples keep it short.
    """
    import os

    from click.testing import CliRunner

    from dslth_edge.cli import cli
    from dslth_edge.fleet.plan import FleetOptions
    from dslth_edge.fleet.simulator import simulate

    pytest.importorskip("litert_torch")
    pytest.importorskip("tflite_micro")
    cwd = tmp_path_factory.mktemp("mcu-fleet")
    run = cwd / "runs" / "fleet"
    simulate(FleetOptions(nodes=2, topology="full", dataset="synthetic", model="mcu-cnn", granularity="channel", keep=0.5,
                          rounds=10, eval_every=10, eval_samples=200, profiles=("nrf52840", "esp32-s3"), out=str(run),
                          overrides={"batch_size": 64}), write_plots=False)
    before = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(cli, ["export", "--int8-route", "aeq", "--no-dense", "--eval-samples", "300"])
    finally:
        os.chdir(before)
    return {"cwd": cwd, "run": run, "exit_code": res.exit_code, "output": res.output, "exception": res.exception}
