"""Plain torch module → TFLite through litert-torch (no TensorFlow), plus quantization.

- fp32: ``litert_torch.convert(module, (sample,))``; the file keeps the NCHW float32
  input of the torch model (the converter inserts the NHWC transposes), or, with
  ``layout="NHWC"`` (TFLite Micro exports), takes channels-last input: the module is
  wrapped in an input permute that the converter folds into its own layout change, so
  no TRANSPOSE is left at the input.
- int8, two routes (the pipeline's "auto" picks between them, see exporters/pipeline.py):
  ai-edge-quantizer's ``static_wi8_ai8`` recipe on the fp32 file (integer-only graph
  with int8 input and output tensors, what TFLite Micro and NPUs need; about a second;
  min/max activation ranges), or litert-torch's PT2E flow (histogram activation
  ranges: more faithful on some models, 20-40x slower, and it may leave float
  DEQUANTIZE islands around adds and pooling). Both calibrate on the node's own
  training inputs. Measurements in docs/export.md.
- dynamic: ai-edge-quantizer's ``dynamic_wi8_afp32`` (int8 weights, float activations).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dslth_edge.errors import ExportError

__all__ = ["INT8_ROUTES", "NhwcInput", "tflite_bytes", "quantize_tflite", "tflite_int8_pt2e", "signature_input_name", "litert_torch_flatbuffer"]

INT8_ROUTES = ("aeq", "pt2e")


class _DropNoise(logging.Filter):
    """litert-torch warns that a PT2E graph module is "in training mode": it cannot be
    switched (exported graphs refuse .eval()); move_exported_model_to_eval already did."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "converted in training mode" not in record.getMessage()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence litert-torch's progress log, its known warnings and torch's pytree deprecations."""
    saved = {k: os.environ.get(k) for k in ("LITERT_TORCH_SHOW_PROGRESS",)}
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    noise = _DropNoise()
    logging.getLogger().addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logging.getLogger().removeFilter(noise)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _litert_torch() -> Any:
    try:
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
        import litert_torch
    except ImportError as exc:
        raise ExportError("TFLite export needs litert-torch and ai-edge-litert: pip install 'dslth-edge[export]'") from exc
    return litert_torch


def litert_torch_flatbuffer(edge_model: Any) -> bytes | None:
    """The flatbuffer a litert-torch conversion holds in memory, None when it is not where expected.

    The one use of litert-torch's private ``edge_model._exporter.to_bytes()``, checked
    against litert-torch 0.10.0; tests/exporters/test_tflite.py fails if it disappears
    (:func:`_model_bytes` would still work, through a temporary file).
    """
    exporter = getattr(edge_model, "_exporter", None)
    if exporter is None or not hasattr(exporter, "to_bytes"):
        return None
    return bytes(exporter.to_bytes())


def _model_bytes(edge_model: Any) -> bytes:
    data = litert_torch_flatbuffer(edge_model)
    if data is not None:
        return data
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dslth-tfl-") as tmp:
        path = os.path.join(tmp, "m.tflite")
        edge_model.export(path)
        with open(path, "rb") as fh:
            return fh.read()


