"""The latency predictor: its arithmetic and its fit (on synthetic points with known constants).

How well it predicts a real machine is a measured figure, not a test assertion:
tools/bench_predictor.py calibrates this host, predicts the zoo and prints the errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dslth_edge.cost.ops import OpCost
from dslth_edge.profiler.calibrate import (
    CalibrationPoint,
    fit_calibration,
    fit_latency_model,
)
from dslth_edge.cost.latency import DeviceModel, op_costs_from_layer_costs, padded_macs, predict
from dslth_edge.device.profiles import load_profile


def _conv(name: str, macs: int, cout: int, nbytes: int = 0) -> OpCost:
    return OpCost(name, "Conv", macs, nbytes, 0, "fp32", cout, 8)


def test_padded_macs() -> None:
    op = _conv("c", 1000, 5)
    assert padded_macs(op, 1) == 1000
    assert padded_macs(op, 8) == pytest.approx(1600)
    assert padded_macs(_conv("c", 1000, 16), 8) == 1000
    assert padded_macs(OpCost("r", "Relu", 0, 64, 0, "fp32"), 8) == 0


def test_prediction_is_the_documented_sum() -> None:
    dm = DeviceModel("dev", 1e9, 4e9, 10e-6, mem_bytes_per_s=1e9, channel_multiple=4, per_inference_s=3e-6)
    ops = [_conv("a", 2_000_000, 6, 1000), OpCost("r", "Relu", 0, 500, 0, "fp32"), OpCost("q", "Conv", 1_000_000, 0, 0, "int8", 8, 8)]
    p = predict(ops, dm)
    expected = (2e6 * 8 / 6) / 1e9 + 1000 / 1e9 + 10e-6 + 500 / 1e9 + 1e6 / 4e9 + 10e-6 + 3e-6
    assert p.total_s == pytest.approx(expected)
    assert p.dtype == "int8" and p.to_dict()["weight_layers"] == 2


def test_device_model_from_a_profile() -> None:
    prof = load_profile("jetson-nano")
    dm = DeviceModel.from_profile(prof)
    assert dm.fp32_macs_per_s == pytest.approx(prof.compute.effective_fp32_gmacs * 1e9)
    assert dm.int8_macs_per_s == pytest.approx(prof.compute.effective_int8_gmacs * 1e9)
    assert dm.per_op_overhead_s == pytest.approx(prof.compute.per_op_overhead_us * 1e-6)
    assert dm.channel_multiple == prof.compute.channel_multiple
    assert dm.mem_bytes_per_s is None and dm.per_inference_s == 0.0


def test_fit_recovers_known_constants() -> None:
    truth = DeviceModel("t", 20e9, 40e9, 4e-6, mem_bytes_per_s=50e9, channel_multiple=8, per_inference_s=6e-6)
    points = []
    for i, (macs, cout, n) in enumerate([(1e5, 3, 1), (4e6, 16, 1), (2e7, 60, 2), (5e5, 8, 4), (9e6, 100, 3), (3e4, 2, 6), (6e7, 128, 2)]):
        ops = tuple(_conv(f"c{j}", int(macs / n), cout, int(macs / 50)) for j in range(n))
        points.append(CalibrationPoint(f"p{i}", ops, predict(list(ops), truth).total_s))
    full, schema = fit_calibration(points)
    assert full.channel_multiple == 8 and full.median_rel_error < 1e-6
    assert full.macs_per_s == pytest.approx(20e9, rel=1e-6)
    assert full.mem_bytes_per_s == pytest.approx(50e9, rel=1e-6)
    assert full.per_op_overhead_s == pytest.approx(4e-6, rel=1e-6)
    assert full.per_inference_s == pytest.approx(6e-6, rel=1e-6)
    assert schema.form == "schema" and schema.mem_bytes_per_s is None and schema.per_inference_s == 0.0
    assert fit_latency_model(points, form="schema", channel_multiple=8).macs_per_s > 0


def test_layer_costs_agree_with_the_shrunk_onnx_graph(tmp_path: Path) -> None:
    """The planner's LayerCost route and the ONNX-graph route give the same MACs."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from dslth_edge.learn.models import build_model, layer_costs
    from dslth_edge.cost.analysis import analyze_onnx

    from .zoo import export_onnx, shrunk_or_scaled

    shape = (1, 28, 28)
    costs = layer_costs(build_model("paper-cnn", shape, 10), shape)
    ops = op_costs_from_layer_costs(costs, 0.5)
    module, _ = shrunk_or_scaled("paper-cnn", shape, 10, 0.5)  # 64/128/256/192 -> exactly half
    graph = analyze_onnx(export_onnx(module, shape, str(tmp_path / "p.onnx")))
    assert [op.macs for op in ops] == [op.macs for op in graph.ops if op.macs]
    assert [op.out_channels for op in ops] == [op.out_channels for op in graph.ops if op.macs]



