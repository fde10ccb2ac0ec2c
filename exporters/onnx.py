"""Plain torch module → ONNX (checked), with optional onnxruntime quantization.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The
torch.export-based exporter (``dynamo=True``, the default since torch 2.9) needs
``onnxscript`` (not a dependency here) and emits opset 18+, which the onnxruntime
builds on many devices do not have (JetPack 4.6 ships onnxruntime 1.10/1.11, opset
≤ 15). Our models are static CNNs without data-dependent control flow, where tracing
is exact, so the TorchScript exporter at opset :data:`OPSET` gives the most portable
file. If a future torch drops it, :func:`onnx_bytes` falls back to ``dynamo=True``
when onnxscript is installed.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dslth_edge.errors import ExportError

__all__ = ["OPSET", "INPUT_NAME", "OUTPUT_NAME", "onnx_bytes", "check_onnx", "quantize_onnx"]

OPSET = 13  # onnxruntime >= 1.6, TensorRT 7+, OpenVINO 2021+: what deployed devices run
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'dslth-edge[export]'") from exc
    return onnx


def onnx_bytes(module: nn.Module, input_shape: Sequence[int], *, opset: int = OPSET) -> bytes:
    """Serialized ONNX of ``module`` (eval mode) for NCHW float32 input, batch axis dynamic."""
    _onnx()
    module = module.eval()
    sample = torch.zeros(1, *input_shape)
    buf = io.BytesIO()
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
             "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(module, (sample,), buf, dynamo=False, opset_version=opset, do_constant_folding=True, **names)
    except (TypeError, ValueError) as exc:
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter's dependency
        except ImportError:
            raise ExportError(f"torch.onnx TorchScript export failed ({exc}) and onnxscript is not installed for dynamo=True") from exc
        program = torch.onnx.export(module, (sample,), dynamo=True, opset_version=max(opset, 18), **names)
        if program is None:
            raise ExportError("torch.onnx export returned nothing") from exc
        buf = io.BytesIO(program.model_proto.SerializeToString())
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {exc}") from exc
    return buf.getvalue()


def check_onnx(data: bytes) -> Any:
    """Parse and run ``onnx.checker`` (full check, with shape inference); returns the ModelProto."""
    onnx = _onnx()
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"exported ONNX model is invalid: {exc}") from exc
    return model


class _Calibration:
    """onnxruntime CalibrationDataReader over single-sample batches."""

    def __init__(self, x: np.ndarray) -> None:
        self._it = iter(np.ascontiguousarray(x, dtype=np.float32)[:, None])

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._it, None)
        return None if nxt is None else {INPUT_NAME: nxt}

    def rewind(self) -> None:  # pragma: no cover - only some calibration methods rewind
        pass


def quantize_onnx(data: bytes, mode: str, calibration: np.ndarray | None = None) -> bytes:
    """onnxruntime quantization: "dynamic" (int8 weights) or "int8" (static QDQ, per-channel).

    Static quantization keeps float32 inputs/outputs and puts QuantizeLinear/
    DequantizeLinear pairs around int8 kernels (the format onnxruntime, TensorRT and
    OpenVINO all read); activation ranges come from ``calibration`` (N, C, H, W).
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError("ONNX quantization needs onnxruntime: pip install 'dslth-edge[export]'") from exc
    with tempfile.TemporaryDirectory(prefix="dslth-onnxq-") as tmp:
        src, pre, dst = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "q.onnx")
        src.write_bytes(data)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantize the plain model if it fails
            pre = src
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        elif mode == "int8":
            if calibration is None or len(calibration) == 0:
                raise ExportError("static int8 quantization needs calibration inputs")
            reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
            quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        else:
            raise ExportError(f"unknown ONNX quantization {mode!r}: expected dynamic or int8")
        return dst.read_bytes()
