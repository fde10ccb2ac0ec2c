"""``profile --calibrate``: measure this machine per runtime, fit the latency model, write it.

What is measured (each where its runtime is installed):

``onnxruntime/fp32``
    a fixed suite of small networks built directly as ONNX graphs (onnx.helper: no torch);
``litert-xnnpack/fp32`` and ``litert-xnnpack/int8``
    the same networks built as torch modules and exported with the project's own
    exporters (litert-torch, ai-edge-quantizer static int8), run with LiteRT's XNNPACK;
``training`` (torch)
    training steps of masked networks at two batch sizes (what a node's round costs).

The suite covers the shapes that matter to the model: single convolutions over channel
counts (MCU widths of 4-16 up to 192), spatial sizes and kernels, channel counts that are
not a multiple of the vector width (channel padding), fully-connected layers, residual
adds, pooling, tiny overhead-bound graphs and CNN-like chains at several widths. The zoo
is not in it: the zoo is the held-out set of tools/bench_predictor.py.

The machine is shared and noisy, so every network of every runtime is measured
round-robin in several passes and each keeps the lowest of its per-pass medians: load
that comes and goes hits every network alike and the least disturbed pass wins.

Each runtime's medians are fitted by non-negative least squares, in relative error, to
the calibrated form of the latency model (:func:`dslth_edge.cost.latency.latency_features`),
at the channel multiple (1, 2, 4, ..., 32) that fits best. The result is a calibration
file (:mod:`dslth_edge.cost.calibration`, schema in docs/profiles.md) that the planner
and the export verdict both read through the profile that names it.

For the record and for profiles without a calibration file, the onnxruntime medians are
also fitted to the cited form the profile schema holds (``full`` / ``schema`` below);
:mod:`.host_profile` writes those into the host profile's ``[compute]``.

``full``
    ``padded_macs / macs_per_s + bytes / bytes_per_s + weight_layers * per_op + per_inference``
``schema``
    ``padded_macs / macs_per_s + weight_layers * per_op``
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from dslth_edge.cost.calibration import (
    LATENCY_COEFFICIENTS,
    TRAINING_COEFFICIENTS,
    LatencyCalibration,
    RuntimeFit,
    TrainingFit,
)
from dslth_edge.cost.latency import DeviceModel, latency_features, padded_macs, predict, training_features
from dslth_edge.cost.ops import OpCost
from dslth_edge.errors import UsageError

from dslth_edge.cost.analysis import analyze_onnx

__all__ = [
    "RUNTIME_KEYS",
    "TRAINING_NETS",
    "NetSpec",
    "CalibrationPoint",
    "TrainingPoint",
    "Fit",
    "RuntimeResult",
    "TrainingResult",
    "Calibration",
    "calibration_suite",
    "build_onnx",
    "build_torch",
    "fit_latency_model",
    "fit_calibration",
    "fit_runtime",
    "fit_training",
    "missing_runtimes",
    "median_latency",
    "best_of_passes",
    "calibrate",
]

#: What ``profile --calibrate`` measures, where installed: runtime/dtype keys of the calibration file.
RUNTIME_KEYS: tuple[str, ...] = ("onnxruntime/fp32", "litert-xnnpack/fp32", "litert-xnnpack/int8")
#: Masked networks whose training steps calibrate the time per round: zoo architectures at
#: input shapes and widths the zoo's datasets do not use.
TRAINING_NETS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("paper-cnn", (1, 20, 20)), ("mcu-cnn", (1, 16, 16)), ("mcu-cnn-x2", (3, 20, 20)),
    ("resnet-8", (1, 16, 16)), ("mcu-cnn-x4", (1, 12, 12)),
)
#: Batch sizes of the training measurements (per-sample and per-step costs separate).
TRAINING_BATCHES: tuple[int, ...] = (32, 128)

@dataclass(frozen=True)
class NetSpec:
    """One calibration network: an input (C, H, W) and a chain of layers.

    Layers: ``("conv", cout, k, pool)`` conv k×k "same" + ReLU (+ 2×2 max-pool),
    ``("sconv", cout, k)`` conv k×k stride 2 + ReLU, ``("res",)`` a residual block (two
    3×3 convs at the same width, the input added back, ReLU), ``("gap",)`` global average
    pool + flatten, ``("flatten",)``, ``("fc", out, relu)``.
    """

    name: str
    input_shape: tuple[int, int, int]
    layers: tuple[tuple[Any, ...], ...]


def calibration_suite() -> list[NetSpec]:
    """The fixed set of networks calibrate measures (49; well under a second each)."""
    nets: list[NetSpec] = []
    # single conv layers over channel counts, resolutions and kernels
    for cin, cout, hw, k in [
        (1, 8, 28, 3), (3, 16, 32, 3), (3, 32, 32, 5), (8, 8, 16, 3), (16, 16, 32, 3), (16, 32, 16, 3),
        (32, 32, 16, 5), (32, 64, 8, 3), (64, 64, 16, 3), (64, 128, 8, 3), (128, 128, 8, 3), (96, 192, 6, 5),
        (4, 4, 24, 5), (24, 12, 12, 1), (48, 96, 12, 3),
    ]:
        nets.append(NetSpec(f"conv{k}-{cin}x{cout}@{hw}", (cin, hw, hw), (("conv", cout, k, False),)))
    # linear layers
    for fin, fout in [(256, 64), (2048, 256), (8192, 128), (512, 10), (4096, 512)]:
        nets.append(NetSpec(f"fc-{fin}x{fout}", (fin, 1, 1), (("flatten",), ("fc", fout, True))))
    # tiny overhead-bound graphs with 1..6 weight layers
    for n in (1, 3, 6):
        layers = tuple(("conv", 4, 3, False) for _ in range(n - 1)) + (("gap",), ("fc", 4, False))
        nets.append(NetSpec(f"tiny-{n}", (2, 8, 8), layers))
    # MCU widths and odd channel counts (channel padding), strided convs, residual blocks
    for cin, cout, hw in [(4, 6, 20), (6, 10, 12), (10, 12, 10), (12, 20, 8), (5, 5, 24), (20, 36, 6)]:
        nets.append(NetSpec(f"conv3-{cin}x{cout}@{hw}", (cin, hw, hw), (("conv", cout, 3, False),)))
    for cin, cout, hw in [(8, 16, 32), (16, 32, 16), (3, 12, 24), (40, 80, 8)]:
        nets.append(NetSpec(f"sconv3-{cin}x{cout}@{hw}", (cin, hw, hw), (("sconv", cout, 3),)))
    for ch, hw in [(8, 16), (16, 32), (32, 8), (64, 8), (12, 12)]:
        nets.append(NetSpec(f"res-{ch}@{hw}", (ch, hw, hw), (("res",),)))
    for w in (0.1, 0.35, 1.0):
        def r(n: int) -> int:
            return max(1, round(n * w))
        nets.append(NetSpec(
            f"reschain-w{w}", (3, 24, 24),
            (("conv", r(24), 3, False), ("res",), ("sconv", r(48), 3), ("res",), ("sconv", r(96), 3), ("gap",),
             ("fc", 10, False)),
        ))
    # CNN-like chains at several widths (not the zoo's shapes: the zoo is the test set)
    for w in (0.08, 0.2, 0.45, 1.0):
        def c(n: int) -> int:
            return max(1, round(n * w))
        nets.append(NetSpec(
            f"chain5-w{w}", (1, 24, 24),
            (("conv", c(48), 5, True), ("conv", c(96), 5, True), ("conv", c(192), 5, True), ("flatten",),
             ("fc", c(128), True), ("fc", 10, False)),
        ))
        nets.append(NetSpec(
            f"chain3-w{w}", (3, 40, 40),
            (("conv", c(24), 3, False), ("conv", c(24), 3, True), ("conv", c(48), 3, False), ("conv", c(48), 3, True),
             ("conv", c(96), 3, False), ("gap",), ("fc", 10, False)),
        ))
    return nets


def build_onnx(spec: NetSpec, seed: int = 0) -> Any:
    """The ONNX model (opset 17, batch 1, float32, random weights) of one calibration net."""
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise UsageError("profile calibrate needs the onnx package: pip install onnx") from None
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    c, h, w = spec.input_shape
    cur = "x"
    flat = False
    for i, layer in enumerate(spec.layers):
        kind = layer[0]
        out = f"t{i}"
        if kind == "conv":
            _, cout, k, pool = layer
            wname, bname = f"w{i}", f"b{i}"
            inits.append(numpy_helper.from_array((rng.standard_normal((cout, c, k, k)) * 0.1).astype(np.float32), wname))
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), bname))
            nodes.append(helper.make_node("Conv", [cur, wname, bname], [out + "c"], pads=[k // 2] * 4, kernel_shape=[k, k]))
            nodes.append(helper.make_node("Relu", [out + "c"], [out + ("r" if pool else "")]))
            if pool:
                nodes.append(helper.make_node("MaxPool", [out + "r"], [out], kernel_shape=[2, 2], strides=[2, 2]))
                h, w = h // 2, w // 2
            c = cout
        elif kind == "sconv":
            _, cout, k = layer
            wname, bname = f"w{i}", f"b{i}"
            inits.append(numpy_helper.from_array((rng.standard_normal((cout, c, k, k)) * 0.1).astype(np.float32), wname))
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), bname))
            nodes.append(helper.make_node("Conv", [cur, wname, bname], [out + "c"], pads=[k // 2] * 4, kernel_shape=[k, k],
                                          strides=[2, 2]))
            nodes.append(helper.make_node("Relu", [out + "c"], [out]))
            h, w, c = (h + 2 * (k // 2) - k) // 2 + 1, (w + 2 * (k // 2) - k) // 2 + 1, cout
        elif kind == "res":
            for j in (1, 2):
                inits.append(numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), f"w{i}_{j}"))
                inits.append(numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}_{j}"))
            nodes.append(helper.make_node("Conv", [cur, f"w{i}_1", f"b{i}_1"], [out + "c1"], pads=[1] * 4, kernel_shape=[3, 3]))
            nodes.append(helper.make_node("Relu", [out + "c1"], [out + "r1"]))
            nodes.append(helper.make_node("Conv", [out + "r1", f"w{i}_2", f"b{i}_2"], [out + "c2"], pads=[1] * 4,
                                          kernel_shape=[3, 3]))
            nodes.append(helper.make_node("Add", [out + "c2", cur], [out + "a"]))
            nodes.append(helper.make_node("Relu", [out + "a"], [out]))
        elif kind == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [out + "g"]))
            nodes.append(helper.make_node("Flatten", [out + "g"], [out]))
            h = w = 1
            flat = True
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], [out]))
            c, h, w = c * h * w, 1, 1
            flat = True
        elif kind == "fc":
            _, fout, relu = layer
            wname, bname = f"w{i}", f"b{i}"
            inits.append(numpy_helper.from_array((rng.standard_normal((fout, c)) * 0.1).astype(np.float32), wname))
            inits.append(numpy_helper.from_array(np.zeros(fout, np.float32), bname))
            nodes.append(helper.make_node("Gemm", [cur, wname, bname], [out + ("f" if relu else "")], transB=1))
            if relu:
                nodes.append(helper.make_node("Relu", [out + "f"], [out]))
            c = fout
        else:  # pragma: no cover - suite bug
            raise AssertionError(kind)
        cur = out
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *spec.input_shape])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, c, h, w] if flat is False else [1, c])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model


def build_torch(spec: NetSpec, seed: int = 0) -> Any:
    """The same network as :func:`build_onnx`, as a torch module (for the TFLite exporters)."""
    import torch
    from torch import nn

    class _Res(nn.Module):
        def __init__(self, ch: int) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.c2(torch.relu(self.c1(x))) + x)

    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    c, h, w = spec.input_shape
    for layer in spec.layers:
        kind = layer[0]
        if kind == "conv":
            _, cout, k, pool = layer
            mods += [nn.Conv2d(c, cout, k, padding=k // 2), nn.ReLU()]
            if pool:
                mods.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = cout
        elif kind == "sconv":
            _, cout, k = layer
            mods += [nn.Conv2d(c, cout, k, stride=2, padding=k // 2), nn.ReLU()]
            c = cout
        elif kind == "res":
            mods.append(_Res(c))
        elif kind == "gap":
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif kind == "flatten":
            mods.append(nn.Flatten())
            c, h, w = c * h * w, 1, 1
        elif kind == "fc":
            _, fout, relu = layer
            mods.append(nn.Linear(c, fout))
            if relu:
                mods.append(nn.ReLU())
            c = fout
        else:  # pragma: no cover - suite bug
            raise AssertionError(kind)
    return nn.Sequential(*mods).eval()


CHANNEL_MULTIPLES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured network: its per-op costs and its latency (lowest per-pass median)."""

    name: str
    ops: tuple[OpCost, ...]
    measured_s: float

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.ops)

    @property
    def weight_layers(self) -> int:
        return sum(1 for op in self.ops if op.weight_layer)


