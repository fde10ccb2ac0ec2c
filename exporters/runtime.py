"""Running exported files with the on-device runtimes only (numpy + onnxruntime / LiteRT).

Nothing here imports torch: this is the code a device runs, and what the exporters use
to check a file before it is written. TFLite files load through
:mod:`dslth_edge.util.tflite` (the one loader): ai-edge-litert's Interpreter, falling back to
tflite-runtime's (older devices, e.g. Debian/Raspberry Pi
OS images that ship only ``tflite_runtime``). Integer-only models take int8 inputs: the
runner quantizes inputs and dequantizes outputs with the scales stored in the file.
Runners take NCHW inputs, like the torch model; a file with an NHWC input (the TFLite
Micro exports) gets them transposed (``layout="NHWC"``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dslth_edge.errors import ExportError
from dslth_edge.util.tflite import open_interpreter, tflite_runtime

__all__ = [
    "LAYOUTS",
    "Runner",
    "OnnxRunner",
    "to_layout",
    "TfliteRunner",
    "open_runner",
    "top1",
    "time_runner",
]


LAYOUTS = ("NCHW", "NHWC")


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """NCHW samples in the file's input layout ("NCHW": unchanged, "NHWC": channels last)."""
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))) if x.ndim == 4 else x
    raise ExportError(f"unknown input layout {layout!r}: expected one of {', '.join(LAYOUTS)}")


class Runner(Protocol):
    """Runs a model file on float32 NCHW inputs and returns float32 logits."""

    backend: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


class OnnxRunner:
    """onnxruntime CPU session; batches are passed whole (the exported batch axis is dynamic)."""

    backend = "onnxruntime"

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, batch: int = 256) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError("running ONNX files needs onnxruntime: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initializers are noise here
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.batch = self.static_batch or batch

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [self.session.run(None, {self.input_name: x[s : s + self.batch]})[0] for s in range(0, len(x), self.batch)]
        return np.concatenate(outs).astype(np.float32, copy=False)


class TfliteRunner:
    """LiteRT interpreter, one sample at a time (the file has a static batch of 1).

    ``delegate=False``: LiteRT's builtin kernels without the default XNNPACK delegate
    (the kernels whose int8 rounding TFLite Micro's reference kernels share).
    """

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, delegate: bool = True,
                 layout: str = "NCHW") -> None:
        to_layout(np.zeros((0,)), layout)  # a bad name fails here
        self.layout = layout
        runtime = tflite_runtime()
        self.backend = runtime.module if delegate else f"{runtime.module} (builtin kernels)"
        self.interpreter = open_interpreter(model if isinstance(model, bytes) else str(model), threads=threads,
                                            delegate=delegate, runtime=runtime)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.batch = int(self.inp["shape"][0])

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """(scale, zero point) of an integer input tensor, None for a float input."""
        return _quant(self.inp)

    @property
    def output_quantization(self) -> tuple[float, int] | None:
        return _quant(self.out)

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        q = self.input_quantization
        if q is None:
            return x.astype(self.inp["dtype"], copy=False)
        info = np.iinfo(self.inp["dtype"])
        return np.clip(np.round(x / q[0] + q[1]), info.min, info.max).astype(self.inp["dtype"])

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        q = self.output_quantization
        return y.astype(np.float32) if q is None else (y.astype(np.float32) - q[1]) * q[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        x = to_layout(np.ascontiguousarray(x, dtype=np.float32), self.layout)
        outs = []
        for s in range(0, len(x), self.batch):
            self.interpreter.set_tensor(self.inp["index"], self._to_input(x[s : s + self.batch]))
            self.interpreter.invoke()
            outs.append(self._from_output(self.interpreter.get_tensor(self.out["index"])))
        return np.concatenate(outs)


def _quant(detail: dict[str, Any]) -> tuple[float, int] | None:
    if np.dtype(detail["dtype"]).kind == "f":
        return None
    scale, zero = detail["quantization"]
    return float(scale), int(zero)


def open_runner(model: str | Path | bytes, fmt: str | None = None, *, threads: int | None = None,
                layout: str = "NCHW") -> Runner:
    """A runner for an .onnx or .tflite file (or its bytes, with ``fmt``); ``layout``: the .tflite file's input layout."""
    if fmt is None:
        if isinstance(model, bytes):
            raise ExportError("open_runner needs fmt= for in-memory models")
        fmt = Path(model).suffix.lstrip(".")
    if fmt == "onnx":
        return OnnxRunner(model, threads=threads)
    if fmt == "tflite":
        return TfliteRunner(model, threads=threads, layout=layout)
    raise ExportError(f"unknown model format {fmt!r}: expected onnx or tflite")


def top1(runner: Runner, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a runner on float32 NCHW inputs."""
    if len(y) == 0:
        return float("nan")
    return float((runner.run(x).argmax(1) == y).mean())


def time_runner(runner: Runner, x1: np.ndarray, *, warmup: int = 20, runs: int = 200, min_s: float = 0.5) -> dict[str, float]:
    """Batch-1 latency (ms): median and p90 over ``runs`` calls (more while under ``min_s``)."""
    for _ in range(warmup):
        runner.run(x1)
    times: list[float] = []
    t_end = time.perf_counter() + min_s
    while len(times) < runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        runner.run(x1)
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 * runs:
            break
    a = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "runs": len(times)}
