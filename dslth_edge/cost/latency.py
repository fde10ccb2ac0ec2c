"""The latency model of a device: one inference, one training round.

Two forms, one entry point (:func:`predict`):

**Calibrated** (a :class:`~dslth_edge.cost.calibration.RuntimeFit`, measured on the device
by ``dslth-edge profile --calibrate``, one per runtime and dtype)::

    latency = inference_s
            + Σ_conv   conv_mac_s · padded_macs + conv_window_s · padded_macs / in_channels
            + Σ_fc     fc_mac_s · padded_macs
            + Σ_weight weight_op_s
            + Σ_other  other_op_s + other_byte_s · bytes

``padded_macs / in_channels`` is the number of output elements times the kernel window:
what a convolution costs beyond its MACs (im2col / input gathering, output writes), so a
layer with few input channels (the first layer, an MCU-width layer) is charged more per
MAC than a wide one. Operators without MACs (pooling, adds, reshapes, (de)quantize) cost
a fixed amount plus their traffic.

**Cited** (:class:`DeviceModel`, from a profile's ``[compute]`` figures, which are
published whole-network benchmarks with their sources)::

    latency = Σ_ops  padded_macs_op / effective_macs_per_s(dtype)
                   + bytes_op / mem_bytes_per_s           (when the device model has a bandwidth)
                   + per_op_overhead                       (weight layers only)
            + per_inference_overhead                       (when the device model has one)

In both, ``padded_macs`` counts a MAC operator's output channels rounded up to the
device's ``channel_multiple``: CPU kernels (MLAS NCHWc blocks, XNNPACK, CMSIS-NN)
vectorise over output channels and compute whole vectors, so a shrunk layer with 5
channels costs what 8 or 16 would. Exported files are already padded to the multiple
with zero channels (``exporters.shrink``), so the rounding then changes nothing.

A profile that carries a calibration (``calibration = "FILE"``, docs/profiles.md) is
predicted with the fit of the runtime its file runs on (onnxruntime for .onnx, LiteRT
with XNNPACK for .tflite) at the file's dtype; otherwise with its cited figures. The
planner (``device.planner``) and the export verdict (``profiler.verdict``) both call
:func:`predict` with the profile, so they read the same numbers.

**Time per round** (:func:`predict_round`): local training from the calibration's
training fit (torch), or the cited fp32 rate at 3 × forward MACs when there is none,
plus the uplink of the mask frame the node sends, at the profile's uplink rate.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dslth_edge.cost.units import BYTES_PER_VALUE
from dslth_edge.errors import UsageError

from dslth_edge.cost.calibration import (
    LATENCY_COEFFICIENTS,
    TRAINING_COEFFICIENTS,
    LatencyCalibration,
    RuntimeFit,
    TrainingFit,
)
from dslth_edge.cost.ops import OpCost, op_class

__all__ = [
    "FORMAT_RUNTIMES",
    "LatencyProfile",
    "DeviceModel",
    "LayerEstimate",
    "Prediction",
    "RoundPrediction",
    "op_costs_from_layer_costs",
    "padded_macs",
    "latency_features",
    "training_features",
    "infer_format",
    "latency_model",
    "predict",
    "predict_round",
    "RoundTimer",
]

#: The runtime a calibration measures for each exported format.
FORMAT_RUNTIMES: dict[str, str] = {"onnx": "onnxruntime", "tflite": "litert-xnnpack"}


class LatencyProfile(Protocol):
    """What the latency model reads of a hardware profile (``device.profiles.Profile``)."""

    name: str
    compute: Any  # effective_fp32_gmacs, effective_int8_gmacs, per_op_overhead_us, channel_multiple
    export: Any  # format, dtype
    network: Any  # uplink_kbps, round_period_s
    calibration: LatencyCalibration | None


class _LayerCostLike(Protocol):
    name: str
    kind: str
    in_channels: int
    out_channels: int
    params: int
    macs: int
    in_elems: int
    out_elems: int
    input_from: str | None
    prunable_out: bool


def padded_macs(op: OpCost, channel_multiple: int) -> float:
    """MACs of ``op`` with its output channels rounded up to ``channel_multiple``."""
    if op.macs <= 0 or channel_multiple <= 1 or op.out_channels <= 0:
        return float(op.macs)
    padded = -(-op.out_channels // channel_multiple) * channel_multiple
    return op.macs * padded / op.out_channels


def latency_features(ops: Sequence[OpCost], channel_multiple: int) -> dict[str, float]:
    """The features of the calibrated model for one inference of ``ops`` (one per coefficient)."""
    f = dict.fromkeys(LATENCY_COEFFICIENTS, 0.0)
    f["inference_s"] = 1.0
    for op in ops:
        for k, v in _op_features(op, channel_multiple).items():
            f[k] += v
    return f


def _op_features(op: OpCost, channel_multiple: int) -> dict[str, float]:
    kind = op_class(op)
    if kind == "other":
        return {"other_op_s": 1.0, "other_byte_s": float(op.bytes)}
    macs = padded_macs(op, channel_multiple)
    if kind == "fc":
        return {"fc_mac_s": macs, "weight_op_s": 1.0}
    return {"conv_mac_s": macs, "conv_window_s": macs / max(1, op.in_channels), "weight_op_s": 1.0}


@dataclass(frozen=True)
class DeviceModel:
    """The cited constants of the latency model for one device (SI units: seconds, bytes)."""

    name: str
    fp32_macs_per_s: float
    int8_macs_per_s: float
    per_op_overhead_s: float
    mem_bytes_per_s: float | None = None  # None: no separate memory term
    channel_multiple: int = 1  # output channels are padded to a multiple of this
    per_inference_s: float = 0.0  # fixed cost of one inference call (runtime entry, I/O binding)

    @classmethod
    def from_profile(cls, profile: Any) -> DeviceModel:
        """The model a hardware profile's [compute] figures describe (rates, overhead, channel multiple)."""
        c = profile.compute
        gbps = getattr(c, "mem_bandwidth_gbps", None)  # forward compatible: not in the schema yet
        per_inf_us = getattr(c, "per_inference_overhead_us", None)
        return cls(
            name=profile.name,
            fp32_macs_per_s=c.effective_fp32_gmacs * 1e9,
            int8_macs_per_s=c.effective_int8_gmacs * 1e9,
            per_op_overhead_s=c.per_op_overhead_us * 1e-6,
            mem_bytes_per_s=float(gbps) * 1e9 if gbps else None,
            channel_multiple=int(c.channel_multiple),
            per_inference_s=float(per_inf_us) * 1e-6 if per_inf_us else 0.0,
        )

    def macs_per_s(self, dtype: str) -> float:
        if dtype == "int8":
            return self.int8_macs_per_s
        if dtype == "fp32":
            return self.fp32_macs_per_s
        raise UsageError(f"unknown dtype {dtype!r}; expected fp32 or int8")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "effective_fp32_gmacs": self.fp32_macs_per_s / 1e9,
            "effective_int8_gmacs": self.int8_macs_per_s / 1e9,
            "per_op_overhead_us": self.per_op_overhead_s * 1e6,
            "mem_bandwidth_gbps": None if self.mem_bytes_per_s is None else self.mem_bytes_per_s / 1e9,
            "channel_multiple": self.channel_multiple,
            "per_inference_overhead_us": self.per_inference_s * 1e6,
        }


