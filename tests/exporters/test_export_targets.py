"""Which nodes `dslth-edge export` exports and how; budgets: one line per violation, exit 3."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from dslth_edge.exporters.budget import BudgetCheck, judge_export, raise_if_over
from dslth_edge.exporters.targets import latest_run, node_defaults, resolve_targets

from dslth_edge.cli import cli, main
from dslth_edge.device.profiles import load_profile
from dslth_edge.errors import OverBudgetError, UsageError


def _copy_node(src: Path, dst_run: Path, node: int = 0) -> Path:
    dst = dst_run / f"node-{node}"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("exports"))
    return dst


def test_no_run_and_no_runs_dir_says_what_to_run_first(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "tflite"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no runs/ directory" in err and "dslth-edge train --profile" in err
    (tmp_path / "runs").mkdir()
    with pytest.raises(UsageError, match="holds no run"):
        latest_run(tmp_path / "runs")


def test_latest_run_is_the_one_trained_last(trained_run, tmp_path) -> None:
    runs = tmp_path / "runs"
    old, new = _copy_node(trained_run / "node-0", runs / "old"), _copy_node(trained_run / "node-0", runs / "new")
    (runs / "not-a-run").mkdir()
    for i, d in enumerate((new, old)):  # "old" was trained (mask written) later
        for f in d.iterdir():
            os.utime(f, (1_000_000 + i, 1_000_000 + i))
    assert latest_run(runs) == runs / "old"
    (new / "exports").mkdir()  # exporting a run does not make it the latest
    assert latest_run(runs) == runs / "old"
    targets = resolve_targets(None, None, None, None, runs_root=runs)
    assert [(t.node_dir, t.node_id, t.profile, t.format, t.quantize) for t in targets] == [
        (old, 0, "x86-host", "onnx", "none")]


def test_every_node_with_its_profiles_format_and_dtype(trained_run, tmp_path) -> None:
    run = tmp_path / "fleet"
    for i, profile in enumerate(("esp32-s3", "jetson-nano", "raspberry-pi-4")):
        d = _copy_node(trained_run / "node-0", run, i)
        cfg = json.loads((d / "config.json").read_text())
        cfg["profile"] = profile
        (d / "config.json").write_text(json.dumps(cfg))
    got = [(t.node_id, t.format, t.quantize) for t in resolve_targets(run, None, None, None)]
    rpi = load_profile("raspberry-pi-4").export
    jet = load_profile("jetson-nano").export
    assert got == [(0, "tflm", "int8"), (1, jet.format, "int8" if jet.dtype == "int8" else "none"),
                   (2, rpi.format, "int8" if rpi.dtype == "int8" else "none")]
    first = resolve_targets(run, None, "tflite", None)[0]
    assert (first.format, first.quantize) == ("tflite", "int8")
    assert [t.node_id for t in resolve_targets(run, 2, None, "none")] == [2]
    assert [t.node_id for t in resolve_targets(run / "node-1", None, None, None)] == [1]
    assert node_defaults(None, None, None) == ("onnx", "none")
    assert node_defaults("esp32-s3", None, "none") == ("tflm", "none")


def _tiny_profile(tmp_path: Path, storage_mib: float) -> Path:
    text = (Path(load_profile("nrf52840").source_path)).read_text()
    text = text.replace("model_storage_mib = 0.5", f"model_storage_mib = {storage_mib}")
    path = tmp_path / "tiny-flash.toml"
    path.write_text(text)
    assert load_profile(str(path)).budget.model_storage_mib == storage_mib
    return path


def test_over_budget_exits_3_with_both_numbers(trained_run, tmp_path, capsys) -> None:
    node = _copy_node(trained_run / "node-0", tmp_path / "run")
    cfg = json.loads((node / "config.json").read_text())
    cfg["profile"] = str(_tiny_profile(tmp_path, 0.004))  # a 4 KiB model partition
    (node / "config.json").write_text(json.dumps(cfg))
    args = ["export", "--run", str(node.parent), "--format", "onnx", "--quantize", "none", "--no-dense",
            "--eval-samples", "100"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 3
    err = capsys.readouterr().err
    size = (node / "exports" / "model.onnx").stat().st_size
    assert f"storage: {size / 1024:.1f} KiB ({size:,} B) > 4.1 KiB (4,194 B) budget" in err
    report = json.loads((node / "exports" / "report.json").read_text())["exports"]["model.onnx"]
    assert report["budget"]["verdict"] == "over budget"
    # (the fixture's tiny run is near chance: exit 6 unless accepted as well)
    res = CliRunner().invoke(cli, [*args, "--allow-over-budget", "--allow-weak"])
    assert res.exit_code == 0, res.output
    assert "OVER storage:" in res.output


def test_budget_lines_and_errors(tmp_path) -> None:
    check = BudgetCheck("latency", 12.5, 10.0, "ms", "predicted")
    assert check.ok is False and check.line() == "latency: 12.50 ms > 10.00 ms budget (predicted)"
    assert BudgetCheck("ram", None, 1.0, "bytes", "x").ok is None
    model = tmp_path / "m.onnx"
    pytest.importorskip("onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), model)
    verdict = judge_export(model, load_profile(str(_tiny_profile(tmp_path, 0.00001))))
    assert [c.name for c in verdict.checks] == ["storage", "ram", "latency"]
    assert not verdict.ok and [c.name for c in verdict.violations] == ["storage"]
    with pytest.raises(OverBudgetError) as exc:
        raise_if_over([verdict])
    assert exc.value.exit_code == 3 and "storage:" in str(exc.value) and "budget" in str(exc.value)
