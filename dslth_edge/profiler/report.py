"""Present profile results: rich tables, the --json document, the latency histogram.

Only presentation lives here; every figure is computed in :mod:`.measure`,
:mod:`.verdict` and :mod:`.predictor`. The JSON document is specified in
docs/profile-json.md (``SCHEMA_ID`` names its version).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dslth_edge.profiler.measure import ProfileResult
from dslth_edge.profiler.verdict import Verdict

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from dslth_edge.profiler.calibrate import Calibration

__all__ = [
    "SCHEMA_ID",
    "MAX_JSON_SAMPLES",
    "COMPARED_METRICS",
    "result_to_dict",
    "report_to_dict",
    "comparison",
    "render_result",
    "render_comparison",
    "render_per_op",
    "render_verdict",
    "render_calibration",
    "write_histogram",
    "fmt_ms",
    "fmt_bytes",
]

SCHEMA_ID = "dslth-edge/profile/1"
#: Above this many measured inferences, ``samples_ms`` is null in the JSON (size).
MAX_JSON_SAMPLES = 100_000


def fmt_ms(v: float | None) -> str:
    """A duration given in ms, in the unit that keeps 3-4 significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if v >= 1000:
        return f"{v / 1000:.3f} s"
    if v >= 1:
        return f"{v:.3f} ms"
    return f"{v * 1000:.1f} µs"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(v) >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v:.0f} B"


def _count(v: int | None) -> str:
    if v is None:
        return "n/a"
    if v >= 1e9:
        return f"{v / 1e9:.2f} G"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return str(v)


# --------------------------------------------------------------------------- JSON


def result_to_dict(result: ProfileResult, verdict: Verdict | None = None) -> dict[str, Any]:
    """One entry of ``models`` in the JSON document."""
    lat = result.latency
    return {
        "model": result.model.to_dict(),
        "backend": result.backend.to_dict(),
        "settings": dict(result.options.to_dict(), input_shapes={k: list(v) for k, v in result.input_shapes.items()}),
        "timing_ms": {
            "init": result.init_ms,
            "first_inference": result.first_inference_ms,
            "warmup_mean": result.warmup_mean_ms,
            "warmup_count": len(result.warmup_ms),
        },
        "latency_ms": lat.to_dict(),
        "throughput": {"inferences_per_s": _finite(result.inferences_per_s), "samples_per_s": _finite(result.samples_per_s)},
        "memory": result.memory.to_dict(),
        "per_op": None if result.per_op is None else result.per_op.to_dict(),
        "verdict": None if verdict is None else verdict.to_dict(),
        "samples_ms": list(result.samples_ms) if lat.count <= MAX_JSON_SAMPLES else None,
    }


def _finite(v: float | None) -> float | None:
    """JSON has no Infinity / NaN: such a figure is reported as null."""
    return v if v is not None and math.isfinite(v) else None


#: (key in the comparison, label, getter); ratios are other / reference.
COMPARED_METRICS: tuple[tuple[str, str, Callable[[ProfileResult], float | None]], ...] = (
    ("size_bytes", "file size", lambda r: float(r.model.size_bytes)),
    ("params", "params", lambda r: None if r.model.params is None else float(r.model.params)),
    ("macs", "MACs", lambda r: None if r.model.macs is None else float(r.model.macs)),
    ("init_ms", "init", lambda r: r.init_ms),
    ("first_inference_ms", "first inference", lambda r: r.first_inference_ms),
    ("warmup_mean_ms", "warm-up mean", lambda r: r.warmup_mean_ms),
    ("min_ms", "min", lambda r: r.latency.min),
    ("mean_ms", "mean", lambda r: r.latency.mean),
    ("std_ms", "std", lambda r: r.latency.std),
    ("p50_ms", "p50", lambda r: r.latency.p50),
    ("p90_ms", "p90", lambda r: r.latency.p90),
    ("p95_ms", "p95", lambda r: r.latency.p95),
    ("p99_ms", "p99", lambda r: r.latency.p99),
    ("max_ms", "max", lambda r: r.latency.max),
    ("inferences_per_s", "throughput", lambda r: r.inferences_per_s),
    ("init_peak_growth_bytes", "peak RSS growth, init", lambda r: _opt(r.memory.init_peak_growth_bytes)),
    ("overall_peak_growth_bytes", "peak RSS growth, overall", lambda r: _opt(r.memory.overall_peak_growth_bytes)),
)


def _opt(v: int | None) -> float | None:
    return None if v is None else float(v)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return b / a


def comparison(results: Sequence[ProfileResult]) -> dict[str, Any] | None:
    """Ratios of every compared metric of results[1:] to results[0] (None for one result)."""
    if len(results) < 2:
        return None
    ref = results[0]
    rows = []
    for other in results[1:]:
        rows.append({
            "path": other.model.path,
            "ratios": {key: _finite(_ratio(get(ref), get(other))) for key, _, get in COMPARED_METRICS},
        })
    return {"reference": ref.model.path, "models": rows}