def test_runtime_fit_recovers_known_coefficients() -> None:
    """fit_runtime finds the calibrated model's coefficients and channel multiple from exact points."""
    from dslth_edge.cost.calibration import RuntimeFit
    from dslth_edge.profiler.calibrate import TrainingPoint, fit_runtime, fit_training

    coef = {"conv_mac_s": 2e-11, "conv_window_s": 3e-10, "fc_mac_s": 8e-11, "weight_op_s": 3e-6, "other_op_s": 1e-6,
            "other_byte_s": 2e-11, "inference_s": 9e-6}
    truth = RuntimeFit("onnxruntime", "1", "fp32", 1, 8, coef, 1, 1, 0.0)
    points = []
    for i, (macs, cout, cin, n, fc, other) in enumerate([
        (1e5, 3, 1, 1, 0, 0), (4e6, 16, 8, 1, 1, 2), (2e7, 60, 32, 2, 0, 1), (5e5, 8, 4, 4, 2, 3), (9e6, 100, 64, 3, 1, 0),
        (3e4, 2, 2, 6, 0, 6), (6e7, 128, 96, 2, 2, 2), (2e6, 12, 3, 1, 1, 1), (7e5, 40, 40, 2, 0, 4), (1e6, 5, 5, 3, 3, 0),
    ]):
        ops = [OpCost(f"c{j}", "Conv", int(macs / n), 0, 0, "fp32", cout, cin) for j in range(n)]
        ops += [OpCost(f"f{j}", "Gemm", 40_000 * (j + 1), 0, 0, "fp32", 10 + j, 4000) for j in range(fc)]
        ops += [OpCost(f"o{j}", "MaxPool", 0, 5000 * (j + i + 1), 0, "fp32") for j in range(other)]
        points.append(CalibrationPoint(f"p{i}", tuple(ops), predict(ops, truth).total_s))
    fit = fit_runtime(points, runtime="onnxruntime", version="1", dtype="fp32", threads=1, passes=1)
    assert fit.channel_multiple == 8 and fit.median_rel_error < 1e-6
    for k, v in coef.items():
        assert fit.coefficients[k] == pytest.approx(v, rel=1e-4)

    tcoef = {"train_mac_s": 1e-9, "layer_pass_s": 2e-4, "step_s": 1e-3, "sample_s": 3e-5}
    steps = [TrainingPoint(f"t{i}", m, l, b, 0.0) for i, (m, l, b) in enumerate(
        [(1e6, 3, 16), (1e6, 3, 64), (5e7, 8, 16), (5e7, 8, 64), (2e5, 5, 16), (2e5, 5, 64)])]
    steps = [TrainingPoint(p.name, p.forward_macs, p.layers, p.batch,
                           sum(tcoef[k] * v for k, v in p.features().items())) for p in steps]
    tfit = fit_training(steps, version="x", threads=1, passes=1)
    assert tfit.median_rel_error < 1e-6
    for k, v in tcoef.items():
        assert tfit.coefficients[k] == pytest.approx(v, rel=1e-4)