@dataclass(frozen=True)
class LayerEstimate:
    """The predicted time of one operator, split into its three terms (seconds)."""

    name: str
    op_type: str
    macs: int
    bytes: int
    compute_s: float
    memory_s: float
    overhead_s: float

    @property
    def seconds(self) -> float:
        return self.compute_s + self.memory_s + self.overhead_s


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of one inference on one device."""

    device: str
    dtype: str
    layers: tuple[LayerEstimate, ...]
    fixed_s: float = 0.0  # per-inference overhead
    basis: str = "cited"  # "cited": the profile's published figures; "measured": a calibration's fit
    runtime: str = ""  # the calibrated runtime ("onnxruntime/fp32") when basis is "measured"

    @property
    def total_s(self) -> float:
        return sum(layer.seconds for layer in self.layers) + self.fixed_s

    @property
    def total_ms(self) -> float:
        return self.total_s * 1e3

    def describe(self) -> str:
        """Where the figures come from, in a few words."""
        if self.basis == "measured":
            return f"{self.device}'s calibration of {self.runtime}"
        return f"{self.device}'s cited [compute] figures ({self.dtype})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "basis": self.basis,
            "runtime": self.runtime or None,
            "latency_ms": self.total_ms,
            "compute_ms": sum(x.compute_s for x in self.layers) * 1e3,
            "memory_ms": sum(x.memory_s for x in self.layers) * 1e3,
            "overhead_ms": (sum(x.overhead_s for x in self.layers) + self.fixed_s) * 1e3,
            "weight_layers": sum(1 for x in self.layers if x.macs > 0),
        }


def _keep_list(costs: Sequence[_LayerCostLike], keep: float | Sequence[float]) -> list[float]:
    if isinstance(keep, (int, float)):
        return [float(keep)] * len(costs)
    ks = [float(k) for k in keep]
    if len(ks) != len(costs):
        raise UsageError(f"one keep ratio per layer needed ({len(costs)}), got {len(ks)}")
    return ks


def op_costs_from_layer_costs(
    costs: Sequence[_LayerCostLike], keep: float | Sequence[float] = 1.0, *, dtype: str = "fp32", batch: int = 1
) -> list[OpCost]:
    """Per-layer costs of the channel-shrunk model at ``keep`` (the planner's convention).

    A layer keeps ``k_out = keep`` of its output channels (1 for the classifier) and
    receives ``k_in`` = the ``k_out`` of the layer named in ``input_from`` (1 for the
    network input); MACs and params scale by ``k_out * k_in``, activations by their own
    fraction. Linear layers become "Gemm" operators (the latency model's fc class).
    """
    if dtype not in BYTES_PER_VALUE:
        raise UsageError(f"unknown dtype {dtype!r}; expected fp32 or int8")
    ks = _keep_list(costs, keep)
    k_out = {c.name: (k if c.prunable_out else 1.0) for c, k in zip(costs, ks)}
    nbytes = BYTES_PER_VALUE[dtype]
    ops = []
    for c in costs:
        ko = k_out[c.name]
        ki = k_out.get(c.input_from, 1.0) if c.input_from is not None else 1.0
        params = c.params * ko * ki
        traffic = (c.in_elems * ki + c.out_elems * ko) * batch + params
        out_ch = max(1, round(c.out_channels * ko))
        in_ch = max(1, round(c.in_channels * ki))
        if c.kind == "depthwise":
            in_ch = 1
        op_type = "Gemm" if c.kind == "linear" else c.kind
        ops.append(OpCost(
            c.name, op_type, round(c.macs * ko * ki * batch), round(traffic * nbytes), round(params), dtype,
            out_ch, in_ch, c.input_from is None,
        ))
    return ops


def infer_format(ops: Sequence[OpCost]) -> str:
    """"tflite" when the operators carry TFLite names (CONV_2D, ...), else "onnx"."""
    return "tflite" if any(op.op_type.isupper() and "_" in op.op_type for op in ops) else "onnx"


def latency_model(profile: Any, fmt: str, dtype: str) -> DeviceModel | RuntimeFit:
    """What predicts ``profile`` for files of format ``fmt`` at ``dtype``: the calibrated fit
    of that runtime when the profile carries a calibration that measured it, else the
    profile's cited figures."""
    cal: LatencyCalibration | None = getattr(profile, "calibration", None)
    runtime = FORMAT_RUNTIMES.get(fmt)
    if cal is not None and runtime is not None:
        fit = cal.runtime(runtime, dtype)
        if fit is not None:
            return fit
    return DeviceModel.from_profile(profile)


def _ops_of(costs: Any, dtype: str | None, keep: float | Sequence[float], batch: int) -> Sequence[OpCost]:
    if isinstance(costs, (str, os.PathLike)):
        raise UsageError("predict takes operator costs; analyse the file first (cost.analysis)")
    if costs and not isinstance(costs[0], OpCost):
        return op_costs_from_layer_costs(costs, keep, dtype=dtype or "fp32", batch=batch)
    return costs  # type: ignore[no-any-return]


def _used_dtype(ops: Sequence[OpCost], dtype: str | None) -> str:
    return dtype or ("int8" if any(op.dtype == "int8" and op.weight_layer for op in ops) else "fp32")


def _predict_cited(ops: Sequence[OpCost], dm: DeviceModel, dtype: str | None) -> Prediction:
    layers = []
    for op in ops:
        d = dtype or op.dtype
        layers.append(LayerEstimate(
            name=op.name, op_type=op.op_type, macs=op.macs, bytes=op.bytes,
            compute_s=padded_macs(op, dm.channel_multiple) / dm.macs_per_s(d),
            memory_s=op.bytes / dm.mem_bytes_per_s if dm.mem_bytes_per_s else 0.0,
            overhead_s=dm.per_op_overhead_s if op.weight_layer else 0.0,
        ))
    return Prediction(device=dm.name, dtype=_used_dtype(ops, dtype), layers=tuple(layers), fixed_s=dm.per_inference_s)


def _predict_calibrated(ops: Sequence[OpCost], fit: RuntimeFit, name: str) -> Prediction:
    c = fit.coefficients
    layers = []
    for op in ops:
        f = _op_features(op, fit.channel_multiple)
        compute = sum(c[k] * f.get(k, 0.0) for k in ("conv_mac_s", "conv_window_s", "fc_mac_s"))
        layers.append(LayerEstimate(
            name=op.name, op_type=op.op_type, macs=op.macs, bytes=op.bytes, compute_s=compute,
            memory_s=c["other_byte_s"] * f.get("other_byte_s", 0.0),
            overhead_s=c["weight_op_s"] * f.get("weight_op_s", 0.0) + c["other_op_s"] * f.get("other_op_s", 0.0),
        ))
    return Prediction(device=name, dtype=fit.dtype, layers=tuple(layers), fixed_s=c["inference_s"],
                      basis="measured", runtime=fit.key)


def predict(
    costs: Sequence[OpCost] | Sequence[Any],
    device: DeviceModel | RuntimeFit | Any,
    *,
    dtype: str | None = None,
    keep: float | Sequence[float] = 1.0,
    batch: int = 1,
    fmt: str | None = None,
) -> Prediction:
    """Predicted latency of one inference of ``costs`` on ``device``.

    ``costs``: per-op costs, or LayerCosts (shrunk at ``keep``). ``device``: a cited
    :class:`DeviceModel`, a calibrated :class:`RuntimeFit`, or a profile (its calibration
    of the runtime for ``fmt`` at the ops' dtype when it has one, else its cited figures).
    ``dtype``: forces the dtype (cited: the MAC rate; calibrated: the runtime fit);
    by default each op's own. ``fmt``: "onnx" or "tflite"; by default a profile's export
    format for LayerCosts and the operators' naming for analysed files.
    """
    layer_costs = bool(costs) and not isinstance(costs[0], OpCost)
    ops = _ops_of(costs, dtype, keep, batch)
    if isinstance(device, DeviceModel):
        return _predict_cited(ops, device, dtype)
    if isinstance(device, RuntimeFit):
        return _predict_calibrated(ops, device, device.key)
    used = _used_dtype(ops, dtype)
    if fmt is None:
        fmt = device.export.format if layer_costs else infer_format(ops)
    model = latency_model(device, fmt, used)
    if isinstance(model, RuntimeFit):
        return _predict_calibrated(ops, model, device.name)
    return _predict_cited(ops, model, dtype)


# --------------------------------------------------------------------------- time per round


def training_features(forward_macs: float, layers: int, batch: int, chunks: int, local_steps: int) -> dict[str, float]:
    """The features of the training-time model for one round of ``local_steps`` steps."""
    return {
        "train_mac_s": 3.0 * forward_macs * batch * local_steps,
        "layer_pass_s": float(layers * max(1, chunks) * local_steps),
        "step_s": float(local_steps),
        "sample_s": float(batch * local_steps),
    }


@dataclass(frozen=True)
class RoundPrediction:
    """Predicted seconds of one round: local training plus the uplink of its frame."""

    compute_s: float
    uplink_s: float
    frame_bytes: float
    basis: str  # "measured" (a calibration's training fit) or "cited" (the [compute] fp32 rate)

    @property
    def seconds(self) -> float:
        return self.compute_s + self.uplink_s

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "compute_s": self.compute_s, "uplink_s": self.uplink_s,
                "frame_bytes": self.frame_bytes, "basis": self.basis}


def predict_round(
    profile: Any,
    *,
    forward_macs: float,
    layers: int,
    batch: int,
    chunks: int = 1,
    local_steps: int = 1,
    frame_bytes: float = 0.0,
) -> RoundPrediction:
    """Seconds of one training round on ``profile``'s device.

    ``forward_macs``: one sample's forward MACs; ``chunks``: micro-batches per step;
    ``frame_bytes``: the mask frame the node publishes per round (0 alone). Compute
    comes from the profile's calibration (torch training fit) when it has one, else from
    the cited fp32 rate at 3 × forward MACs plus the per-op overhead three times per
    layer and micro-batch.
    """
    f = training_features(forward_macs, layers, batch, chunks, local_steps)
    cal: LatencyCalibration | None = getattr(profile, "calibration", None)
    fit: TrainingFit | None = cal.training if cal is not None else None
    if fit is not None:
        compute = sum(fit.coefficients[k] * f[k] for k in TRAINING_COEFFICIENTS)
        basis = "measured"
    else:
        c = profile.compute
        compute = f["train_mac_s"] / (c.effective_fp32_gmacs * 1e9) + c.per_op_overhead_us * 1e-6 * 3 * f["layer_pass_s"]
        basis = "cited"
    uplink_s = frame_bytes * 8.0 / (profile.network.uplink_kbps * 1000.0) if frame_bytes > 0 else 0.0
    return RoundPrediction(compute_s=compute, uplink_s=uplink_s, frame_bytes=float(frame_bytes), basis=basis)


class RoundTimer:
    """Predicted against measured seconds per round, as a run goes (what ``train`` reports).

    The first ``skip`` rounds pay one-time costs (kernel warm-up, first page faults of the
    dataset) and rounds that evaluate also run the test set, which the prediction does not
    count: both are left out. :meth:`observe` returns the report line once, when ``after``
    rounds have been compared; :attr:`line` keeps the latest.
    """

    def __init__(self, predicted_s: float, basis: str = "", *, skip: int = 1, after: int = 3) -> None:
        self.predicted_s = float(predicted_s)
        self.basis = basis
        self.skip = skip
        self.after = after
        self.seen = 0
        self.measured: list[float] = []
        self.line: str | None = None

    @property
    def measured_s(self) -> float | None:
        """Median measured seconds of the rounds compared so far (None before the first)."""
        return statistics.median(self.measured) if self.measured else None

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured, or None before the first compared round."""
        m = self.measured_s
        return None if m is None or m <= 0 else (self.predicted_s - m) / m

    def observe(self, round_s: float, *, evaluated: bool = False) -> str | None:
        """Add one round's wall time; the report line the first time ``after`` rounds are in."""
        self.seen += 1
        if self.seen <= self.skip or evaluated:
            return None
        self.measured.append(float(round_s))
        m, e = self.measured_s, self.error
        assert m is not None
        n = len(self.measured)
        self.line = (f"time per round: predicted {self.predicted_s:.3g} s{f' ({self.basis})' if self.basis else ''}, "
                     f"measured {m:.3g} s (median of {n} training round{'s' if n != 1 else ''} after the first "
                     f"{self.skip}, evaluation rounds left out)" + ("" if e is None else f", {100 * e:+.0f} %"))
        return self.line if n == self.after else None