def report_to_dict(
    results: Sequence[ProfileResult],
    verdicts: Sequence[Verdict | None] | None = None,
    *,
    version: str = "",
) -> dict[str, Any]:
    """The whole --json document (docs/profile-json.md)."""
    verdicts = list(verdicts) if verdicts is not None else [None] * len(results)
    first_verdict = next((v for v in verdicts if v is not None), None)
    return {
        "schema": SCHEMA_ID,
        "tool": {"name": "dslth-edge", "version": version},
        "host": results[0].host.to_dict() if results else None,
        "profile": None if first_verdict is None else {
            "name": first_verdict.profile,
            "device": first_verdict.device,
            "this_machine": first_verdict.this_machine,
        },
        "models": [result_to_dict(r, v) for r, v in zip(results, verdicts)],
        "comparison": comparison(results),
    }


# --------------------------------------------------------------------------- tables


def _table(title: str) -> Any:
    from rich.table import Table

    return Table(title=title, title_justify="left", show_header=True)


def _summary_rows(r: ProfileResult) -> list[tuple[str, str]]:
    b, m, lat = r.backend, r.model, r.latency
    delegate = b.delegate or "none"
    threads = f"{b.threads}" + (f" (inter-op {b.inter_op_threads})" if b.inter_op_threads else "")
    warm = f"{fmt_ms(r.warmup_mean_ms)} over {len(r.warmup_ms)}" if r.warmup_ms else "none"
    per_s, samples_s = r.inferences_per_s, r.samples_per_s
    tput = f"{per_s:,.1f} inferences/s" + (f" ({samples_s:,.1f} samples/s)" if r.options.batch > 1 else "")
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r.input_shapes.items())
    return [
        ("model", f"{m.path} ({m.format}, {m.dtype or 'dtype n/a'})"),
        ("file size", fmt_bytes(m.size_bytes)),
        ("params / MACs", f"{_count(m.params)} / {_count(m.macs)}" + ("" if m.macs is not None else f"  ({m.note})")),
        ("backend", f"{b.name} {b.version} ({b.package})"),
        ("threads", threads),
        ("delegate", delegate + (f"; providers {', '.join(b.providers)}" if b.providers else "")),
        ("input", f"{shapes}  (batch {r.options.batch})"),
        ("init", fmt_ms(r.init_ms)),
        ("first inference", fmt_ms(r.first_inference_ms)),
        ("warm-up mean", warm),
        ("count", str(lat.count)),
        ("min / max", f"{fmt_ms(lat.min)} / {fmt_ms(lat.max)}"),
        ("mean ± std", f"{fmt_ms(lat.mean)} ± {fmt_ms(lat.std)}"),
        ("p50 / p90", f"{fmt_ms(lat.p50)} / {fmt_ms(lat.p90)}"),
        ("p95 / p99", f"{fmt_ms(lat.p95)} / {fmt_ms(lat.p99)}"),
        ("throughput", tput),
        ("peak RSS growth", f"init {fmt_bytes(r.memory.init_peak_growth_bytes)}, "
                            f"overall {fmt_bytes(r.memory.overall_peak_growth_bytes)}  ({r.memory.method})"),
    ]


