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
        out[kind] = (path, export_node(ExportOptions(run=str(run), out=str(path), **kw)))
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

    tflite-int8 also rounds channels to the profile's multiple (x86-host: 8).
    """
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    return _export(trained_run, tmp_path_factory.mktemp("tflite"), {
        "tflite": dict(format="tflite", quantize="none", compare_dense=False),
        "tflite-int8": dict(format="tflite", quantize="int8", round_channels=True, compare_dense=False),
    })
