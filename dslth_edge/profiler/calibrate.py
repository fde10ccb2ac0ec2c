"""``profile calibrate``: measure this machine and write it as a hardware profile.

A fixed suite of small networks (single conv / linear layers of many shapes, tiny
overhead-bound graphs and CNN-like chains at several widths) is built directly as ONNX
graphs (onnx.helper: no torch needed) and run through onnxruntime with N threads. The
machine is shared and noisy, so the networks are measured round-robin in several
passes and each keeps the lowest of its per-pass medians: load that comes and goes
hits every network alike and the least disturbed pass wins.

The medians are fitted by non-negative least squares, in relative error, to the
predictor's model (:mod:`.predictor`) in two forms:

``full``
    ``padded_macs / macs_per_s + bytes / bytes_per_s + weight_layers * per_op + per_inference``
``schema``
    ``padded_macs / macs_per_s + weight_layers * per_op`` -- what the profile schema can
    hold today (``effective_fp32_gmacs``, ``per_op_overhead_us``, ``channel_multiple``).

``channel_multiple`` (output channels are padded to it) is chosen from 1, 2, 4, ..., 32
as the one that fits the full form best. The profile written carries the schema form
(plus the bandwidth / per-inference keys once the schema has them); the full form goes
into comments and ``--json``.

Writing the result as a profile TOML is :mod:`.host_profile`'s job.
"""

from __future__ import annotations

import dataclasses
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

from dslth_edge.errors import UsageError

from dslth_edge.cost.analysis import OpCost, analyze_onnx
from dslth_edge.profiler.predictor import DeviceModel, padded_macs, predict

__all__ = [
    "NetSpec",
    "CalibrationPoint",
    "Fit",
    "Calibration",
    "calibration_suite",
    "build_onnx",
    "fit_latency_model",
    "fit_calibration",
    "median_latency",
    "best_of_passes",
    "calibrate",
]

@dataclass(frozen=True)
class NetSpec:
    """One calibration network: an input (C, H, W) and a chain of layers.

    Layers: ``("conv", cout, k, pool)`` conv k×k "same" + ReLU (+ 2×2 max-pool),
    ``("gap",)`` global average pool + flatten, ``("flatten",)``, ``("fc", out, relu)``.
    """

    name: str
    input_shape: tuple[int, int, int]
    layers: tuple[tuple[Any, ...], ...]


def calibration_suite() -> list[NetSpec]:
    """The fixed set of networks calibrate measures (about 30; a few seconds each at most)."""
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


@dataclass(frozen=True)
class Calibration:
    """The result of one calibration run on this machine."""

    threads: int
    backend: str  # "onnxruntime X.Y CPU EP"
    passes: int
    points: tuple[CalibrationPoint, ...]
    full: Fit
    schema: Fit
    seconds: float  # wall time of the calibration

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
        }


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


def calibrate(
    *,
    threads: int = 1,
    suite: Sequence[NetSpec] | None = None,
    passes: int = 5,
    min_runs: int = 15,
    min_seconds: float = 0.03,
    progress: Callable[[int, int, str], None] | None = None,
) -> Calibration:
    """Measure every network of the suite with onnxruntime (N threads) and fit the model."""
    import onnx

    from dslth_edge.profiler.backends import OnnxRuntimeRunner

    specs = list(suite) if suite is not None else calibration_suite()
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="dslth-calibrate-")
    runners, infos = [], []
    try:
        for i, spec in enumerate(specs):
            path = os.path.join(tmp, f"net{i}.onnx")
            onnx.save(build_onnx(spec, seed=i), path)
            infos.append(analyze_onnx(path))
            runner = OnnxRuntimeRunner(path, threads=threads)
            runner.load()
            runner.prepare_inputs()
            runners.append(runner)
        times = best_of_passes(
            [r.run for r in runners], passes=passes, min_runs=min_runs, min_seconds=min_seconds, progress=progress
        )
        backend = f"onnxruntime {runners[0].info().version} CPU EP"
    finally:
        for r in runners:
            r.close()
        shutil.rmtree(tmp, ignore_errors=True)
    points = tuple(CalibrationPoint(spec.name, info.ops, t) for spec, info, t in zip(specs, infos, times))
    full, schema = fit_calibration(points)
    return Calibration(
        threads=threads,
        backend=backend,
        passes=passes,
        points=points,
        full=full,
        schema=schema,
        seconds=time.perf_counter() - t_start,
    )
