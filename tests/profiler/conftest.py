"""Shared fixtures: one small CNN exported to every format, built once per session.

The exports cost seconds (litert_torch alone takes several to import), so they are
session-scoped and lazily made: a test that needs only the .onnx never pays for LiteRT.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

#: the small CNN's input (C, H, W)
SHAPE = (3, 16, 16)
#: its MACs and params, by hand: conv 3->8 k3 on 16x16, pool, conv 8->16 k3 on 8x8, pool, fc 16*4*4 -> 10
SMALL_MACS = 16 * 16 * 8 * 3 * 9 + 8 * 8 * 16 * 8 * 9 + 16 * 4 * 4 * 10
SMALL_PARAMS = (8 * 3 * 9 + 8) + (16 * 8 * 9 + 16) + (256 * 10 + 10)


def small_module():  # noqa: ANN201 - torch is imported lazily
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).eval()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("profiler-models")


@pytest.fixture(scope="session")
def small_onnx(models_dir: Path) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    path = models_dir / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            small_module(), (torch.zeros(1, *SHAPE),), str(path), dynamo=False,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="session")
def small_tflite(models_dir: Path) -> Path:
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    path = models_dir / "small.tflite"
    litert_torch.convert(small_module(), (torch.zeros(1, *SHAPE),)).export(str(path))
    return path


@pytest.fixture(scope="session")
def small_int8_tflite(models_dir: Path) -> Path:
    """Static int8 (per-channel weights, calibrated activations) through the PT2E quantizer."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:  # older stacks ship it in torch.ao
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
    sample = (torch.randn(1, *SHAPE),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    module = prepare_pt2e(torch.export.export(small_module(), sample).module(), quantizer)
    module(*sample)  # calibration pass
    module = convert_pt2e(module, fold_quantize=False)
    path = models_dir / "small-int8.tflite"
    litert_torch.convert(module, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return path


@pytest.fixture(scope="session")
def big_onnx(models_dir: Path) -> Path:
    """A conv stack big enough (about 0.2 GMAC) for threads to matter; built without torch."""
    onnx = pytest.importorskip("onnx")
    from dslth_edge.profiler.calibrate import NetSpec, build_onnx

    spec = NetSpec("big", (64, 48, 48), (("conv", 64, 3, False), ("conv", 64, 3, False), ("conv", 64, 3, False)))
    path = models_dir / "big.onnx"
    onnx.save(build_onnx(spec), str(path))
    return path


@pytest.fixture(scope="session")
def big_tflite(models_dir: Path) -> Path:
    """The same conv stack as :func:`big_onnx`, as a .tflite file."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(*[nn.Conv2d(64, 64, 3, padding=1) for _ in range(3)]).eval()
    path = models_dir / "big.tflite"
    litert_torch.convert(module, (torch.zeros(1, 64, 48, 48),)).export(str(path))
    return path
