"""A per-layer latency model of a device: compute, memory traffic and fixed costs.

For one inference::

    latency = Σ_ops  padded_macs_op / effective_macs_per_s(dtype)
                   + bytes_op / mem_bytes_per_s           (when the device model has a bandwidth)
                   + per_op_overhead                       (weight layers only)
            + per_inference_overhead                       (when the device model has one)

``padded_macs`` counts a MAC operator's output channels rounded up to the device's
``channel_multiple``: CPU kernels (MLAS NCHWc blocks, XNNPACK, CMSIS-NN) vectorise over
output channels and compute whole vectors, so a shrunk layer with 5 channels costs
what 8 or 16 would (the profile schema's "channel counts that are a multiple of this
hit the fast kernels"). Exported files are already padded to the multiple with zero
channels (``exporters.shrink``), so their operators carry the padded widths on both
sides (a padded layer's consumer reads the zero channels too) and count what the
planner counted; the rounding here then changes nothing.

The per-op overhead is charged to weight layers (Conv / Gemm / MatMul and their
quantized forms) only, matching the profile schema's ``per_op_overhead_us`` ("fixed
cost per weight layer: dispatch, activation, pooling, kernel launch"): runtimes fuse
the activation and often the pooling into the layer before, so counting every graph
node would charge the same cost several times.

The bandwidth and per-inference terms are not in the profile schema (docs/profiles.md)
yet: :meth:`DeviceModel.from_profile` picks up ``compute.mem_bandwidth_gbps`` and
``compute.per_inference_overhead_us`` when the schema grows them, and otherwise
predicts with compute, channel padding and per-op overhead only (the effective MAC
rates of the built-in profiles are whole-network figures from published benchmarks,
so they already fold typical memory traffic in). :mod:`.calibrate` fits both forms.

Inputs: per-operator costs (:class:`~dslth_edge.cost.analysis.OpCost`, from an ONNX
graph, a .tflite file or a torch module) or the planner's
:class:`~dslth_edge.cost.layers.LayerCost` list with keep ratios.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dslth_edge.cost.units import BYTES_PER_VALUE
from dslth_edge.errors import UsageError

from dslth_edge.cost.analysis import OpCost, analyze_onnx

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.cost.layers import LayerCost
    from dslth_edge.device.profiles import Profile

__all__ = [
    "DeviceModel",
    "LayerEstimate",
    "Prediction",
    "op_costs_from_layer_costs",
    "padded_macs",
    "predict",
]

def padded_macs(op: OpCost, channel_multiple: int) -> float:
    """MACs of ``op`` with its output channels rounded up to ``channel_multiple``."""
    if op.macs <= 0 or channel_multiple <= 1 or op.out_channels <= 0:
        return float(op.macs)
    padded = -(-op.out_channels // channel_multiple) * channel_multiple
    return op.macs * padded / op.out_channels


@dataclass(frozen=True)
class DeviceModel:
    """The constants of the latency model for one device (SI units: seconds, bytes)."""

    name: str
    fp32_macs_per_s: float
    int8_macs_per_s: float
    per_op_overhead_s: float
    mem_bytes_per_s: float | None = None  # None: no separate memory term
    channel_multiple: int = 1  # output channels are padded to a multiple of this
    per_inference_s: float = 0.0  # fixed cost of one inference call (runtime entry, I/O binding)

    @classmethod
    def from_profile(cls, profile: Profile) -> DeviceModel:
        """The model a hardware profile describes ([compute] rates, overhead, channel multiple)."""
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

    @property
    def total_s(self) -> float:
        return sum(layer.seconds for layer in self.layers) + self.fixed_s

    @property
    def total_ms(self) -> float:
        return self.total_s * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "latency_ms": self.total_ms,
            "compute_ms": sum(x.compute_s for x in self.layers) * 1e3,
            "memory_ms": sum(x.memory_s for x in self.layers) * 1e3,
            "overhead_ms": (sum(x.overhead_s for x in self.layers) + self.fixed_s) * 1e3,
            "weight_layers": sum(1 for x in self.layers if x.macs > 0),
        }


def _keep_list(costs: Sequence[LayerCost], keep: float | Sequence[float]) -> list[float]:
    if isinstance(keep, (int, float)):
        return [float(keep)] * len(costs)
    ks = [float(k) for k in keep]
    if len(ks) != len(costs):
        raise UsageError(f"one keep ratio per layer needed ({len(costs)}), got {len(ks)}")
    return ks


def op_costs_from_layer_costs(
    costs: Sequence[LayerCost], keep: float | Sequence[float] = 1.0, *, dtype: str = "fp32", batch: int = 1
) -> list[OpCost]:
    """Per-layer costs of the channel-shrunk model at ``keep`` (the planner's convention).

    A layer keeps ``k_out = keep`` of its output channels (1 for the classifier) and
    receives ``k_in`` = the ``k_out`` of the layer named in ``input_from`` (1 for the
    network input); MACs and params scale by ``k_out * k_in``, activations by their own
    fraction.
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
        ops.append(OpCost(
            c.name, c.kind, round(c.macs * ko * ki * batch), round(traffic * nbytes), round(params), dtype,
            out_ch, in_ch, c.input_from is None,
        ))
    return ops


def predict(
    costs: Sequence[OpCost] | Sequence[LayerCost] | str | os.PathLike[str],
    device: DeviceModel | Profile,
    *,
    dtype: str | None = None,
    keep: float | Sequence[float] = 1.0,
    batch: int = 1,
) -> Prediction:
    """Predicted latency of one inference of ``costs`` on ``device``.

    ``costs``: per-op costs, LayerCosts (shrunk at ``keep``), or a path to an .onnx file.
    ``dtype``: forces the MAC rate used; by default each op's own dtype.
    """
    dm = device if isinstance(device, DeviceModel) else DeviceModel.from_profile(device)
    if isinstance(costs, (str, os.PathLike)):
        ops: Sequence[OpCost] = analyze_onnx(costs, batch=batch).ops
    elif costs and not isinstance(costs[0], OpCost):
        ops = op_costs_from_layer_costs(costs, keep, dtype=dtype or "fp32", batch=batch)  # type: ignore[arg-type]
    else:
        ops = costs  # type: ignore[assignment]
    layers = []
    for op in ops:
        d = dtype or op.dtype
        layers.append(
            LayerEstimate(
                name=op.name,
                op_type=op.op_type,
                macs=op.macs,
                bytes=op.bytes,
                compute_s=padded_macs(op, dm.channel_multiple) / dm.macs_per_s(d),
                memory_s=op.bytes / dm.mem_bytes_per_s if dm.mem_bytes_per_s else 0.0,
                overhead_s=dm.per_op_overhead_s if op.weight_layer else 0.0,
            )
        )
    used = dtype or ("int8" if any(op.dtype == "int8" and op.weight_layer for op in ops) else "fp32")
    return Prediction(device=dm.name, dtype=used, layers=tuple(layers), fixed_s=dm.per_inference_s)
