"""Plan a device's keep ratio (and, where structured, its channel counts) from its
hardware profile and a model's layer costs.

:func:`plan` returns the largest keep ratio ``k`` on a fixed grid (1.00, 0.99, ...,
down to a floor, 0.02 by default) for which four predicted quantities fit the
profile's budgets:

``latency``
    the one latency model (:func:`dslth_edge.cost.latency.predict`) with the profile:
    its calibration of the runtime the export runs on when the profile carries one
    (``profile --calibrate``), else its cited ``[compute]`` figures
    (``sum_l padded_macs_l / effective_macs_per_s(dtype) + per_op_overhead`` per weight
    layer), where ``padded_macs`` rounds a layer's output channels up to the profile's
    ``channel_multiple``. The same function judges an exported file (the verdict), so
    the plan and the verdict read the same numbers.
``storage``
    exported weight bytes ``sum_l params_l(k) * bytes_per_value(dtype)``
``ram``
    all weight bytes plus the peak over layers of
    ``(in_elems * k_in + out_elems * k_out) * bytes_per_value(dtype)``
``traffic``
    one mask frame per round, ``sum_l params_l * H(density_l) / 8`` bytes plus a fixed
    header allowance, against ``uplink bytes/s * round period``. ``H`` is the binary
    entropy, the order-0 bound the entropy codec reaches. One frame is published to
    the broker per round whatever the number of neighbours, so the budget is per
    frame, not per neighbour.

With ``granularity="channel"`` a prunable layer keeps ``channels_l`` of its ``C_l``
output channels: ``k * C_l`` rounded down to a multiple of the profile's
``channel_multiple`` (at least one multiple), so every exported width hits the fast
kernels; the classifier keeps all its outputs (they are the classes). ``k_out`` is
``channels_l / C_l`` exactly and ``k_in`` is the ``k_out`` of the layer named in
``input_from`` (1.0 for the network input), so ``macs_l = macs * k_out * k_in`` and
likewise for params. ``density`` (None: whole channels) is the fraction of weights the
mask keeps inside the kept block, which only the traffic depends on. With
``granularity="unstructured"`` the mask zeroes individual weights but the exported
model stays dense: latency, storage and RAM do not shrink with ``k``; only the mask
traffic depends on it.

``H`` is not monotone (a 0.5-dense mask is the most expensive to send, an all-ones
mask is free), so the traffic constraint's feasible set is not an interval. The grid
scan from the top handles that: the result is exactly the largest feasible grid
point, and the binding budget is the one that rules out the next grid step up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from dslth_edge.cost.layers import LayerCost
from dslth_edge.errors import ProfileError
from dslth_edge.cost.checks import Check, format_quantity
from dslth_edge.cost.latency import op_costs_from_layer_costs, predict
from dslth_edge.cost.units import BYTES_PER_VALUE
from dslth_edge.device.profiles import DTYPES, Profile

__all__ = [
    "GRANULARITIES",
    "CONSTRAINTS",
    "FRAME_HEADER_BYTES",
    "LAYER_HEADER_BYTES",
    "DEFAULT_STEP",
    "DEFAULT_FLOOR",
    "PlanError",
    "LayerKeep",
    "KeepCosts",
    "Plan",
    "binary_entropy",
    "planned_channels",
    "layer_keeps",
    "costs_at_keep",
    "check_budgets",
    "plan",
    "format_quantity",
]

GRANULARITIES: tuple[str, ...] = ("channel", "unstructured")
#: Constraint names, in report order.
CONSTRAINTS: tuple[str, ...] = ("latency", "storage", "ram", "traffic")
#: Fixed allowance per mask frame (version, ids, round, fingerprint, MAC/CRC).
FRAME_HEADER_BYTES = 64
#: Allowance per layer in a frame (layer id, length fields, codec state).
LAYER_HEADER_BYTES = 16
DEFAULT_STEP = 0.01
DEFAULT_FLOOR = 0.02

_UNITS = {"latency": "ms", "storage": "B", "ram": "B", "traffic": "B"}
_REL_TOL = 1e-9  # predicted <= budget * (1 + tol): absorbs float noise at exact ties


class PlanError(ProfileError):
    """No keep ratio on the grid fits the profile's budgets (or the plan's inputs are bad).

    ``binding`` names the budget that rules out even the floor (None for bad inputs).
    """

    def __init__(self, message: str, *, binding: str | None = None) -> None:
        super().__init__(message)
        self.binding = binding


def planned_channels(channels: int, keep: float, multiple: int = 1) -> int:
    """Output channels a prunable layer keeps at ``keep``: ``keep * channels`` rounded down
    to a multiple of ``multiple`` (at least one multiple, at most ``channels``)."""
    raw = max(1, min(channels, int(math.floor(keep * channels + 1e-9))))
    if multiple <= 1 or raw >= channels:
        return raw
    rounded = (raw // multiple) * multiple
    return rounded if rounded >= 1 else min(multiple, channels)


def binary_entropy(p: float) -> float:
    """H(p) in bits: the order-0 cost per mask bit of a mask with density ``p``."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