@dataclass(frozen=True)
class Fit:
    """Fitted constants of one form of the latency model."""

    form: str  # "full" | "schema"
    channel_multiple: int
    macs_per_s: float
    mem_bytes_per_s: float | None  # None: no bandwidth term (or it fitted to zero)
    per_op_overhead_s: float
    per_inference_s: float
    median_rel_error: float  # over the calibration points

    def device_model(self, name: str = "host", int8_ratio: float = 2.0) -> DeviceModel:
        """These constants as a predictor device model (int8 rate: fp32 x ``int8_ratio``)."""
        return DeviceModel(
            name, self.macs_per_s, self.macs_per_s * int8_ratio, self.per_op_overhead_s,
            self.mem_bytes_per_s, self.channel_multiple, self.per_inference_s,
        )

    def predict_s(self, ops: Sequence[OpCost]) -> float:
        return predict(list(ops), self.device_model(), dtype="fp32").total_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "effective_fp32_gmacs": self.macs_per_s / 1e9,
            "mem_bandwidth_gbps": None if self.mem_bytes_per_s is None else self.mem_bytes_per_s / 1e9,
            "per_op_overhead_us": self.per_op_overhead_s * 1e6,
            "per_inference_overhead_us": self.per_inference_s * 1e6,
            "channel_multiple": self.channel_multiple,
            "median_rel_error": self.median_rel_error,
        }


