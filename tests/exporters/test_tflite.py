"""TFLite export through litert-torch: parity with LiteRT, metadata, int8 (AEQ), zero-channel padding, size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from dslth_edge.exporters.metadata import read_tflite_metadata  # noqa: E402
from dslth_edge.exporters.report import size_bound  # noqa: E402
from dslth_edge.exporters.runtime import TfliteRunner  # noqa: E402
from dslth_edge.exporters.tflite import quantize_tflite, tflite_bytes  # noqa: E402
from dslth_edge.learn.masking import masked_layers, set_masks, topk_mask  # noqa: E402
from dslth_edge.learn.models import ModelSpec, build_model  # noqa: E402
from dslth_edge.runs.runinfo import load_run  # noqa: E402
from dslth_edge.exporters.shrink import shrink, shrunk_info  # noqa: E402


def test_fp32_parity_and_metadata(trained_run, exported_tflite) -> None:
    path, report = exported_tflite["tflite"]
    info = load_run(trained_run)
    x, _ = info.test_arrays(100)
    with torch.no_grad():
        ref = info.model(torch.from_numpy(x)).numpy()
    runner = TfliteRunner(path)
    assert runner.input_quantization is None  # fp32 in, fp32 out
    assert float(np.abs(runner.run(x) - ref).max()) <= 1e-4
    meta = read_tflite_metadata(path)
    assert meta["node"] == 0 and meta["weights_fingerprint"] == info.fingerprint
    assert meta["class_names"][3] == "class3" and meta["input"]["layout"] == "NCHW"
    shrunk = next(r for r in report.rows if r.variant == "shrunk")
    assert shrunk.file_bytes == path.stat().st_size <= size_bound(shrunk.params, 4)


def test_int8_padded(trained_run, exported_tflite) -> None:
    """int8 of a model padded with zero channels to x86-host's multiple: the zero channels
    quantize (a zero weight is 0 at any scale) and the file agrees with the masked model."""
    path, report = exported_tflite["tflite-int8"]
    q, s = report.quantization, report.shrink
    assert q["route"] in ("aeq", "pt2e") and "aeq" in q["route_agreement"] and q["drop_points"] <= 1.0
    assert s["channel_multiple"] == 8 and report.provenance["channel_multiple"] == 8
    for layer, width in s["widths"].items():
        assert width % 8 == 0 or layer == "fc", (layer, width)
    assert s["max_abs_diff_vs_masked"] <= s["tolerance"]  # padding kept the function
    runner = TfliteRunner(path)
    assert runner.input_quantization is not None and runner.output_quantization is not None
    io = q["io"]
    assert (io["input"]["scale"], io["input"]["zero_point"]) == pytest.approx(runner.input_quantization)
    assert (io["output"]["scale"], io["output"]["zero_point"]) == pytest.approx(runner.output_quantization)
    assert read_tflite_metadata(path)["input"]["quantization"]["zero_point"] == io["input"]["zero_point"]
    int8 = next(x for x in report.rows if x.variant == "shrunk+int8")
    assert int8.file_bytes == path.stat().st_size <= size_bound(int8.params, 1)
    # int8 against the masked fp32 model's own predictions (padding changes no output): label-free fidelity
    info = load_run(trained_run)
    x, _ = info.test_arrays(300)
    with torch.no_grad():
        fp32 = info.model(torch.from_numpy(x)).numpy().argmax(1)
    assert float((runner.run(x).argmax(1) == fp32).mean()) >= 0.95


def test_padded_fp32_parity() -> None:
    """A zero-padded shrunk model converts with the same outputs as the masked model (module level)."""
    shape = (1, 28, 28)
    model = build_model(ModelSpec("mcu-cnn", shape, 10, keep=1.0, granularity="channel", weight_init="signed-constant")).eval()
    set_masks(model, [topk_mask(layer.scores, 0.3, "channel") for _, layer in masked_layers(model)])
    shrunk = shrink(model, shape, channel_multiple=4)
    assert shrunk_info(shrunk).padding()  # 5/10/19 channels kept: all padded
    x = np.random.default_rng(0).standard_normal((50, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert float(np.abs(TfliteRunner(tflite_bytes(shrunk, shape)).run(x) - ref).max()) <= 1e-4



def _padded_mcu(multiple: int) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """mcu-cnn with channel masks at 0.3 (5/10/19 channels), BN folded, zero-padded to ``multiple``."""
    from dslth_edge.exporters.shrink import fold_batchnorm

    shape = (1, 28, 28)
    model = build_model(ModelSpec("mcu-cnn", shape, 10, keep=1.0, granularity="channel", weight_init="signed-constant")).eval()
    set_masks(model, [topk_mask(layer.scores, 0.3, "channel") for _, layer in masked_layers(model)])
    shrunk = shrink(model, shape, channel_multiple=multiple)
    assert shrunk_info(shrunk).padding() == {"block1.conv": 3, "block2.conv": 2, "block3.conv": 1}
    return fold_batchnorm(shrunk), shape


def test_padded_int8_is_integer_only_and_faithful() -> None:
    """Zero channels quantize: the int8 file (aeq) stays integer-only, and LiteRT and
    TFLite Micro predict the fp32 model's classes."""
    pytest.importorskip("tflite_micro")
    from dslth_edge.exporters.tflm import TflmRunner, require_integer_only

    module, shape = _padded_mcu(4)
    rng = np.random.default_rng(0)
    calib, x = (rng.standard_normal((n, *shape)).astype(np.float32) for n in (100, 200))
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy().argmax(1)
    q = quantize_tflite(tflite_bytes(module, shape), "int8", calib)
    require_integer_only(q)
    assert float((TfliteRunner(q).run(x).argmax(1) == ref).mean()) >= 0.95
    assert float((TflmRunner(q).run(x).argmax(1) == ref).mean()) >= 0.95