@dataclass(frozen=True)
class LayerKeep:
    """One layer at a keep ratio: its keep fractions and exported size."""

    name: str
    keep_out: float  # fraction of output channels in the export
    keep_in: float  # fraction of input channels in the export
    mask_density: float  # fraction of ones in this layer's own mask (its keep ratio)
    params: float  # exported weights
    macs: float  # exported MACs per sample
    channels: int = 0  # output channels in the export
    out_channels: int = 0  # output channels of the full-width layer


@dataclass(frozen=True)
class KeepCosts:
    """Predicted costs of a model at one keep ratio (latency from :func:`dslth_edge.cost.latency.predict`)."""

    keep: float
    latency_ms: float
    weight_bytes: float
    ram_bytes: float
    frame_bytes: float
    layers: tuple[LayerKeep, ...]

    def value(self, constraint: str) -> float:
        return {
            "latency": self.latency_ms,
            "storage": self.weight_bytes,
            "ram": self.ram_bytes,
            "traffic": self.frame_bytes,
        }[constraint]


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one profile and one model."""

    profile: str
    keep_ratio: float
    binding: str  # a name from CONSTRAINTS, or "none" when keep 1.0 fits
    granularity: str
    dtype: str
    export_format: str
    channel_multiple: int
    can_train: bool
    step: float
    floor: float
    checks: tuple[Check, ...]
    layers: tuple[LayerKeep, ...]
    notes: tuple[str, ...]
    density: float | None = None  # mask density inside the kept block (None: whole channels)
    # the training side (a device.training.TrainingPlan), filled by device.training.attach_training
    training: Any = None

    @property
    def keep(self) -> float:
        """Alias of :attr:`keep_ratio`."""
        return self.keep_ratio

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def keep_ratios(self) -> dict[str, float]:
        """Per-layer keep ratio (the density of each layer's own mask)."""
        return {layer.name: layer.mask_density for layer in self.layers}

    @property
    def channels(self) -> dict[str, int]:
        """Per-layer output channels of the export (all of them for unstructured plans)."""
        return {layer.name: layer.channels for layer in self.layers}

    @property
    def structured(self) -> bool:
        """True when the export removes channels (some layer keeps fewer than it has)."""
        return any(layer.channels < layer.out_channels for layer in self.layers)

    def explain(self) -> str:
        """One line: the keep ratio, the binding budget and why."""
        head = f"keep {self.keep_ratio:.2f}"
        if self.binding == "none":
            return f"{head} — no budget binds: the dense model fits every budget"
        c = self.check(self.binding)
        line = f"{head} — bound by {c.name}: {c.describe()}"
        if c.next_predicted is not None:
            up = self.keep_ratio + self.step
            line += f" (keep {up:.2f} would need {format_quantity(c.next_predicted, c.unit)})"
        return line

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [
            {"name": c.name, "unit": c.unit, "predicted": c.value, "budget": c.budget, "ok": c.ok,
             "next_predicted": c.next_value, "next_ok": c.next_ok, "usage": c.usage, "basis": c.basis}
            for c in self.checks
        ]
        data["layers"] = [dict(layer) for layer in data["layers"]]
        data["notes"] = list(self.notes)
        data["keep_ratios"] = self.keep_ratios
        data["channels"] = self.channels
        data["explanation"] = self.explain()
        data["training"] = None if self.training is None else self.training.to_dict()
        return data


# --------------------------------------------------------------------------- model


def _validate(granularity: str, dtype: str) -> None:
    if granularity not in GRANULARITIES:
        raise PlanError(
            f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}"
        )
    if dtype not in DTYPES:
        raise PlanError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