def _nnls_rel(rows: Sequence[Sequence[float]], y: Sequence[float]) -> list[float]:
    """Non-negative least squares in relative error, by trying every support set.

    Minimises Σ ((x_i · c) / y_i - 1)² over c >= 0. With at most four unknowns an
    exhaustive search over the 2^k supports is exact and needs no scipy.
    """
    import numpy as np

    a = np.asarray(rows, dtype=float) / np.asarray(y, dtype=float)[:, None]
    b = np.ones(len(y))
    k = a.shape[1]
    best: tuple[float, list[float]] | None = None
    for size in range(1, k + 1):
        for support in combinations(range(k), size):
            cols = list(support)
            coef, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(coef < 0):
                continue
            full = [0.0] * k
            for j, v in zip(cols, coef):
                full[j] = float(v)
            resid = float(np.sum((a @ np.asarray(full) - b) ** 2))
            if best is None or resid < best[0]:
                best = (resid, full)
    if best is None:  # pragma: no cover - a single positive column always fits
        raise UsageError("calibration fit failed: no non-negative solution")
    return best[1]


def fit_latency_model(points: Sequence[CalibrationPoint], *, form: str = "full", channel_multiple: int = 1) -> Fit:
    """Fit one form ("full" or "schema") of the latency model at a given channel multiple."""
    if len(points) < 4:
        raise UsageError("calibration needs at least 4 measured networks")
    if form not in ("full", "schema"):
        raise UsageError(f"unknown fit form {form!r}")
    rows = []
    for p in points:
        macs = sum(padded_macs(op, channel_multiple) for op in p.ops)
        rows.append([macs, p.bytes, p.weight_layers, 1.0] if form == "full" else [macs, p.weight_layers])
    coef = _nnls_rel(rows, [p.measured_s for p in points])
    s_mac = coef[0]
    s_byte, s_op, s_inf = (coef[1], coef[2], coef[3]) if form == "full" else (0.0, coef[1], 0.0)
    fit = Fit(
        form=form,
        channel_multiple=channel_multiple,
        macs_per_s=1.0 / s_mac if s_mac > 0 else 1e18,  # 1e18: compute too cheap to see
        mem_bytes_per_s=1.0 / s_byte if s_byte > 0 else None,
        per_op_overhead_s=s_op,
        per_inference_s=s_inf,
        median_rel_error=0.0,
    )
    errs = [abs(fit.predict_s(p.ops) - p.measured_s) / p.measured_s for p in points]
    return dataclasses.replace(fit, median_rel_error=statistics.median(errs))