def test_resnet_parity() -> None:
    """Residual adds convert too (module level, no run)."""
    shape = (3, 32, 32)
    model = build_model(ModelSpec("resnet-8", shape, 10, keep=1.0, granularity="channel", weight_init="signed-constant")).eval()
    set_masks(model, [topk_mask(layer.scores, 0.3, "channel") for _, layer in masked_layers(model)])
    shrunk = shrink(model, shape)
    x = np.random.default_rng(0).standard_normal((100, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert float(np.abs(TfliteRunner(tflite_bytes(shrunk, shape)).run(x) - ref).max()) <= 1e-4


def test_dynamic_quantization(exported_tflite) -> None:
    """--quantize dynamic: int8 weights, float input/output."""
    path, _ = exported_tflite["tflite"]
    data = quantize_tflite(path.read_bytes(), "dynamic")
    runner = TfliteRunner(data)
    assert runner.input_quantization is None and len(data) < path.stat().st_size
    x = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
    assert (runner.run(x).argmax(1) == TfliteRunner(path).run(x).argmax(1)).mean() >= 0.9


def test_litert_torch_private_flatbuffer_accessor_still_exists() -> None:
    """litert-torch's private ``_exporter.to_bytes()`` (wrapped by litert_torch_flatbuffer): fail loudly if it moves."""
    import litert_torch

    from dslth_edge.exporters.tflite import litert_torch_flatbuffer
    from dslth_edge.exporters.tflm import model_ops

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    edge_model = litert_torch.convert(module, (torch.zeros(1, 2, 4),))
    data = litert_torch_flatbuffer(edge_model)
    assert data is not None, "litert-torch no longer keeps the flatbuffer at edge_model._exporter.to_bytes()"
    assert "FULLY_CONNECTED" in model_ops(data).ops
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 4)
    np.testing.assert_allclose(TfliteRunner(data).run(x), module(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_authors_cnn_converts_and_its_int8_falls_back_to_pt2e() -> None:
    """authors-cnn: fp32 ONNX and TFLite match the masked model; its LocalResponseNorm lowers to
    STABLEHLO_REDUCE_WINDOW, which ai-edge-quantizer cannot calibrate, so int8 "auto" takes
    PT2E (float islands left), and an integer-only int8 for TFLite Micro is refused, saying why."""
    from dslth_edge.errors import ExportError
    from dslth_edge.exporters.pipeline import _quantize
    from dslth_edge.exporters.tflm import model_ops, op_resolver_h

    shape = (1, 28, 28)
    model = build_model(ModelSpec("authors-cnn", shape, 10, keep=0.3, weight_init="pytorch-default")).eval()
    set_masks(model, [layer.current_mask() for _, layer in masked_layers(model)])
    shrunk = shrink(model, shape)
    rng = np.random.default_rng(0)
    calib, x = (rng.standard_normal((n, *shape)).astype(np.float32) for n in (32, 40))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    from dslth_edge.exporters.onnx import check_onnx, onnx_bytes
    from dslth_edge.exporters.runtime import OnnxRunner

    onnx_file = onnx_bytes(shrunk, shape)
    check_onnx(onnx_file)
    assert float(np.abs(OnnxRunner(onnx_file).run(x) - ref).max()) <= 1e-4
    fp32 = tflite_bytes(shrunk, shape)
    assert float(np.abs(TfliteRunner(fp32).run(x) - ref).max()) <= 1e-4
    assert "STABLEHLO_REDUCE_WINDOW" in model_ops(fp32).unique
    with pytest.raises(ExportError, match="no TFLite Micro resolver entry.*STABLEHLO_REDUCE_WINDOW"):
        op_resolver_h(model_ops(fp32))
    q, route, tried = _quantize("tflite", "int8", fp32, shrunk, shape, calib, x, "auto")
    assert route == "pt2e" and "aeq_failed" in tried
    assert float((TfliteRunner(q).run(x).argmax(1) == ref.argmax(1)).mean()) >= 0.9
    with pytest.raises(ExportError, match="integer-only"):
        _quantize("tflite", "int8", fp32, shrunk, shape, calib, x, "auto", integer_only=True)
