"""`dslth-edge export`: one clear line and exit 2 on bad input; no half-written file; --json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from dslth_edge.cli import cli, main
from dslth_edge.cli.export import export
from dslth_edge.errors import CheckpointError, ExportError
from dslth_edge.exporters import pipeline

if "export" not in cli.commands:  # the lead registers it in cli.py; tests work either way
    cli.add_command(export)


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_run_without_final_mask(trained_run, tmp_path, capsys) -> None:
    node = tmp_path / "unfinished" / "node-0"
    shutil.copytree(trained_run / "node-0", node, ignore=shutil.ignore_patterns("mask.npz", "exports"))
    err = _fail(["export", "--run", str(node.parent)], capsys)
    assert "no final mask" in err
    with pytest.raises(CheckpointError):
        pipeline.export_node(pipeline.ExportOptions(run=str(node)))
    assert not (node / "exports").exists()


def test_bad_run_dir_and_node(trained_run, tmp_path, capsys) -> None:
    assert "does not exist" in _fail(["export", "--run", str(tmp_path / "nope")], capsys)
    assert "no node 5" in _fail(["export", "--run", str(trained_run), "--node", "5"], capsys)
    assert "--node is 1" in _fail(["export", "--run", str(trained_run / "node-0"), "--node", "1"], capsys)


def test_unknown_format_and_quantization(trained_run, capsys) -> None:
    assert "unknown format 'coreml'" in _fail(["export", "--run", str(trained_run), "--format", "coreml"], capsys)
    assert "unknown quantization 'int4'" in _fail(["export", "--run", str(trained_run), "--quantize", "int4"], capsys)


def test_missing_export_extra(trained_run, monkeypatch, capsys) -> None:
    real = pipeline.importlib.util.find_spec
    monkeypatch.setattr(pipeline.importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    err = _fail(["export", "--run", str(trained_run), "--format", "tflite"], capsys)
    assert "litert_torch" in err and "pip install" in err
    with pytest.raises(ExportError, match=r"needs litert_torch \(missing\): pip install 'dslth-edge\[export\]'"):
        pipeline.check_extra("tflite", "none")


def test_failed_export_leaves_no_file(trained_run, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"previous good file")

    def broken(*args: object, **kw: object) -> bytes:
        raise ExportError("simulated failure after conversion")

    monkeypatch.setattr(pipeline, "_with_metadata", broken)
    err = _fail(["export", "--run", str(trained_run), "--out", str(out), "--no-dense", "--eval-samples", "100"], capsys)
    assert "simulated failure" in err
    assert out.read_bytes() == b"previous good file"  # the old file is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temp files, no report


def test_json_report(trained_run, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", "--run", str(trained_run / "node-0"), "--out", str(out), "--no-dense",
                                   "--eval-samples", "200", "--json"])
    assert res.exit_code == 0, res.output
    docs = json.loads(res.stdout)
    assert len(docs) == 1  # one report per exported node
    doc = docs[0]
    assert doc["file"] == str(out) and out.is_file()
    assert doc["budget"]["profile"] == "x86-host" and doc["budget"]["verdict"] == "fits"
    # the node's plan shrinks: by default its surviving weights train on its data before conversion
    assert [r["variant"] for r in doc["rows"]] == ["masked-dense", "shrunk+finetune", "shrunk+int8"]
    assert doc["deploy_step"]["kind"] == "finetune" and doc["deploy_step"]["steps"] == 100
    assert doc["provenance"]["deploy_step"] == {"kind": "finetune", "steps": 100}
    assert doc["worth"]["worth"] is True and doc["worth"]["accuracy"] == doc["rows"][1]["accuracy"]
    assert doc["parity"]["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "report.json").read_text())["exports"]["m.onnx"]["format"] == "onnx"
    # zero-channel padding to the profile's multiple (x86-host: 8) by default; no re-admitting rounding
    assert doc["shrink"]["channel_multiple"] == 8 and "rounding" not in doc
    assert all(w % 8 == 0 or layer == "fc" for layer, w in doc["shrink"]["widths"].items())


def test_channel_multiple_must_be_positive(capsys) -> None:
    res = CliRunner().invoke(cli, ["export", "--channel-multiple", "0"])
    assert res.exit_code == 2 and "--channel-multiple" in res.output
    res = CliRunner().invoke(cli, ["export", "--round-channels"])  # the re-admitting rounding is gone
    assert res.exit_code == 2 and "No such option" in res.output


def test_default_output_path(tmp_path) -> None:
    assert pipeline.default_output(Path("r/node-2"), "tflite", "int8") == Path("r/node-2/exports/model-int8.tflite")
    assert pipeline.default_output(Path("r/node-0"), "onnx", "none") == Path("r/node-0/exports/model.onnx")
    assert pipeline.default_output(Path("r/node-1"), "tflm", "int8") == Path("r/node-1/exports/tflm-int8/model.tflite")