def fit_calibration(points: Sequence[CalibrationPoint]) -> tuple[Fit, Fit]:
    """(full fit, schema fit), both at the channel multiple that fits the full form best."""
    fulls = [fit_latency_model(points, form="full", channel_multiple=m) for m in CHANNEL_MULTIPLES]
    best = min(fulls, key=lambda f: (f.median_rel_error, f.channel_multiple))
    return best, fit_latency_model(points, form="schema", channel_multiple=best.channel_multiple)


def median_latency(
    run: Callable[[], None],
    *,
    min_runs: int,
    min_seconds: float,
    warmup: int = 0,
    stat: Callable[[list[float]], float] = statistics.median,
) -> float:
    """Median (or ``stat``) of single-inference times, after a warm-up, over at least
    min_runs and min_seconds."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * min_runs:
            break
    return stat(times)


def best_of_passes(
    runs: Sequence[Callable[[], None]],
    *,
    passes: int = 5,
    min_runs: int = 15,
    min_seconds: float = 0.03,
    warmup: int = 3,
    progress: Callable[[int, int, str], None] | None = None,
    stat: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """Round-robin ``passes`` over ``runs``; each keeps its lowest per-pass median (seconds).

    ``stat`` replaces the per-pass median (``min`` measures the least disturbed run).
    """
    best = [math.inf] * len(runs)
    for p in range(passes):
        for i, run in enumerate(runs):
            if progress is not None:
                progress(p * len(runs) + i, passes * len(runs), f"pass {p + 1}/{passes}")
            best[i] = min(best[i], median_latency(run, min_runs=min_runs, min_seconds=min_seconds, warmup=warmup, stat=stat))
    return best


def _fit_rows(rows: Sequence[Sequence[float]], y: Sequence[float], names: Sequence[str]) -> tuple[dict[str, float], list[float]]:
    """(coefficients by name, relative error of each row) of a non-negative relative-error fit."""
    coef = _nnls_rel(rows, y)
    errs = [abs(sum(c * x for c, x in zip(coef, row)) - t) / t for row, t in zip(rows, y)]
    return dict(zip(names, coef)), errs


def fit_runtime(
    points: Sequence[CalibrationPoint], *, runtime: str, version: str, dtype: str, threads: int, passes: int,
) -> RuntimeFit:
    """The calibrated latency model of one runtime, at the channel multiple that fits its points best."""
    if len(points) < len(LATENCY_COEFFICIENTS):
        raise UsageError(f"calibration of {runtime}/{dtype} needs at least {len(LATENCY_COEFFICIENTS)} measured networks")
    best: tuple[float, int, dict[str, float]] | None = None
    y = [p.measured_s for p in points]
    for m in CHANNEL_MULTIPLES:
        rows = [[latency_features(p.ops, m)[k] for k in LATENCY_COEFFICIENTS] for p in points]
        coef, errs = _fit_rows(rows, y, LATENCY_COEFFICIENTS)
        err = statistics.median(errs)
        if best is None or err < best[0] - 1e-12:
            best = (err, m, coef)
    assert best is not None
    return RuntimeFit(runtime=runtime, version=version, dtype=dtype, threads=threads, channel_multiple=best[1],
                      coefficients=best[2], points=len(points), passes=passes, median_rel_error=best[0])


@dataclass(frozen=True)
class TrainingPoint:
    """One measured training step: a masked network at one batch size."""

    name: str
    forward_macs: int  # per sample
    layers: int  # weight layers
    batch: int
    measured_s: float  # one optimizer step (forward, backward, score update)

    def features(self) -> dict[str, float]:
        return training_features(self.forward_macs, self.layers, self.batch, 1, 1)


def fit_training(points: Sequence[TrainingPoint], *, version: str, threads: int, passes: int) -> TrainingFit:
    """The training-time model (per training MAC, per layer pass, per step, per sample)."""
    if len(points) < len(TRAINING_COEFFICIENTS):
        raise UsageError(f"training calibration needs at least {len(TRAINING_COEFFICIENTS)} measured steps")
    rows = [[p.features()[k] for k in TRAINING_COEFFICIENTS] for p in points]
    coef, errs = _fit_rows(rows, [p.measured_s for p in points], TRAINING_COEFFICIENTS)
    return TrainingFit(runtime="torch", version=version, threads=threads, coefficients=coef, points=len(points),
                       passes=passes, median_rel_error=statistics.median(errs))


@dataclass(frozen=True)
class RuntimeResult:
    """One runtime's measured points and its fit."""

    fit: RuntimeFit
    points: tuple[CalibrationPoint, ...]

    def predicted_s(self, point: CalibrationPoint) -> float:
        return predict(list(point.ops), self.fit).total_s

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fit.to_dict(), measurements=[
            {"name": p.name, "macs": p.macs, "weight_layers": p.weight_layers, "measured_ms": p.measured_s * 1e3,
             "predicted_ms": self.predicted_s(p) * 1e3} for p in self.points])