class NhwcInput(nn.Module):
    """``module`` taking channels-last (N, H, W, C) input: permutes to NCHW first."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 3, 1, 2))


def _with_layout(module: nn.Module, input_shape: Sequence[int], layout: str) -> tuple[nn.Module, tuple[int, ...]]:
    """(module to convert, its per-sample input shape) for an NCHW model and the wanted input layout."""
    if layout == "NCHW":
        return module.eval(), tuple(input_shape)
    if layout == "NHWC":
        c, h, w = input_shape
        return NhwcInput(module).eval(), (h, w, c)
    raise ExportError(f"unknown input layout {layout!r}: expected NCHW or NHWC")


def tflite_bytes(module: nn.Module, input_shape: Sequence[int], *, layout: str = "NCHW") -> bytes:
    """fp32 TFLite flatbuffer of ``module`` (eval mode), static batch 1, float32 input in ``layout``.

    ``input_shape`` is the torch model's (C, H, W).
    """
    lt = _litert_torch()
    module, shape = _with_layout(module, input_shape, layout)
    sample = torch.zeros(1, *shape)
    try:
        with _quiet():
            return _model_bytes(lt.convert(module, (sample,)))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed: {exc}") from exc


def signature_input_name(model_bytes: bytes) -> tuple[str, str]:
    """(signature key, its single input's name) of a converted model."""
    from dslth_edge.util.tflite import open_interpreter

    sigs = open_interpreter(model_bytes).get_signature_list()
    if len(sigs) != 1:
        raise ExportError(f"expected one signature in the TFLite model, found {list(sigs)}")
    key = next(iter(sigs))
    inputs = sigs[key]["inputs"]
    if len(inputs) != 1:
        raise ExportError(f"expected one model input, found {inputs}")
    return key, inputs[0]


def quantize_tflite(float_bytes: bytes, mode: str, calibration: np.ndarray | None = None) -> bytes:
    """Quantize an fp32 TFLite model with ai-edge-quantizer: mode "dynamic" or "int8" (static)."""
    try:
        from ai_edge_quantizer import quantizer as aeq
        from ai_edge_quantizer import recipe
    except ImportError as exc:
        raise ExportError("TFLite quantization needs ai-edge-quantizer: pip install ai-edge-quantizer") from exc
    with _quiet():
        try:
            q = aeq.Quantizer(bytearray(float_bytes))
            if mode == "dynamic":
                q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
                result = q.quantize(enable_progress_report=False)
            elif mode == "int8":
                if calibration is None or len(calibration) == 0:
                    raise ExportError("static int8 quantization needs calibration inputs")
                q.load_quantization_recipe(recipe.static_wi8_ai8())
                key, name = signature_input_name(float_bytes)
                x = np.ascontiguousarray(calibration, dtype=np.float32)
                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar ignores TQDM_DISABLE
                    stats = q.calibrate({key: [{name: x[i : i + 1]} for i in range(len(x))]}, num_threads=1)
                result = q.quantize(stats, enable_progress_report=False)
            else:
                raise ExportError(f"unknown TFLite quantization {mode!r}: expected dynamic or int8")
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"TFLite {mode} quantization failed: {exc}") from exc
    return bytes(result.quantized_model)


def tflite_int8_pt2e(module: nn.Module, input_shape: Sequence[int], calibration: np.ndarray, *, attempts: int = 3,
                     layout: str = "NCHW") -> bytes:
    """Static int8 through litert-torch's PT2E quantizer (per-channel weights, histogram activations).

    litert-torch 0.10's annotator sometimes fails on conv → ReLU → max-pool graphs with
    "'relu_1' not in ... observer" and succeeds on the same module the next time (it
    depends on node iteration order), so a failed attempt is retried. ``calibration`` is
    NCHW like ``input_shape``; ``layout`` is the file's input layout.
    """
    lt = _litert_torch()
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise ExportError(f"the PT2E route needs litert-torch with torchao: {exc}") from exc
    from dslth_edge.exporters.runtime import to_layout

    module, shape = _with_layout(module, input_shape, layout)
    calibration = to_layout(np.ascontiguousarray(calibration, dtype=np.float32), layout)
    sample = torch.zeros(1, *shape)
    last: Exception | None = None
    for _ in range(max(1, attempts)):
        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        try:
            with _quiet():
                graph = torch.export.export(module.eval(), (sample,)).module()
                prepared = prepare_pt2e(graph, quantizer)
                move_exported_model_to_eval(prepared)
                with torch.no_grad():
                    for i in range(len(calibration)):  # the exported graph has a static batch of 1
                        prepared(torch.from_numpy(np.ascontiguousarray(calibration[i : i + 1], dtype=np.float32)))
                converted = convert_pt2e(prepared, fold_quantize=False)
                move_exported_model_to_eval(converted)
                return _model_bytes(lt.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer)))
        except Exception as exc:
            last = exc
    raise ExportError(f"PT2E int8 conversion failed ({attempts} attempts): {last}") from last