def layer_keeps(
    costs: Sequence[LayerCost],
    keep: float,
    granularity: str = "channel",
    *,
    channel_multiple: int = 1,
    density: float | None = None,
) -> tuple[LayerKeep, ...]:
    """Per-layer keep fractions, channel counts and exported params/MACs at keep ratio ``keep``."""
    if granularity not in GRANULARITIES:
        raise PlanError(
            f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}"
        )
    if not costs:
        raise PlanError("the model has no weight layers to plan")
    if granularity == "unstructured":
        # The mask zeroes weights but removes no channel: the export stays dense.
        return tuple(
            LayerKeep(c.name, 1.0, 1.0, keep, float(c.params), float(c.macs), c.out_channels, c.out_channels)
            for c in costs
        )
    kept = {
        c.name: (planned_channels(c.out_channels, keep, channel_multiple) if c.prunable_out else c.out_channels)
        for c in costs
    }
    out_keep = {c.name: kept[c.name] / c.out_channels for c in costs}
    layers = []
    for c in costs:
        if c.input_from is None:
            k_in = 1.0
        elif c.input_from in out_keep:
            k_in = out_keep[c.input_from]
        else:
            raise PlanError(
                f"layer {c.name!r} takes its input from unknown layer {c.input_from!r}"
            )
        k_out = out_keep[c.name]
        # whole channels: the layer's own mask keeps its kept rows whole (k_out); with a
        # density, it keeps that fraction of the weights between kept inputs and outputs
        mask_density = k_out if density is None else density * k_out * k_in
        layers.append(
            LayerKeep(c.name, k_out, k_in, mask_density, c.params * k_out * k_in, c.macs * k_out * k_in,
                      kept[c.name], c.out_channels)
        )
    return tuple(layers)


def costs_at_keep(
    costs: Sequence[LayerCost],
    profile: Profile,
    keep: float,
    *,
    granularity: str = "channel",
    dtype: str | None = None,
    density: float | None = None,
) -> KeepCosts:
    """Predicted latency, weight bytes, RAM bytes and frame bytes at keep ratio ``keep``.

    The latency is the one latency model's (:func:`dslth_edge.cost.latency.predict`, channel
    padding included) on the exported widths, for the profile's export format.
    """
    dtype = dtype or profile.export.dtype
    _validate(granularity, dtype)
    layers = layer_keeps(costs, keep, granularity, channel_multiple=profile.compute.channel_multiple,
                         density=density)
    bpv = BYTES_PER_VALUE[dtype]
    ops = op_costs_from_layer_costs(costs, [layer.keep_out for layer in layers], dtype=dtype)
    latency_ms = predict(ops, profile, dtype=dtype, fmt=profile.export.format).total_ms
    weight_bytes = sum(layer.params for layer in layers) * bpv
    peak_act = max(
        (c.in_elems * layer.keep_in + c.out_elems * layer.keep_out) * bpv
        for c, layer in zip(costs, layers)
    )
    mask_bits = sum(c.params * binary_entropy(layer.mask_density) for c, layer in zip(costs, layers))
    frame_bytes = mask_bits / 8.0 + FRAME_HEADER_BYTES + LAYER_HEADER_BYTES * len(layers)
    return KeepCosts(
        keep=keep,
        latency_ms=latency_ms,
        weight_bytes=weight_bytes,
        ram_bytes=weight_bytes + peak_act,
        frame_bytes=frame_bytes,
        layers=layers,
    )


def _budgets(profile: Profile) -> dict[str, float]:
    return {
        "latency": profile.latency_budget_ms,
        "storage": profile.model_storage_budget_bytes,
        "ram": profile.model_ram_budget_bytes,
        "traffic": profile.traffic_budget_bytes,
    }


def check_budgets(prediction: KeepCosts, profile: Profile) -> tuple[Check, ...]:
    """Each constraint's predicted value against the profile's budget."""
    budgets = _budgets(profile)
    checks = []
    for name in CONSTRAINTS:
        value = prediction.value(name)
        budget = budgets[name]
        checks.append(Check(name, _UNITS[name], value, budget, value <= budget * (1 + _REL_TOL),
                            basis=f"predicted for {profile.name}"))
    return tuple(checks)


# --------------------------------------------------------------------------- plan