@dataclass(frozen=True)
class TrainingResult:
    """The measured training steps and their fit."""

    fit: TrainingFit
    points: tuple[TrainingPoint, ...]

    def predicted_s(self, point: TrainingPoint) -> float:
        f = point.features()
        return sum(self.fit.coefficients[k] * f[k] for k in TRAINING_COEFFICIENTS)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fit.to_dict(), measurements=[
            {"name": p.name, "batch": p.batch, "forward_macs": p.forward_macs, "measured_ms": p.measured_s * 1e3,
             "predicted_ms": self.predicted_s(p) * 1e3} for p in self.points])


@dataclass(frozen=True)
class Calibration:
    """The result of one calibration run on this machine.

    ``results`` / ``training``: the calibrated fits per runtime (the calibration file,
    :attr:`file`); ``points`` / ``full`` / ``schema``: the onnxruntime points fitted to the
    cited form, which the host profile's ``[compute]`` carries.
    """

    threads: int
    backend: str  # "onnxruntime X.Y CPU EP"
    passes: int
    points: tuple[CalibrationPoint, ...]
    full: Fit
    schema: Fit
    seconds: float  # wall time of the calibration
    results: tuple[RuntimeResult, ...] = ()
    training: TrainingResult | None = None
    skipped: tuple[str, ...] = ()  # "litert-xnnpack/int8: ai-edge-quantizer is not installed"
    file: LatencyCalibration | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "backend": self.backend,
            "passes": self.passes,
            "seconds": self.seconds,
            "fit": self.schema.to_dict(),
            "fit_full": self.full.to_dict(),
            "points": [
                {
                    "name": p.name,
                    "macs": p.macs,
                    "bytes": p.bytes,
                    "weight_layers": p.weight_layers,
                    "measured_ms": p.measured_s * 1e3,
                    "predicted_ms": self.schema.predict_s(p.ops) * 1e3,
                    "predicted_full_ms": self.full.predict_s(p.ops) * 1e3,
                }
                for p in self.points
            ],
            "runtimes": {r.fit.key: r.to_dict() for r in self.results},
            "training": None if self.training is None else self.training.to_dict(),
            "skipped": list(self.skipped),
        }


