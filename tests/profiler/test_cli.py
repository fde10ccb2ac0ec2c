"""`dslth-edge profile`: the table, --json against docs/profile-json.md, --compare, --per-op,
verdicts, the histogram, and the calibrate subcommand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dslth_edge.cli.profile import parse_input_shape, profile
from dslth_edge.errors import UsageError
from dslth_edge.device.profiles import load_profile

DOC = Path(__file__).resolve().parents[2] / "docs" / "profile-json.md"
FAST = ["--runs", "8", "--warmup", "1"]

#: every key docs/profile-json.md promises, per object (checked against the doc too)
REQUIRED = {
    "": ["schema", "tool", "host", "profile", "models", "comparison"],
    "host": ["hostname", "system", "machine", "cpu", "cpu_count", "cpu_mhz", "ram_mib", "python"],
    "report": ["model", "backend", "settings", "timing_ms", "latency_ms", "throughput", "memory", "per_op", "verdict", "samples_ms"],
    "model": ["path", "format", "size_bytes", "params", "macs", "dtype", "batch", "weight_layers", "analysis_note"],
    "backend": ["name", "package", "version", "threads", "inter_op_threads", "delegate", "providers", "notes"],
    "timing_ms": ["init", "first_inference", "warmup_mean", "warmup_count"],
    "latency_ms": ["count", "min", "max", "mean", "std", "p50", "p90", "p95", "p99", "total_s"],
    "throughput": ["inferences_per_s", "samples_per_s"],
    "memory": ["method", "baseline_rss_bytes", "init_peak_growth_bytes", "overall_peak_growth_bytes"],
    "per_op": ["available", "source", "runs", "total_op_us", "run_us", "note", "ops"],
    "verdict": ["profile", "device", "this_machine", "measured_on", "ok", "checks", "prediction"],
    "check": ["name", "value", "budget", "unit", "basis", "ok", "decides", "usage"],
}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(profile, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_doc_lists_every_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    for keys in REQUIRED.values():
        for key in keys:
            assert f"`{key}`" in text, key


def _validate(doc: dict) -> None:
    assert doc["schema"] == "dslth-edge/profile/1"
    for key in REQUIRED[""]:
        assert key in doc
    assert set(REQUIRED["host"]) <= set(doc["host"])
    for m in doc["models"]:
        assert set(REQUIRED["report"]) <= set(m)
        for section in ("model", "backend", "timing_ms", "latency_ms", "throughput", "memory"):
            assert set(REQUIRED[section]) <= set(m[section]), section
        lat = m["latency_ms"]
        assert lat["count"] == len(m["samples_ms"])
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert isinstance(m["backend"]["threads"], int)
        if m["per_op"] is not None:
            assert set(REQUIRED["per_op"]) <= set(m["per_op"])
        if m["verdict"] is not None:
            assert set(REQUIRED["verdict"]) <= set(m["verdict"])
            for c in m["verdict"]["checks"]:
                assert set(REQUIRED["check"]) <= set(c)


def test_table_prints(small_onnx: Path) -> None:
    out = invoke(str(small_onnx), *FAST)
    for word in ("profile of small.onnx", "measured on this machine", "first inference", "warm-up mean",
                 "p95 / p99", "throughput", "peak RSS growth", "threads", "delegate", "params / MACs"):
        assert word in out, word


def test_json_follows_the_schema(small_onnx: Path) -> None:
    doc = json.loads(invoke(str(small_onnx), *FAST, "--json", "--per-op", "--profile", "jetson-nano"))
    _validate(doc)
    (m,) = doc["models"]
    assert m["settings"]["runs"] == 8 and m["timing_ms"]["warmup_count"] == 1
    assert m["per_op"]["available"] is True
    assert doc["profile"] == {"name": "jetson-nano", "device": m["verdict"]["device"], "this_machine": False}
    assert doc["comparison"] is None


def test_compare_shows_ratios(small_onnx: Path, small_tflite: Path, small_int8_tflite: Path) -> None:
    out = invoke(str(small_onnx), "--compare", str(small_tflite), str(small_int8_tflite), *FAST)
    assert "comparison (ratios to small.onnx)" in out
    assert "small-int8.tflite" in out and "ratio" in out
    assert re.search(r"\d\.\d\d×", out)
    doc = json.loads(invoke(str(small_onnx), "--compare", str(small_tflite), *FAST, "--json"))
    _validate(doc)
    assert [m["backend"]["name"] for m in doc["models"]] == ["onnxruntime", "litert"]
    (row,) = doc["comparison"]["models"]
    assert row["ratios"]["macs"] == pytest.approx(1.0)
    expected = doc["models"][1]["latency_ms"]["p95"] / doc["models"][0]["latency_ms"]["p95"]
    assert row["ratios"]["p95_ms"] == pytest.approx(expected)


def test_per_op_table(small_onnx: Path, small_tflite: Path) -> None:
    out = invoke(str(small_onnx), *FAST, "--per-op")
    assert "per-op time of small.onnx" in out and "share" in out and "Conv" in out
    out = invoke(str(small_tflite), *FAST, "--per-op")
    assert "per-op (small.tflite): not available" in out


def test_verdict_for_another_device(small_onnx: Path) -> None:
    out = invoke(str(small_onnx), *FAST, "--profile", "jetson-nano")
    assert "verdict for profile jetson-nano" in out
    assert "p95 measured on this machine" in out and "[not counted]" in out
    assert "predicted latency" in out and "predicted for jetson-nano" in out
    assert "memory:" in out and "storage:" in out and "=> fits the budgets" in out


def test_verdict_over_budget(small_onnx: Path, tmp_path: Path) -> None:
    """A profile whose budgets the model cannot meet gives an 'OVER' verdict."""
    text = Path(load_profile("nrf52840").source_path).read_text(encoding="utf-8")
    tight = tmp_path / "tight.toml"
    tight.write_text(re.sub(r"latency_ms = [0-9.]+", "latency_ms = 0.001", text, count=1), encoding="utf-8")
    out = invoke(str(small_onnx), *FAST, "--profile", str(tight))
    assert "OVER predicted latency" in out and "does NOT fit" in out


def test_histogram(small_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "lat.png"
    invoke(str(small_onnx), *FAST, "--histogram", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_shows_both_forms() -> None:
    out = CliRunner().invoke(profile, ["--help"]).output
    assert "MODEL" in out and "calibrate" in out and "--per-op" in out and "--compare" in out


def test_calibrate_writes_a_loadable_host_profile(small_onnx: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "host.toml"
    doc = json.loads(invoke("--calibrate", "--passes", "1", "--runtimes", "onnxruntime/fp32", "--no-training",
                            "--out", str(out_file), "--json"))
    assert doc["profile_path"] == str(out_file) and len(doc["points"]) >= 20
    assert list(doc["runtimes"]) == ["onnxruntime/fp32"] and doc["training"] is None
    assert doc["calibration_path"] == str(tmp_path / "host-calibration.json")
    prof = load_profile(str(out_file))
    assert prof.latency_basis == "measured" and list(prof.calibration.runtimes) == ["onnxruntime/fp32"]
    assert prof.compute.effective_fp32_gmacs == pytest.approx(doc["fit"]["effective_fp32_gmacs"], rel=1e-3)
    assert prof.compute.channel_multiple == doc["fit"]["channel_multiple"]
    out = invoke(str(small_onnx), *FAST, "--profile", str(out_file))
    assert "(this machine)" in out and "predicted from host's calibration" in out


def test_input_shape_parsing() -> None:
    assert parse_input_shape("3x32x32") == {"": (3, 32, 32)}
    assert parse_input_shape("input=1x28x28") == {"input": (1, 28, 28)}
    for bad in ("3xx2", "a=b", "0x3"):
        with pytest.raises(UsageError):
            parse_input_shape(bad)


def test_mcu_verdict_uses_tflite_micro_figures(small_tflite: Path, small_onnx: Path) -> None:
    """esp32-s3 runs TFLite Micro: memory is the TFLM arena, latency the prediction; the host's figures do not count."""
    pytest.importorskip("tflite_micro")
    from dslth_edge.exporters.tflm import measure_arena

    doc = json.loads(invoke(str(small_tflite), *FAST, "--profile", "esp32-s3", "--json"))
    checks = {c["name"]: c for c in doc["models"][0]["verdict"]["checks"]}
    assert set(checks) == {"host latency", "predicted latency", "memory", "host memory", "storage"}
    assert checks["memory"]["value"] == measure_arena(small_tflite.read_bytes()).recommended_bytes
    assert checks["memory"]["decides"] and "TFLite Micro tensor arena" in checks["memory"]["basis"]
    assert checks["predicted latency"]["decides"] and checks["storage"]["decides"]
    assert not checks["host latency"]["decides"] and not checks["host memory"]["decides"]
    assert "on this host, not on the device" in checks["host latency"]["basis"]
    assert "on this host, not on the device" in checks["host memory"]["basis"]
    out = invoke(str(small_tflite), *FAST, "--profile", "esp32-s3")
    assert "info host memory:" in out and "TFLite Micro tensor arena" in out
    onnx_doc = json.loads(invoke(str(small_onnx), *FAST, "--profile", "esp32-s3", "--json"))
    memory = {c["name"]: c for c in onnx_doc["models"][0]["verdict"]["checks"]}["memory"]
    assert memory["value"] is None and "TFLite Micro runs .tflite files" in memory["basis"]
