"""Every export format is profiled: .onnx (onnxruntime), .tflite fp32 and int8 (LiteRT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dslth_edge.errors import UsageError
from dslth_edge.profiler import ProfileOptions, analyze_onnx, analyze_tflite, profile_model

from .conftest import SHAPE, SMALL_MACS, SMALL_PARAMS

FAST = ProfileOptions(runs=10, warmup=2)


def _check_result(res, fmt: str, backend: str) -> None:  # noqa: ANN001
    assert res.model.format == fmt
    assert res.backend.name == backend and res.backend.threads == 1
    assert res.latency.count == 10 and len(res.samples_ms) == 10
    assert 0 < res.latency.min <= res.latency.p50 <= res.latency.p95 <= res.latency.max
    assert res.init_ms > 0 and res.first_inference_ms > 0 and len(res.warmup_ms) == 2
    assert res.inferences_per_s > 0
    assert res.model.size_bytes > 0
    assert res.memory.overall_peak_growth_bytes is not None
    assert res.memory.overall_peak_growth_bytes >= (res.memory.init_peak_growth_bytes or 0)


def test_onnx(small_onnx: Path) -> None:
    res = profile_model(small_onnx, FAST)
    _check_result(res, "onnx", "onnxruntime")
    assert res.model.macs == SMALL_MACS and res.model.params == SMALL_PARAMS
    assert res.model.dtype == "fp32"
    assert res.backend.providers == ("CPUExecutionProvider",) and res.backend.inter_op_threads == 1
    assert res.input_shapes == {"input": (1, *SHAPE)}


def test_onnx_batch_and_duration(small_onnx: Path) -> None:
    res = profile_model(small_onnx, ProfileOptions(duration_s=0.05, warmup=0, batch=4))
    assert res.input_shapes == {"input": (4, *SHAPE)}
    assert res.model.macs == 4 * SMALL_MACS
    # time spent between inferences is not latency: only most of the 50 ms is in total_s
    assert res.latency.count >= 1 and res.latency.total_s >= 0.025
    assert res.samples_per_s == pytest.approx(4 * res.inferences_per_s)


def test_tflite_fp32(small_tflite: Path) -> None:
    res = profile_model(small_tflite, FAST)
    _check_result(res, "tflite", "litert")
    assert res.model.macs == SMALL_MACS and res.model.params == SMALL_PARAMS
    assert res.model.dtype == "fp32"
    assert res.backend.delegate == "XNNPACK"
    plain = profile_model(small_tflite, ProfileOptions(runs=3, warmup=0, xnnpack=False))
    assert plain.backend.delegate is None and plain.backend.notes


def test_tflite_int8(small_int8_tflite: Path, small_tflite: Path) -> None:
    res = profile_model(small_int8_tflite, FAST)
    _check_result(res, "tflite", "litert")
    assert res.model.dtype == "int8"
    assert res.model.macs == SMALL_MACS
    assert res.model.size_bytes < small_tflite.stat().st_size / 2


def test_tflite_fixed_batch_is_a_usage_error(small_tflite: Path) -> None:
    # litert_torch bakes batch 1 into the Flatten's reshape: a clear error, not a crash
    with pytest.raises(UsageError, match="does not run at batch 2"):
        profile_model(small_tflite, ProfileOptions(runs=3, warmup=0, batch=2))


def test_per_op(small_onnx: Path, small_tflite: Path) -> None:
    res = profile_model(small_onnx, ProfileOptions(runs=3, warmup=1, per_op=True, per_op_runs=5))
    p = res.per_op
    assert p is not None and p.available and p.runs == 5
    assert {op.op_type for op in p.ops} >= {"Conv"}
    assert sum(op.share for op in p.ops) == pytest.approx(1.0)
    lite = profile_model(small_tflite, ProfileOptions(runs=3, warmup=0, per_op=True))
    assert lite.per_op is not None and not lite.per_op.available and "benchmark_model" in lite.per_op.note


def test_analysis_is_consistent_across_formats(small_onnx: Path, small_tflite: Path) -> None:
    a, b = analyze_onnx(small_onnx), analyze_tflite(small_tflite)
    assert [op.macs for op in a.ops if op.macs] == [op.macs for op in b.ops if op.macs]
    assert [op.out_channels for op in a.ops if op.macs] == [8, 16, 10]
    assert [op.graph_input for op in b.ops if op.macs] == [True, False, False]


def test_bad_options(small_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not both"):
        profile_model(small_onnx, ProfileOptions(runs=3, duration_s=1.0))
    with pytest.raises(UsageError, match="threads"):
        profile_model(small_onnx, ProfileOptions(threads=0))
    with pytest.raises(UsageError, match="no such model"):
        profile_model(tmp_path / "missing.onnx")
    with pytest.raises(UsageError, match="cannot run on --backend litert"):
        profile_model(small_onnx, ProfileOptions(backend="litert"))
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="unknown model format"):
        profile_model(tmp_path / "m.bin")


def test_torch_backend_on_a_shrunk_directory(tmp_path: Path) -> None:
    """The torch backend builds the module with dslth_edge.exporters.shrink.load_shrunk (no pickles)."""
    pytest.importorskip("torch")
    shrink = pytest.importorskip("dslth_edge.exporters.shrink")
    from dslth_edge.learn.models import build_model

    shape = (3, 16, 16)
    module = shrink.shrink(build_model("mcu-cnn", shape, 10, keep=0.5, granularity="channel").eval(), shape)
    shrink.save_shrunk(module, tmp_path / "shrunk", {"test": True})
    res = profile_model(tmp_path / "shrunk", ProfileOptions(runs=5, warmup=1, threads=2, per_op=True, per_op_runs=3))
    assert res.model.format == "torch" and res.backend.name == "torch" and res.backend.threads == 2
    assert res.input_shapes == {"input": (1, *shape)}
    # mcu-cnn at keep 0.5: 8/16/32 channels; convs on 16x16, 8x8, 4x4, then the classifier
    assert res.model.macs == 16 * 16 * 8 * 27 + 8 * 8 * 16 * 72 + 4 * 4 * 32 * 144 + 32 * 10
    assert res.per_op is not None and res.per_op.available and res.per_op.ops
    (tmp_path / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(UsageError, match="pickled"):
        profile_model(tmp_path / "model.pt")


def test_litert_private_ops_details_still_exist(small_tflite: Path) -> None:
    """LiteRT's private ``_get_ops_details()`` (wrapped by litert_ops_details): fail loudly if it disappears."""
    from dslth_edge.cost.analysis import litert_ops_details
    from dslth_edge.util.tflite import open_interpreter

    it = open_interpreter(small_tflite)
    it.allocate_tensors()
    details = litert_ops_details(it)
    assert details is not None, "the LiteRT interpreter no longer has _get_ops_details()"
    assert details and all({"index", "op_name", "inputs", "outputs"} <= set(d) for d in details)
    assert any(d["op_name"] == "CONV_2D" for d in details)