def missing_runtimes(keys: Sequence[str]) -> dict[str, str]:
    """{key: why it cannot be measured here} for the runtime keys whose packages are missing."""
    import importlib.util

    def has(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            return False

    out: dict[str, str] = {}
    for key in keys:
        if key not in RUNTIME_KEYS:
            raise UsageError(f"unknown runtime {key!r}; expected one of {', '.join(RUNTIME_KEYS)}")
        need = ["onnx", "onnxruntime"] if key.startswith("onnxruntime") else ["torch", "litert_torch"]
        if key.startswith("litert"):
            need.append("ai_edge_litert" if has("ai_edge_litert") else "tflite_runtime")
        if key.endswith("int8") and key.startswith("litert"):
            need.append("ai_edge_quantizer")
        gone = [m for m in need if not has(m)]
        if gone:
            out[key] = f"{', '.join(gone)} not installed"
    return out


def _tflite_files(specs: Sequence[NetSpec], tmp: str, dtypes: Sequence[str], seed: int) -> dict[str, list[str]]:
    """The suite exported to .tflite per dtype with the project's exporters (fp32; int8 static)."""
    import numpy as np
    from dslth_edge.exporters.tflite import quantize_tflite, tflite_bytes

    files: dict[str, list[str]] = {d: [] for d in dtypes}
    for i, spec in enumerate(specs):
        fp32 = tflite_bytes(build_torch(spec, seed=seed + i), spec.input_shape)
        blobs = {"fp32": fp32}
        if "int8" in dtypes:
            calib = np.random.default_rng(seed + i).normal(size=(16, *spec.input_shape)).astype(np.float32)
            blobs["int8"] = quantize_tflite(fp32, "int8", calib)
        for d in dtypes:
            path = os.path.join(tmp, f"net{i}-{d}.tflite")
            with open(path, "wb") as fh:
                fh.write(blobs[d])
            files[d].append(path)
    return files


def _training_runs(seed: int) -> tuple[list[Callable[[], None]], list[tuple[str, int, int, int]]]:
    """One training-step closure per (net, batch) of :data:`TRAINING_NETS` x :data:`TRAINING_BATCHES`."""
    import torch
    import torch.nn.functional as F

    from dslth_edge.learn.masking import masked_layers
    from dslth_edge.learn.models import ModelSpec, build_model, layer_costs
    from dslth_edge.learn.sgd import SGD

    runs: list[Callable[[], None]] = []
    meta: list[tuple[str, int, int, int]] = []
    gen = torch.Generator().manual_seed(seed)
    for name, shape in TRAINING_NETS:
        model = build_model(ModelSpec(name, shape, 10, weight_seed=seed, score_seed=seed))
        costs = layer_costs(model, shape)
        opt = SGD([layer.scores for _, layer in masked_layers(model)], lr=0.1, momentum=0.9)
        model.train()
        for batch in TRAINING_BATCHES:
            x = torch.randn(batch, *shape, generator=gen)
            y = torch.randint(0, 10, (batch,), generator=gen)

            def step(model: Any = model, opt: SGD = opt, x: Any = x, y: Any = y) -> None:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

            runs.append(step)
            meta.append((f"{name}@{'x'.join(map(str, shape))}-b{batch}", sum(c.macs for c in costs), len(costs), batch))
    return runs, meta


def calibrate(
    *,
    threads: int = 1,
    suite: Sequence[NetSpec] | None = None,
    passes: int = 5,
    min_runs: int = 15,
    min_seconds: float = 0.03,
    progress: Callable[[int, int, str], None] | None = None,
    runtimes: Sequence[str] | None = None,
    training: bool = True,
    seed: int = 0,
) -> Calibration:
    """Measure the suite on every runtime of ``runtimes`` (default: every one installed) and,
    with ``training``, torch training steps; fit the latency model of each.

    onnxruntime fp32 is always measured (the host profile's cited form comes from it); a
    runtime asked for by name that is not installed is an error, one left to the default
    is skipped and listed in :attr:`Calibration.skipped`.
    """
    import importlib.util

    import onnx

    from dslth_edge.cost.analysis import analyze_tflite
    from dslth_edge.profiler.backends import OnnxRuntimeRunner, make_runner
    from dslth_edge.profiler.host import host_info

    asked = list(runtimes) if runtimes is not None else list(RUNTIME_KEYS)
    if "onnxruntime/fp32" not in asked:
        asked.insert(0, "onnxruntime/fp32")
    missing = missing_runtimes(asked)
    if runtimes is not None and missing:
        key, why = next(iter(missing.items()))
        raise UsageError(f"cannot calibrate {key}: {why}")
    if "onnxruntime/fp32" in missing:
        raise UsageError(f"cannot calibrate onnxruntime/fp32: {missing['onnxruntime/fp32']}")
    keys = [k for k in asked if k not in missing]
    skipped = tuple(f"{k}: {why}" for k, why in missing.items())
    if training and importlib.util.find_spec("torch") is None:
        training = False  # a runtime-only device: no time per round to measure
        skipped += ("training: torch not installed",)

    specs = list(suite) if suite is not None else calibration_suite()
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="dslth-calibrate-")
    runners: list[Any] = []
    groups: list[tuple[str, list[tuple[str, tuple[OpCost, ...]]]]] = []  # (key, [(net name, ops)])
    versions: dict[str, str] = {}
    try:
        onnx_ops = []
        for i, spec in enumerate(specs):
            path = os.path.join(tmp, f"net{i}.onnx")
            onnx.save(build_onnx(spec, seed=seed + i), path)
            onnx_ops.append((spec.name, analyze_onnx(path).ops))
            runner = OnnxRuntimeRunner(path, threads=threads)
            runner.load()
            runner.prepare_inputs()
            runners.append(runner)
        groups.append(("onnxruntime/fp32", onnx_ops))
        versions["onnxruntime"] = runners[0].info().version
        lite_dtypes = [k.split("/")[1] for k in keys if k.startswith("litert-xnnpack/")]
        if lite_dtypes:
            files = _tflite_files(specs, tmp, lite_dtypes, seed)
            for d in lite_dtypes:
                ops = []
                for spec, path in zip(specs, files[d]):
                    ops.append((spec.name, analyze_tflite(path).ops))
                    r = make_runner(path, threads=threads)
                    r.load()
                    r.prepare_inputs()
                    runners.append(r)
                    versions["litert-xnnpack"] = r.info().version
                groups.append((f"litert-xnnpack/{d}", ops))
        train_runs: list[Callable[[], None]] = []
        train_meta: list[tuple[str, int, int, int]] = []
        if training:
            train_runs, train_meta = _training_runs(seed)
        n_inf = len(runners)
        times = best_of_passes(
            [r.run for r in runners] + train_runs, passes=passes, min_runs=min_runs, min_seconds=min_seconds,
            progress=progress,
        )
        backend = f"onnxruntime {versions['onnxruntime']} CPU EP"
    finally:
        for r in runners:
            r.close()
        shutil.rmtree(tmp, ignore_errors=True)

    results = []
    offset = 0
    for key, named_ops in groups:
        runtime, dtype = key.split("/")
        pts = tuple(CalibrationPoint(n, tuple(o), t) for (n, o), t in zip(named_ops, times[offset:offset + len(named_ops)]))
        offset += len(named_ops)
        fit = fit_runtime(pts, runtime=runtime, version=versions.get(runtime, "?"), dtype=dtype, threads=threads,
                          passes=passes)
        results.append(RuntimeResult(fit, pts))
    train_result = None
    if training:
        import torch

        tpts = tuple(TrainingPoint(n, m, l, b, t) for (n, m, l, b), t in zip(train_meta, times[n_inf:]))
        train_result = TrainingResult(fit_training(tpts, version=torch.__version__, threads=torch.get_num_threads(),
                                                   passes=passes), tpts)
    points = results[0].points
    full, schema = fit_calibration(points)
    host = host_info()
    file = LatencyCalibration(
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host={"hostname": host.hostname, "cpu": host.cpu, "machine": host.machine, "cpu_count": host.cpu_count,
              "system": host.system, "python": host.python},
        runtimes={r.fit.key: r.fit for r in results},
        training=None if train_result is None else train_result.fit,
    )
    return Calibration(
        threads=threads, backend=backend, passes=passes, points=points, full=full, schema=schema,
        seconds=time.perf_counter() - t_start, results=tuple(results), training=train_result, skipped=skipped,
        file=file,
    )
