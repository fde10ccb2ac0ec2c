"""ONNX export: checker, parity with the masked torch model, metadata, size, int8, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")

from dslth_edge.exporters.metadata import read_onnx_metadata  # noqa: E402
from dslth_edge.exporters.onnx import OPSET, check_onnx, onnx_bytes, quantize_onnx  # noqa: E402
from dslth_edge.exporters.report import size_bound  # noqa: E402
from dslth_edge.exporters.runtime import OnnxRunner  # noqa: E402
from dslth_edge.learn.masking import masked_layers, set_masks, topk_mask  # noqa: E402
from dslth_edge.learn.models import ModelSpec, build_model  # noqa: E402
from dslth_edge.runs.runinfo import load_run  # noqa: E402
from dslth_edge.exporters.shrink import load_shrunk, shrink  # noqa: E402


def test_fp32_file_matches_the_masked_model(trained_run, exported_onnx) -> None:
    path, report = exported_onnx["onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET
    info = load_run(trained_run)
    x, _ = info.test_arrays(100)
    with torch.no_grad():
        ref = info.model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(OnnxRunner(path).run(x) - ref).max())
    assert diff <= 1e-4
    assert report.parity["max_abs_diff"] <= 1e-4 and report.parity["samples"] == 100


def test_metadata_inside_the_file(trained_run, exported_onnx) -> None:
    path, report = exported_onnx["onnx"]
    meta = read_onnx_metadata(path)
    info = load_run(trained_run, load_data=False)
    assert meta["node"] == 0 and meta["profile"] == "x86-host"
    assert meta["weights_fingerprint"] == info.fingerprint
    assert meta["keep"] == pytest.approx(info.keep)
    assert meta["class_names"] == [f"class{i}" for i in range(10)]
    assert len(meta["normalisation"]["mean"]) == 1 and len(meta["normalisation"]["std"]) == 1
    assert meta["accuracy"]["this_file"] == report.rows[1].accuracy
    flat = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert flat["weights_fingerprint"] == info.fingerprint and json.loads(flat["class_names"])[0] == "class0"


def test_report_sizes_and_shrunk_model(trained_run, exported_onnx) -> None:
    path, report = exported_onnx["onnx"]
    rows = {r.variant: r for r in report.rows}
    assert set(rows) == {"masked-dense", "shrunk", "shrunk+int8"}
    shrunk = rows["shrunk"]
    assert shrunk.file_bytes == path.stat().st_size
    assert shrunk.file_bytes <= size_bound(shrunk.params, 4)
    assert rows["shrunk+int8"].file_bytes <= size_bound(shrunk.params, 1)
    assert shrunk.macs < rows["masked-dense"].macs and shrunk.params < rows["masked-dense"].params
    assert rows["masked-dense"].accuracy == pytest.approx(shrunk.accuracy)  # same model, exactly
    doc = json.loads((path.parent / "report.json").read_text())
    assert doc["exports"][path.name]["parity"]["max_abs_diff"] <= 1e-4
    # shrink.json + arrays reload to the same function
    module = load_shrunk(report.shrink["shrink_json"])
    info = load_run(trained_run)
    x, _ = info.test_arrays(20)
    with torch.no_grad():
        assert float((module(torch.from_numpy(x)) - info.model(torch.from_numpy(x))).abs().max()) <= 1e-5


def test_int8_accuracy_drop(exported_onnx) -> None:
    path, report = exported_onnx["onnx-int8"]
    q = report.quantization
    assert q["mode"] == "int8" and q["route"] == "onnxruntime" and q["calibration_samples"] == 200
    assert q["drop_points"] <= 1.0
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("name,shape", [("paper-cnn", (1, 28, 28)), ("mcu-cnn", (1, 28, 28)), ("resnet-8", (3, 32, 32))])
def test_zoo_parity(name: str, shape: tuple[int, int, int], multiple: int) -> None:
    """Every zoo architecture, shrunk with channel masks (unpadded, and zero-padded to
    multiples of 8), converts with parity <= 1e-4 against the masked model."""
    model = build_model(ModelSpec(name, shape, 10, keep=1.0, granularity="channel", weight_init="signed-constant")).eval()
    set_masks(model, [topk_mask(layer.scores, 0.3, "channel") for _, layer in masked_layers(model)])
    shrunk = shrink(model, shape, channel_multiple=multiple)
    data = onnx_bytes(shrunk, shape)
    check_onnx(data)
    x = np.random.default_rng(0).standard_normal((100, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert float(np.abs(OnnxRunner(data).run(x) - ref).max()) <= 1e-4



def test_padded_int8_onnx() -> None:
    """ORT's static int8 (per-channel weights) handles zero-padded channels: same classes as fp32."""
    from dslth_edge.exporters.shrink import fold_batchnorm, shrunk_info

    shape = (1, 28, 28)
    model = build_model(ModelSpec("mcu-cnn", shape, 10, keep=1.0, granularity="channel", weight_init="signed-constant")).eval()
    set_masks(model, [topk_mask(layer.scores, 0.3, "channel") for _, layer in masked_layers(model)])
    module = fold_batchnorm(shrink(model, shape, channel_multiple=4))
    assert shrunk_info(module).padding()
    rng = np.random.default_rng(0)
    calib, x = (rng.standard_normal((n, *shape)).astype(np.float32) for n in (100, 200))
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy().argmax(1)
    q = quantize_onnx(onnx_bytes(module, shape), "int8", calib)
    assert float((OnnxRunner(q).run(x).argmax(1) == ref).mean()) >= 0.95


def test_dynamic_quantization(exported_onnx) -> None:
    """--quantize dynamic: int8 weights, float activations; predictions stay those of fp32."""
    path, _ = exported_onnx["onnx"]
    data = quantize_onnx(path.read_bytes(), "dynamic")
    assert len(data) < path.stat().st_size
    x = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
    agree = (OnnxRunner(data).run(x).argmax(1) == OnnxRunner(path).run(x).argmax(1)).mean()
    assert agree >= 0.9
