"""Judge a measured model against a hardware profile's budgets.

Three checks, each labelled with where its figure comes from:

``latency``
    the measured p95 against ``budget.latency_ms`` -- measured on *this* machine;
``memory``
    the measured overall peak-RSS growth (the runtime's whole footprint for the model)
    against ``budget.model_ram_mib``;
``storage``
    the model file's size against ``budget.model_storage_mib``.

When the profile is not this machine (see :func:`~dslth_edge.profiler.host.is_this_machine`)
the predictor adds the latency expected on the named device, and that prediction,
not this machine's p95, decides the latency part of the overall verdict.

Microcontroller profiles (runtime TensorFlow Lite Micro) are judged by microcontroller
figures: memory is the TFLite Micro tensor arena, measured with the tflite-micro
interpreter plus the optimized-kernel margin of :mod:`dslth_edge.exporters.tflm` (the
model itself stays in flash, which the storage check covers); latency is the
prediction. The host's LiteRT run is still shown, labelled as the host's, and does not
count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dslth_edge.cost.units import MIB
from dslth_edge.profiler.host import is_this_machine
from dslth_edge.profiler.predictor import Prediction, predict

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.device.profiles import Profile

    from dslth_edge.profiler.measure import ProfileResult

__all__ = ["Check", "Verdict", "judge"]



@dataclass(frozen=True)
class Check:
    """One figure against one budget."""

    name: str  # "latency" | "predicted latency" | "memory" | "storage"
    value: float | None  # None: the figure could not be measured
    budget: float
    unit: str  # "ms" | "bytes"
    basis: str  # where the figure comes from, e.g. "p95 measured on this machine (host x)"
    ok: bool | None  # None: unknown
    decides: bool  # whether it counts in the overall verdict

    @property
    def usage(self) -> float | None:
        return None if self.value is None else self.value / self.budget


@dataclass(frozen=True)
class Verdict:
    """The checks of one model against one profile, and the overall outcome."""

    profile: str
    device: str
    this_machine: bool
    measured_on: str
    checks: tuple[Check, ...]
    prediction: Prediction | None

    @property
    def ok(self) -> bool | None:
        """True when every deciding check passes; None when one of them is unknown."""
        deciding = [c.ok for c in self.checks if c.decides]
        if any(v is False for v in deciding):
            return False
        if any(v is None for v in deciding):
            return None
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "device": self.device,
            "this_machine": self.this_machine,
            "measured_on": self.measured_on,
            "ok": self.ok,
            "checks": [dict(asdict(c), usage=c.usage) for c in self.checks],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }


def _tflm_arena(result: ProfileResult) -> tuple[float | None, str]:
    """(recommended TFLite Micro arena of the profiled file, basis) for microcontroller verdicts."""
    if result.model.format != "tflite":
        return None, f"n/a: TFLite Micro runs .tflite files, this is {result.model.format}"
    from dslth_edge.errors import DslthError
    from dslth_edge.exporters.tflm import measure_arena

    try:
        with open(result.model.path, "rb") as fh:
            arena = measure_arena(fh.read())
    except (DslthError, OSError) as exc:
        return None, f"n/a: TFLite Micro arena not measured ({exc})"
    return float(arena.recommended_bytes), (
        f"TFLite Micro tensor arena: {arena.measured_bytes:,} B measured with tflite-micro + {arena.margin_bytes:,} B "
        "optimized-kernel margin (the model stays in flash)")


def judge(result: ProfileResult, profile: Profile) -> Verdict:
    """Compare ``result`` with ``profile``'s budgets (and predict for another device)."""
    from dslth_edge.exporters.tflm import runs_tflm

    here = is_this_machine(profile)
    mcu = runs_tflm(profile) and not here
    where = "measured on this machine"  # which machine: Verdict.measured_on
    if mcu:
        where = "measured on this host, not on the device"
    p95 = result.latency.p95
    latency_budget = profile.budget.latency_ms
    checks = [
        Check("host latency" if mcu else "latency", p95, latency_budget, "ms", f"p95 {where}", p95 <= latency_budget,
              decides=here),
    ]
    prediction = None
    if here and result.model.ops:
        # informational: how well this machine's own calibration predicts what was measured
        prediction = predict(list(result.model.ops), profile)
        checks.append(Check(
            "predicted latency", prediction.total_ms, latency_budget, "ms",
            f"predicted from {profile.name}'s calibration (a check of the predictor, not counted)",
            prediction.total_ms <= latency_budget, decides=False,
        ))
    elif result.model.ops:
        prediction = predict(list(result.model.ops), profile)
        pred_ms = prediction.total_ms
        checks.append(Check(
            "predicted latency", pred_ms, latency_budget, "ms",
            f"predicted for {profile.name} ({prediction.dtype}, per-layer model of its [compute] figures)",
            pred_ms <= latency_budget, decides=True,
        ))
    else:
        checks.append(Check(
            "predicted latency", None, latency_budget, "ms",
            f"no prediction for {profile.name}: the model's per-op costs are n/a ({result.model.note})",
            None, decides=not here,
        ))
    ram = result.memory.overall_peak_growth_bytes
    ram_budget = profile.budget.model_ram_mib * MIB
    if mcu:
        arena, basis = _tflm_arena(result)
        checks.append(Check("memory", arena, ram_budget, "bytes", basis, None if arena is None else arena <= ram_budget,
                            decides=True))
        checks.append(Check(
            "host memory", None if ram is None else float(ram), ram_budget, "bytes",
            f"peak RSS growth of {result.backend.name} {where} (the host's runtime, not TFLite Micro)",
            None if ram is None else ram <= ram_budget, decides=False,
        ))
    else:
        checks.append(Check(
            "memory", None if ram is None else float(ram), ram_budget, "bytes",
            f"peak RSS growth {where}", None if ram is None else ram <= ram_budget, decides=True,
        ))
    size_budget = profile.budget.model_storage_mib * MIB
    checks.append(Check(
        "storage", float(result.model.size_bytes), size_budget, "bytes",
        "model file size", result.model.size_bytes <= size_budget, decides=True,
    ))
    return Verdict(
        profile=profile.name,
        device=profile.device,
        this_machine=here,
        measured_on=result.host.describe(),
        checks=tuple(checks),
        prediction=prediction,
    )
