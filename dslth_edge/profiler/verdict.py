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
the latency model (:func:`dslth_edge.cost.latency.predict`, the one the planner uses)
adds the latency expected on the named device -- from the profile's calibration of the
file's runtime when it carries one, else from its cited figures, and the check says
which -- and that prediction, not this machine's p95, decides the latency part of the
overall verdict.

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

from dslth_edge.cost.checks import Check
from dslth_edge.cost.latency import Prediction, predict
from dslth_edge.cost.units import MIB
from dslth_edge.profiler.host import is_this_machine

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.device.profiles import Profile

    from dslth_edge.profiler.measure import ProfileResult

__all__ = ["Check", "Verdict", "judge"]



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
            "checks": [_check_dict(c) for c in self.checks],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }


def _check_dict(c: Check) -> dict[str, Any]:
    """A check as the ``checks`` entries of docs/profile-json.md."""
    d = asdict(c)
    for planner_only in ("next_value", "next_ok"):
        d.pop(planner_only)
    d["usage"] = c.usage
    return d


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
        Check("host latency" if mcu else "latency", "ms", p95, latency_budget, p95 <= latency_budget,
              basis=f"p95 {where}", decides=here),
    ]
    prediction = None
    fmt = result.model.format if result.model.format in ("onnx", "tflite") else None
    if result.model.ops:
        prediction = predict(list(result.model.ops), profile, fmt=fmt)
        pred_ms = prediction.total_ms
        if here:
            # informational: how well this machine's own calibration predicts what was measured
            basis = f"predicted from {prediction.describe()} (a check of the predictor, not counted)"
        else:
            basis = f"predicted for {profile.name} from {prediction.describe()}"
        checks.append(Check("predicted latency", "ms", pred_ms, latency_budget, pred_ms <= latency_budget,
                            basis=basis, decides=not here))
    else:
        checks.append(Check(
            "predicted latency", "ms", None, latency_budget, None,
            basis=f"no prediction for {profile.name}: the model's per-op costs are n/a ({result.model.note})",
            decides=not here,
        ))
    ram = result.memory.overall_peak_growth_bytes
    ram_budget = profile.budget.model_ram_mib * MIB
    if mcu:
        arena, basis = _tflm_arena(result)
        checks.append(Check("memory", "bytes", arena, ram_budget, None if arena is None else arena <= ram_budget,
                            basis=basis, decides=True))
        checks.append(Check(
            "host memory", "bytes", None if ram is None else float(ram), ram_budget,
            None if ram is None else ram <= ram_budget,
            basis=f"peak RSS growth of {result.backend.name} {where} (the host's runtime, not TFLite Micro)",
            decides=False,
        ))
    else:
        checks.append(Check(
            "memory", "bytes", None if ram is None else float(ram), ram_budget, None if ram is None else ram <= ram_budget,
            basis=f"peak RSS growth {where}", decides=True,
        ))
    size_budget = profile.budget.model_storage_mib * MIB
    checks.append(Check(
        "storage", "bytes", float(result.model.size_bytes), size_budget, result.model.size_bytes <= size_budget,
        basis="model file size", decides=True,
    ))
    return Verdict(
        profile=profile.name,
        device=profile.device,
        this_machine=here,
        measured_on=result.host.describe(),
        checks=tuple(checks),
        prediction=prediction,
    )