def plan(
    costs: Sequence[LayerCost],
    profile: Profile,
    *,
    granularity: str = "channel",
    dtype: str | None = None,
    step: float = DEFAULT_STEP,
    floor: float = DEFAULT_FLOOR,
    density: float | None = None,
) -> Plan:
    """The largest keep ratio on the grid ``1, 1-step, ..., floor`` that fits every budget.

    ``dtype`` defaults to the profile's export dtype; ``density`` (channel plans only) is
    the mask density inside the kept channels (None: whole channels). Raises
    :class:`PlanError` when even the floor does not fit, in one line naming the device,
    the binding budget with its numbers and the nearest feasible setting.
    """
    dtype = dtype or profile.export.dtype
    _validate(granularity, dtype)
    if not costs:
        raise PlanError("the model has no weight layers to plan")
    if not (0.0 < step <= 1.0):
        raise PlanError(f"grid step must be in (0, 1], got {step!r}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-9:
        raise PlanError(f"grid step must divide 1 (e.g. 0.01, 0.05), got {step!r}")
    if not (0.0 < floor <= 1.0):
        raise PlanError(f"floor must be in (0, 1], got {floor!r}")
    lowest = max(1, math.ceil(floor * n - 1e-9))

    notes = []
    if not profile.can_train:
        notes.append(
            f"{profile.name} cannot train (can_train = false): it is an inference target; "
            "its mask is trained on a gateway and the shrunk model is deployed to it"
        )
    if granularity == "unstructured":
        notes.append(
            "unstructured masks leave the exported model dense: latency, storage and RAM "
            "do not shrink with the keep ratio; only the mask traffic does"
        )
    else:
        notes.append(
            f"kept channel counts are rounded down to a multiple of "
            f"{profile.compute.channel_multiple} (the profile's channel_multiple); predictions use those counts"
        )
    if density is not None and not (0.0 < density <= 1.0):
        raise PlanError(f"mask density must be in (0, 1], got {density!r}")

    above: tuple[Check, ...] | None = None  # checks at the grid step above the current one
    checks: tuple[Check, ...] = ()
    for i in range(n, lowest - 1, -1):
        keep = i / n
        prediction = costs_at_keep(costs, profile, keep, granularity=granularity, dtype=dtype, density=density)
        checks = check_budgets(prediction, profile)
        if all(c.ok for c in checks):
            binding = "none"
            if above is not None:
                failing = [c for c in above if not c.ok]
                binding = max(failing, key=lambda c: c.usage or 0.0).name
                checks = tuple(replace(c, next_value=a.value, next_ok=a.ok) for c, a in zip(checks, above))
            return Plan(
                profile=profile.name,
                keep_ratio=keep,
                binding=binding,
                granularity=granularity,
                dtype=dtype,
                export_format=profile.export.format,
                channel_multiple=profile.compute.channel_multiple,
                can_train=profile.can_train,
                step=1.0 / n,
                floor=lowest / n,
                checks=checks,
                layers=prediction.layers,
                notes=tuple(notes),
                density=density if granularity == "channel" else None,
            )
        above = checks

    bad = [c for c in checks if not c.ok]
    binding = max(bad, key=lambda c: c.usage or 0.0).name
    failing = "; ".join(f"{c.name}: {c.describe()}" for c in bad)
    raise PlanError(
        f"profile {profile.name!r} cannot meet its budget even at the floor keep "
        f"{lowest / n:.2f} ({granularity}, {dtype}): {binding} binds — {failing}; "
        f"nearest feasible: {_nearest_feasible(costs, profile, granularity, dtype, step, floor, density)}",
        binding=binding,
    )


def _nearest_feasible(
    costs: Sequence[LayerCost], profile: Profile, granularity: str, dtype: str, step: float, floor: float,
    density: float | None,
) -> str:
    """The closest setting that does fit: channel granularity, then int8, then both; else none."""
    tries = []
    if granularity == "unstructured":
        tries.append(("channel", dtype, "--granularity channel"))
    if dtype != "int8":
        tries.append((granularity, "int8", "dtype int8"))
        if granularity == "unstructured":
            tries.append(("channel", "int8", "--granularity channel with dtype int8"))
    for g, d, label in tries:
        try:
            p = plan(costs, profile, granularity=g, dtype=d, step=step, floor=floor,
                     density=density if g == "channel" else None)
        except PlanError:
            continue
        return f"{label} (keep {p.keep_ratio:.2f})"
    return "none for this model — a smaller model (e.g. --model mcu-cnn) or a larger budget"