def render_result(r: ProfileResult, console: Console) -> None:
    """The LiteRT-benchmark-style summary of one model."""
    table = _table(f"profile of {os.path.basename(r.model.path)} — measured on this machine ({r.host.describe()})")
    table.add_column("", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    for k, v in _summary_rows(r):
        table.add_row(k, v)
    console.print(table)
    for note in r.backend.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def _fmt_metric(key: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    if key.endswith("_ms"):
        return fmt_ms(v)
    if key.endswith("bytes"):
        return fmt_bytes(v)
    if key == "inferences_per_s":
        return f"{v:,.1f}/s"
    return _count(int(v))


def render_comparison(results: Sequence[ProfileResult], console: Console) -> None:
    """The same statistics side by side, with each model's ratio to the first."""
    table = _table(f"comparison (ratios to {os.path.basename(results[0].model.path)}) — measured on this machine")
    table.add_column("metric", no_wrap=True, style="bold")
    for i, r in enumerate(results):
        table.add_column(f"{os.path.basename(r.model.path)}\n{r.backend.name}, {r.backend.threads} thr", justify="right")
        if i > 0:
            table.add_column("ratio", justify="right")
    for key, label, get in COMPARED_METRICS:
        ref = get(results[0])
        row = [label, _fmt_metric(key, ref)]
        for r in results[1:]:
            v = get(r)
            ratio = _ratio(ref, v)
            row += [_fmt_metric(key, v), "n/a" if ratio is None else f"{ratio:.2f}×"]
        table.add_row(*row)
    console.print(table)


def render_per_op(r: ProfileResult, console: Console, *, top: int = 25) -> None:
    """The per-operator table (or the reason there is none)."""
    p = r.per_op
    if p is None:
        return
    name = os.path.basename(r.model.path)
    if not p.available:
        console.print(f"per-op ({name}): not available from {p.source}: {p.note}", markup=False, highlight=False)
        return
    table = _table(f"per-op time of {name} — {p.source}, mean of {p.runs} runs")
    for col, just in (("#", "right"), ("op", "left"), ("type", "left"), ("time", "right"), ("share", "right"), ("cumulative", "right")):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    cum = 0.0
    for i, op in enumerate(p.ops[:top]):
        cum += op.share
        table.add_row(str(i + 1), op.name, op.op_type, fmt_ms(op.mean_us / 1000), f"{100 * op.share:.1f}%", f"{100 * cum:.1f}%")
    console.print(table)
    rest = len(p.ops) - top
    tail = f"; {rest} more ops not shown" if rest > 0 else ""
    run = f", whole run {fmt_ms(p.run_us / 1000)} as the profiler saw it (profiling adds overhead)" if p.run_us else ""
    console.print(f"operators total {fmt_ms(p.total_op_us / 1000)} per inference{run}{tail}", markup=False, highlight=False)
    if p.note:
        console.print(f"note: {p.note}", markup=False, highlight=False)


def render_verdict(v: Verdict, r: ProfileResult, console: Console) -> None:
    """Verdict lines: one per check, each saying where its figure comes from."""
    def show(c_unit: str, x: float | None) -> str:
        return fmt_ms(x) if c_unit == "ms" else fmt_bytes(x)

    where = "this machine" if v.this_machine else f"{v.device}"
    console.print(
        f"verdict for profile {v.profile} ({where}), {os.path.basename(r.model.path)}; "
        f"measured on this machine: {v.measured_on}",
        markup=False, highlight=False,
    )
    for c in v.checks:
        mark = "info" if not c.decides else ("n/a " if c.ok is None else ("ok  " if c.ok else "OVER"))
        usage = "" if c.usage is None else f" ({100 * c.usage:.0f}% of budget)"
        counted = "" if c.decides else " [not counted]"
        console.print(
            f"  {mark} {c.name}: {show(c.unit, c.value)} vs budget {show(c.unit, c.budget)}{usage} — {c.basis}{counted}",
            markup=False, highlight=False,
        )
    outcome = {True: "fits the budgets", False: "does NOT fit the budgets", None: "undecided (a figure is n/a)"}[v.ok]
    console.print(f"  => {outcome}", markup=False, highlight=False)
    if r.options.batch > 1:
        console.print(f"  note: latencies are per inference of a batch of {r.options.batch}", markup=False, highlight=False)


def render_calibration(cal: Calibration, path: str | None, console: Console) -> None:
    """The fitted constants and every calibration point."""
    table = _table(f"calibration: {cal.backend}, {cal.threads} thread(s), {cal.passes} passes, {cal.seconds:.1f} s")
    for col in ("network", "MACs", "weight layers", "measured", "predicted", "error"):
        table.add_column(col, justify="left" if col == "network" else "right")
    for p in cal.points:
        pred = cal.schema.predict_s(p.ops)
        table.add_row(
            p.name, _count(p.macs), str(p.weight_layers), fmt_ms(p.measured_s * 1e3), fmt_ms(pred * 1e3),
            f"{100 * (pred - p.measured_s) / p.measured_s:+.0f}%",
        )
    console.print(table)
    for fit in (cal.schema, cal.full):
        bw = f", {fit.mem_bytes_per_s / 1e9:.1f} GB/s" if fit.mem_bytes_per_s else ""
        inf = f", {fit.per_inference_s * 1e6:.2f} µs/inference" if fit.per_inference_s else ""
        console.print(
            f"{fit.form} fit: {fit.macs_per_s / 1e9:.2f} GMAC/s{bw}, {fit.per_op_overhead_s * 1e6:.2f} µs per weight layer{inf}, "
            f"channel multiple {fit.channel_multiple}; median |error| {100 * fit.median_rel_error:.1f}%",
            markup=False, highlight=False,
        )
    if path:
        console.print(f"wrote {path} (use it with --profile {path})", markup=False, highlight=False)


# --------------------------------------------------------------------------- histogram


def write_histogram(results: Sequence[ProfileResult], path: str | os.PathLike[str]) -> str:
    """A PNG histogram of the measured latencies (matplotlib, imported only here)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed on a device
        import matplotlib.pyplot as plt
    except ImportError:
        from dslth_edge.errors import UsageError

        raise UsageError("--histogram needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        for r in results:
            label = f"{os.path.basename(r.model.path)} ({r.backend.name}, {r.backend.threads} thr)"
            ax.hist(r.samples_ms, bins=min(60, max(10, len(r.samples_ms) // 5)), alpha=0.55, label=label)
            ax.axvline(r.latency.p50, linestyle="--", linewidth=1, color="black")
            ax.axvline(r.latency.p95, linestyle=":", linewidth=1, color="black")
        ax.set_xlabel("latency per inference (ms) — dashed p50, dotted p95")
        ax.set_ylabel("inferences")
        ax.set_title(f"measured on {results[0].host.cpu} (host {results[0].host.hostname})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = os.fspath(path)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
