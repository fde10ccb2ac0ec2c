"""One figure against one budget: the check both the planner and the export verdict report.

The planner (``device.planner``) fills ``next_value`` / ``next_ok`` (the same figure one
grid step up the keep ratio); the verdict (``profiler.verdict``) fills ``basis`` (where
the figure comes from) and ``decides`` (whether it counts in the overall outcome).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Check", "format_quantity"]


def format_quantity(value: float, unit: str, *, budget: bool = False) -> str:
    """Human form of a latency (ms) or a byte count (B -> KiB / MiB / GiB)."""
    if unit == "ms":
        return f"{value:g} ms" if budget else f"{value:.4g} ms"
    if unit == "B":
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= scale:
                return f"{value / scale:.4g} {name}"
        return f"{value:.0f} B"
    return f"{value:.4g} {unit}"


@dataclass(frozen=True)
class Check:
    """One figure against one budget."""

    name: str  # "latency" | "storage" | "ram" | "traffic" | "memory" | "training-ram" | ...
    unit: str  # "ms" | "B" | "bytes"
    value: float | None  # None: the figure could not be obtained
    budget: float
    ok: bool | None  # None: unknown
    basis: str = ""  # where the figure comes from ("predicted ...", "p95 measured on ...")
    decides: bool = True  # whether it counts in the overall outcome
    next_value: float | None = None  # planner: at keep + step (None at keep 1.0)
    next_ok: bool | None = None

    @property
    def predicted(self) -> float:
        """The figure, for checks whose value is a prediction (the planner's word for it)."""
        return float("nan") if self.value is None else self.value

    @property
    def next_predicted(self) -> float | None:
        """The planner's figure one grid step up (alias of :attr:`next_value`)."""
        return self.next_value

    @property
    def usage(self) -> float | None:
        """value / budget (1.0 = exactly at the budget); None when the value is unknown."""
        return None if self.value is None else self.value / self.budget

    def describe(self) -> str:
        """"1.2 ms predicted vs 10 ms budget"."""
        shown = "n/a" if self.value is None else format_quantity(self.value, self.unit)
        return f"{shown} predicted vs {format_quantity(self.budget, self.unit, budget=True)} budget"
