"""Judge an exported file against its node's hardware profile: storage, RAM, latency.

``storage``
    the file's size against ``budget.model_storage_mib`` (flash on an MCU);
``ram``
    TFLite Micro targets: the recommended tensor arena (measured with the TFLM
    interpreter, plus its margin; see :mod:`dslth_edge.exporters.tflm`) plus any
    RAM-resident model buffers (none: ``g_model`` is ``const`` and stays in flash).
    Other targets: the runtime's measured peak RSS growth for the model (onnxruntime or
    LiteRT on this machine);
``latency``
    the latency the planner's per-layer cost model predicts on the profile's device
    (:func:`dslth_edge.cost.latency.predict` over the file's own operators).

A violated budget makes the verdict "over"; the export CLI then exits with
:class:`~dslth_edge.errors.OverBudgetError` (code 3) unless ``--allow-over-budget``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslth_edge.cost.units import MIB
from dslth_edge.errors import OverBudgetError
from dslth_edge.util.rss import RssTracker

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.device.profiles import Profile

__all__ = ["BudgetCheck", "BudgetVerdict", "judge_export", "measured_peak_ram", "predicted_latency_ms", "check_lines",
           "raise_if_over", "raise_if_over_dicts"]



@dataclass(frozen=True)
class BudgetCheck:
    """One figure of the exported model against one budget of its profile."""

    name: str  # "storage" | "ram" | "latency"
    value: float | None  # None: could not be determined
    budget: float
    unit: str  # "bytes" | "ms"
    basis: str  # where the figure comes from

    @property
    def ok(self) -> bool | None:
        return None if self.value is None else self.value <= self.budget

    def line(self) -> str:
        """One line with both numbers, e.g. ``storage: 1.40 MiB file > 512.0 KiB budget (...)``."""
        fmt = _ms if self.unit == "ms" else _bytes
        rel = "?" if self.ok is None else ("<=" if self.ok else ">")
        return f"{self.name}: {fmt(self.value)} {rel} {fmt(self.budget)} budget ({self.basis})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetCheck:
        return cls(str(d["name"]), None if d["value"] is None else float(d["value"]), float(d["budget"]), str(d["unit"]),
                   str(d["basis"]))


@dataclass(frozen=True)
class BudgetVerdict:
    """Every budget check of one exported file."""

    profile: str
    device: str
    file: str
    checks: tuple[BudgetCheck, ...]

    @property
    def ok(self) -> bool:
        """False when any check is violated (unknown figures do not fail the export)."""
        return not any(c.ok is False for c in self.checks)

    @property
    def violations(self) -> tuple[BudgetCheck, ...]:
        return tuple(c for c in self.checks if c.ok is False)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "device": self.device, "file": self.file,
                "verdict": "fits" if self.ok else "over budget", "ok": self.ok,
                "checks": [c.to_dict() for c in self.checks]}


def _bytes(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v < 1024 * 1024:
        return f"{v / 1024:.1f} KiB ({int(v):,} B)"
    return f"{v / MIB:.2f} MiB ({int(v):,} B)"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} ms"


def predicted_latency_ms(path: str | Path, profile: Profile) -> tuple[float | None, str]:
    """(latency predicted on the profile's device, basis): the predictor over the file's own operators."""
    from dslth_edge.cost.analysis import analyze_onnx, analyze_tflite
    from dslth_edge.cost.latency import predict

    p = Path(path)
    info = analyze_onnx(p) if p.suffix == ".onnx" else analyze_tflite(p)
    if not info.ops:
        return None, f"no per-op costs for {p.name} ({info.note})"
    pred = predict(list(info.ops), profile)
    return pred.total_ms, f"predicted for {profile.name} from {pred.describe()}"


#: Inferences run after loading for :func:`measured_peak_ram` (the first allocates the
#: runtime's scratch buffers; the rest show that nothing grows per inference).
RAM_RUNS = 6


def measured_peak_ram(path: str | Path) -> tuple[float | None, str]:
    """(peak RSS growth of the file's own runtime on this machine, basis): load it, run it a few times.

    The baseline is taken after a garbage collection, just before the runtime loads the
    file (:class:`dslth_edge.util.rss.RssTracker`); inputs are zeros of the file's own
    input shape (a dynamic dimension: 1).
    """
    import gc

    import numpy as np

    from dslth_edge.exporters.runtime import OnnxRunner, TfliteRunner, open_runner

    gc.collect()
    rss = RssTracker()
    runner = open_runner(path)
    if isinstance(runner, OnnxRunner):
        dims = runner.session.get_inputs()[0].shape
    elif isinstance(runner, TfliteRunner):
        dims = [int(d) for d in runner.inp["shape"]]
    else:  # pragma: no cover - open_runner makes only these two
        raise TypeError(type(runner).__name__)
    x = np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in dims], dtype=np.float32)
    for _ in range(RAM_RUNS):
        runner.run(x)
    ram = rss.growth_bytes()
    return (None if ram is None else float(ram)), f"peak RSS growth of {runner.backend} measured on this machine"


def judge_export(path: str | Path, profile: Profile, *, arena: dict[str, Any] | None = None) -> BudgetVerdict:
    """Check the exported file at ``path`` against ``profile``'s budgets.

    ``arena``: the TFLM arena figures of :func:`dslth_edge.exporters.tflm.measure_arena`
    (``ArenaSize.to_dict()``); given for TFLite Micro targets, whose RAM is the arena.
    """
    p = Path(path)
    size = float(p.stat().st_size)
    b = profile.budget
    storage = BudgetCheck("storage", size, b.model_storage_mib * MIB, "bytes",
                          f"file size; budget.model_storage_mib of {profile.name}")
    if arena is not None:
        ram_value: float | None = float(arena["recommended_bytes"])
        ram_basis = (f"TFLite Micro arena {arena['measured_bytes']:,} B measured + {arena['margin_bytes']:,} B margin; "
                     "model data const in flash (0 B RAM-resident)")
    else:
        ram_value, ram_basis = measured_peak_ram(p)
    ram = BudgetCheck("ram", ram_value, b.model_ram_mib * MIB, "bytes", ram_basis)
    lat_value, lat_basis = predicted_latency_ms(p, profile)
    latency = BudgetCheck("latency", lat_value, b.latency_ms, "ms", lat_basis)
    return BudgetVerdict(profile.name, profile.device, str(p), (storage, ram, latency))


def check_lines(verdict: dict[str, Any]) -> list[str]:
    """One printable line per check of a verdict (its ``to_dict()`` form, as in report.json)."""
    return [f"{'OVER ' if c.ok is False else ''}{c.line()}" for c in map(BudgetCheck.from_dict, verdict["checks"])]


def raise_if_over(verdicts: list[BudgetVerdict]) -> None:
    """Raise :class:`OverBudgetError` (exit 3) naming every violated budget, one per line, with both numbers."""
    raise_if_over_dicts([v.to_dict() for v in verdicts])


def raise_if_over_dicts(verdicts: list[dict[str, Any]]) -> None:
    """:func:`raise_if_over` for verdicts in their report.json form."""
    lines = [f"{v['file']} on {v['profile']}: {c.line()}"
             for v in verdicts for c in map(BudgetCheck.from_dict, v["checks"]) if c.ok is False]
    if lines:
        raise OverBudgetError(f"{len(lines)} budget(s) violated (pass --allow-over-budget to accept):\n" + "\n".join(lines))
