"""The calibration file: its schema (parse, validate, round trip) and its use by both the
planner and the export verdict, which must read the same numbers.

No timing is asserted: the calibrations here are written by hand (known coefficients),
and what is checked is the arithmetic both readers do with them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.cost.calibration import (
    LATENCY_COEFFICIENTS,
    TRAINING_COEFFICIENTS,
    CalibrationError,
    calibration_from_json,
    load_calibration,
    parse_calibration,
)
from dslth_edge.cost.latency import RoundTimer, predict, predict_round
from dslth_edge.cost.ops import OpCost
from dslth_edge.device.planner import plan
from dslth_edge.device.profiles import load_profile
from dslth_edge.errors import ProfileError
from dslth_edge.cost.layers import LayerCost

COEF = {"conv_mac_s": 1e-10, "conv_window_s": 2e-9, "fc_mac_s": 3e-10, "weight_op_s": 5e-6, "other_op_s": 1e-6,
        "other_byte_s": 1e-10, "inference_s": 2e-5}


def runtime_entry(runtime: str = "onnxruntime", dtype: str = "fp32", scale: float = 1.0, multiple: int = 8) -> dict[str, Any]:
    return {"runtime": runtime, "version": "1.0", "dtype": dtype, "threads": 1, "channel_multiple": multiple,
            "coefficients": {k: v * scale for k, v in COEF.items()}, "points": 40, "passes": 3,
            "median_rel_error": 0.05}


def document(scale: float = 1.0, training: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "dslth-edge/calibration", "version": 1, "created": "2026-12-07T21:00:00Z",
        "host": {"hostname": "dev", "cpu": "test cpu", "machine": "aarch64", "cpu_count": 4},
        "runtimes": {
            "onnxruntime/fp32": runtime_entry(scale=scale),
            "litert-xnnpack/fp32": runtime_entry("litert-xnnpack", "fp32", scale * 1.5, 16),
            "litert-xnnpack/int8": runtime_entry("litert-xnnpack", "int8", scale * 0.5, 16),
        },
        "training": None,
    }
    if training:
        doc["training"] = {"runtime": "torch", "version": "2.13.0", "threads": 2, "points": 10, "passes": 3,
                           "median_rel_error": 0.04,
                           "coefficients": {"train_mac_s": 1e-9 * scale, "layer_pass_s": 1e-4, "step_s": 1e-3,
                                            "sample_s": 1e-5}}
    return doc


# --------------------------------------------------------------------------- schema


def test_round_trip() -> None:
    cal = parse_calibration(document())
    again = calibration_from_json(cal.to_json())
    assert again.to_dict() == cal.to_dict() == json.loads(json.dumps(document()))
    assert cal.runtime("litert-xnnpack", "int8").coefficients["conv_mac_s"] == pytest.approx(0.5e-10)
    assert cal.runtime("onnxruntime", "int8") is None
    assert "host dev" in cal.describe() and "torch training" in cal.describe()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "schema version 2 is not supported"),
    (lambda d: d.update(schema="other"), "schema must be"),
    (lambda d: d.pop("runtimes"), "missing key 'runtimes'"),
    (lambda d: d.update(runtimes={}), "runtimes must be a non-empty object"),
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"]["coefficients"].update(conv_mac_s=-1.0), "conv_mac_s must be a finite number >= 0"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"]["coefficients"].update(conv_mac_s=math.nan), "finite number"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"]["coefficients"].pop("inference_s"), "missing key"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"].update(runtime="tvm"), "runtime must be one of"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"].update(dtype="int8"), "keyed 'onnxruntime/int8'"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"].update(channel_multiple=0), "channel_multiple must be an integer >= 1"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"].update(threads=True), "threads must be an integer"),
    (lambda d: d["runtimes"]["onnxruntime/fp32"].update(coefficients=dict.fromkeys(LATENCY_COEFFICIENTS, 0.0)),
     "not all zero"),
    (lambda d: d["training"]["coefficients"].pop("step_s"), "missing key 'training.coefficients.step_s'"),
])
def test_invalid_documents_are_refused_naming_the_key(mutate: Any, message: str) -> None:
    doc = document()
    mutate(doc)
    with pytest.raises(CalibrationError, match=message.replace("(", r"\(").replace("'", "'")) as exc:
        parse_calibration(doc, source_path="cal.json")
    assert str(exc.value).startswith("cal.json: ")


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not JSON"):
        calibration_from_json("{", source_path="x.json")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "absent.json")


_json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)
_paths = st.lists(st.sampled_from(["runtimes", "onnxruntime/fp32", "coefficients", "conv_mac_s", "training", "host",
                                   "version", "threads", "channel_multiple", "dtype", "step_s"]), min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(path=_paths, value=_json)
def test_parser_accepts_or_refuses_cleanly(path: list[str], value: Any) -> None:
    """Any document with any value put anywhere either parses (and then round-trips) or
    raises CalibrationError: never another exception, never a half-valid calibration."""
    doc = document()
    node: Any = doc
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
            break
        node = node[key]
    if isinstance(node, dict):
        node[path[-1]] = value
    try:
        cal = parse_calibration(doc)
    except CalibrationError:
        return
    assert calibration_from_json(cal.to_json()).to_dict() == cal.to_dict()
    for fit in cal.runtimes.values():
        assert all(math.isfinite(v) and v >= 0 for v in fit.coefficients.values())


@settings(max_examples=100, deadline=None)
@given(coef=st.fixed_dictionaries({k: st.floats(0, 1e-3) for k in LATENCY_COEFFICIENTS}),
       tcoef=st.fixed_dictionaries({k: st.floats(0, 1.0) for k in TRAINING_COEFFICIENTS}),
       multiple=st.integers(1, 64), threads=st.integers(1, 64))
def test_valid_documents_round_trip(coef: dict[str, float], tcoef: dict[str, float], multiple: int, threads: int) -> None:
    doc = document()
    entry = doc["runtimes"]["onnxruntime/fp32"]
    entry.update(coefficients=coef, channel_multiple=multiple, threads=threads)
    doc["training"]["coefficients"] = tcoef
    ok_latency = any(coef.values())
    ok_training = any(tcoef.values())
    if not (ok_latency and ok_training):
        with pytest.raises(CalibrationError, match="not all zero"):
            parse_calibration(doc)
        return
    cal = parse_calibration(doc)
    assert cal.runtime("onnxruntime", "fp32").coefficients == coef
    assert calibration_from_json(cal.to_json()).to_dict() == cal.to_dict()


# --------------------------------------------------------------------------- profiles


def write_profile(tmp_path: Path, doc: dict[str, Any], *, base: str = "raspberry-pi-4", fmt: str | None = None,
                  name: str = "dev") -> Path:
    """A copy of a built-in profile naming a calibration file written beside it."""
    cal = tmp_path / f"{name}-calibration.json"
    cal.write_text(json.dumps(doc))
    text = Path(load_profile(base).source_path).read_text()
    head, _, rest = text.partition("[cpu]")
    prof = head + f'calibration = "{cal.name}"\n\n[cpu]' + rest
    if fmt is not None:
        prof = prof.replace('format = "tflite"', f'format = "{fmt}"').replace('format = "onnx"', f'format = "{fmt}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(prof)
    return path


def test_a_profile_names_its_calibration(tmp_path: Path) -> None:
    prof = load_profile(str(write_profile(tmp_path, document())))
    assert prof.latency_basis == "measured" and prof.calibration is not None
    assert prof.to_dict()["calibration"] == str(tmp_path / "dev-calibration.json")
    assert load_profile("raspberry-pi-4").latency_basis == "cited"
    bad = document()
    bad["version"] = 7
    with pytest.raises(ProfileError, match="calibration: .*version 7"):
        load_profile(str(write_profile(tmp_path, bad, name="bad")))


def _conv(name: str, macs: int, cout: int, cin: int, dtype: str = "fp32", op_type: str = "Conv") -> OpCost:
    return OpCost(name, op_type, macs, 1000, 0, dtype, cout, cin)


def test_calibrated_prediction_is_the_documented_sum(tmp_path: Path) -> None:
    prof = load_profile(str(write_profile(tmp_path, document())))
    ops = [_conv("c", 1_000_000, 12, 4), OpCost("p", "MaxPool", 0, 4000, 0, "fp32"),
           OpCost("g", "Gemm", 50_000, 0, 0, "fp32", 10, 5000)]
    p = predict(ops, prof, fmt="onnx")
    padded = 1_000_000 * 16 / 12  # 12 channels padded to the fit's multiple of 8
    expected = (COEF["conv_mac_s"] * padded + COEF["conv_window_s"] * padded / 4 + COEF["weight_op_s"]
                + COEF["other_op_s"] + COEF["other_byte_s"] * 4000
                + COEF["fc_mac_s"] * 50_000 * 16 / 10 + COEF["weight_op_s"] + COEF["inference_s"])
    assert p.total_s == pytest.approx(expected)
    assert p.basis == "measured" and p.runtime == "onnxruntime/fp32"
    # a .tflite file's operators are predicted with the LiteRT fit of their dtype
    tfl = predict([_conv("c", 1_000_000, 16, 4, "int8", "CONV_2D")], prof)
    assert tfl.runtime == "litert-xnnpack/int8"
    # a runtime the calibration did not measure falls back to the cited figures
    doc = document()
    del doc["runtimes"]["litert-xnnpack/int8"]
    partial = load_profile(str(write_profile(tmp_path, doc, name="partial")))
    assert predict([_conv("c", 1_000_000, 16, 4, "int8", "CONV_2D")], partial).basis == "cited"


def layers() -> list[LayerCost]:
    return [
        LayerCost("c1", "conv", 3, 32, 32 * 3 * 9, 32 * 3 * 9 * 32 * 32, 3 * 32 * 32, 32 * 32 * 32, None, True),
        LayerCost("c2", "conv", 32, 64, 64 * 32 * 9, 64 * 32 * 9 * 16 * 16, 32 * 16 * 16, 64 * 16 * 16, "c1", True),
        LayerCost("fc", "linear", 64 * 64, 10, 64 * 64 * 10, 64 * 64 * 10, 64 * 64, 10, "c2", False),
    ]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_planner_and_verdict_read_the_same_calibration(tmp_path: Path, fmt: str) -> None:
    """The planner's latency at a keep and the export verdict's predicted latency of the
    file the plan describes are the same number, and both move with the calibration."""
    from dslth_edge.cost.latency import op_costs_from_layer_costs
    from dslth_edge.profiler.verdict import judge

    values = {}
    for scale in (1.0, 3.0):
        prof = load_profile(str(write_profile(tmp_path, document(scale), fmt=fmt, name=f"dev{scale:g}")))
        result = plan(layers(), prof, granularity="channel", dtype="fp32")
        planned = result.check("latency").value
        # the file the plan describes: its weight layers at the planned widths, named as the format names them
        ops = op_costs_from_layer_costs(layers(), [x.keep_out for x in result.layers], dtype="fp32")
        names = {"onnx": {"conv": "Conv", "Gemm": "Gemm"}, "tflite": {"conv": "CONV_2D", "Gemm": "FULLY_CONNECTED"}}[fmt]
        file_ops = tuple(OpCost(o.name, names[o.op_type], o.macs, o.bytes, o.params, o.dtype, o.out_channels,
                                o.in_channels, o.graph_input) for o in ops)
        verdict = judge(_result(file_ops, fmt), prof)
        judged = next(c for c in verdict.checks if c.name == "predicted latency")
        assert judged.decides and "calibration of" in judged.basis
        assert judged.value == pytest.approx(planned, rel=1e-12)
        values[scale] = planned
    cited = plan(layers(), load_profile("raspberry-pi-4"), granularity="channel", dtype="fp32").check("latency").value
    assert values[3.0] == pytest.approx(3 * values[1.0]) and values[1.0] != pytest.approx(cited)


def _result(ops: tuple[OpCost, ...], fmt: str) -> Any:
    """A ProfileResult with the given operators (the measured figures do not matter here)."""
    from dslth_edge.cost.analysis import ModelInfo
    from dslth_edge.profiler.backends import BackendInfo
    from dslth_edge.profiler.host import host_info
    from dslth_edge.profiler.measure import MemoryFigures, ProfileOptions, ProfileResult
    from dslth_edge.profiler.stats import summarize

    model = ModelInfo(path=f"m.{fmt}", format=fmt, size_bytes=1000, params=1, macs=sum(o.macs for o in ops),
                      dtype="fp32", batch=1, ops=ops)
    return ProfileResult(
        model=model, backend=BackendInfo("onnxruntime", "onnxruntime", "x", 1, None, None),
        options=ProfileOptions(), input_shapes={}, init_ms=1.0, first_inference_ms=1.0, warmup_ms=(),
        latency=summarize([1e-3, 1e-3]), samples_ms=(1.0, 1.0), memory=MemoryFigures("none", None, None, None),
        host=host_info(),
    )


# --------------------------------------------------------------------------- time per round


def test_time_per_round_from_the_calibration(tmp_path: Path) -> None:
    prof = load_profile(str(write_profile(tmp_path, document())))
    r = predict_round(prof, forward_macs=1e6, layers=4, batch=32, chunks=2, local_steps=3, frame_bytes=25_000)
    compute = 1e-9 * 3 * 1e6 * 32 * 3 + 1e-4 * 4 * 2 * 3 + 1e-3 * 3 + 1e-5 * 32 * 3
    assert r.basis == "measured" and r.compute_s == pytest.approx(compute)
    assert r.uplink_s == pytest.approx(25_000 * 8 / (prof.network.uplink_kbps * 1000))
    cited = predict_round(load_profile("raspberry-pi-4"), forward_macs=1e6, layers=4, batch=32)
    assert cited.basis == "cited" and cited.uplink_s == 0.0


def test_training_plan_uses_the_calibrated_round_time(tmp_path: Path) -> None:
    from dslth_edge.device.training import plan_training

    slow, fast = document(scale=4.0), document(scale=1.0)
    p_slow = plan_training("mcu-cnn", (1, 28, 28), 10, load_profile(str(write_profile(tmp_path, slow, name="s"))))
    p_fast = plan_training("mcu-cnn", (1, 28, 28), 10, load_profile(str(write_profile(tmp_path, fast, name="f"))))
    assert p_slow.time_per_round_s > p_fast.time_per_round_s
    assert any("calibration" in n for n in p_fast.notes)


def test_round_timer_skips_warm_up_and_evaluation_rounds() -> None:
    timer = RoundTimer(2.0, skip=1, after=3)
    assert timer.observe(9.0) is None  # warm-up
    assert timer.observe(1.0) is None
    assert timer.observe(50.0, evaluated=True) is None
    assert timer.observe(3.0) is None
    line = timer.observe(2.0)
    assert line is not None and timer.measured_s == 2.0 and timer.error == 0.0
    assert "predicted 2 s" in line and "measured 2 s" in line
    assert timer.observe(2.0) is None and timer.line is not None
