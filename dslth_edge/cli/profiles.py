"""``dslth-edge profiles``: list, show and plan hardware profiles.

Thin: parse the options, call :mod:`dslth_edge.device.profiles` / :mod:`dslth_edge.device.planner`,
print a rich table or JSON. Errors are raised as :class:`~dslth_edge.errors.DslthError`
subclasses (ProfileError, UsageError); the top-level ``main()`` turns them into
"error: <message>" and the error's exit code.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import click

from dslth_edge.errors import UsageError
from dslth_edge.device.profiles import DTYPES, SCHEMA, SOURCE_FIELDS, Profile, list_profiles, load_profile

__all__ = ["profiles", "parse_shape", "latency_basis_line"]

_SHAPE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_shape(text: str) -> tuple[int, int, int]:
    """"1x28x28" -> (1, 28, 28) (channels, height, width)."""
    m = _SHAPE_RE.match(text)
    if not m or any(int(g) <= 0 for g in m.groups()):
        raise UsageError(f"--dataset-shape: expected CxHxW with positive sizes, like 1x28x28; got {text!r}")
    c, h, w = (int(g) for g in m.groups())
    return c, h, w


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _mib(value: float) -> str:
    if value >= 1024:
        return f"{value / 1024:g} GiB"
    if value >= 1:
        return f"{value:g} MiB"
    return f"{value * 1024:g} KiB"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _table(title: str, *columns: str | tuple[str, str]) -> Any:
    """A table whose cells fold (never "…") and whose text is never read as rich markup.

    ``columns``: names, or (name, justify). Cells go in through :func:`_row`.
    """
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  show_edge=False)
    for i, col in enumerate(columns):
        name, justify = (col, "left") if isinstance(col, str) else col
        # the first column (a name) stays whole; the others fold inside words only when they must
        table.add_column(name, justify=justify, overflow="fold", no_wrap=i == 0)  # type: ignore[arg-type]
    return table


def _row(table: Any, *cells: Any) -> None:
    from rich.text import Text

    texts = [str(c) for c in cells]
    for col, text in zip(table.columns, texts):  # short values (numbers, units) are never folded
        if len(text) <= 12:
            col.min_width = max(col.min_width or 0, len(text))
    table.add_row(*(Text(t) for t in texts))


@click.group(name="profiles")
def profiles() -> None:
    """Hardware profiles of edge devices, and keep-ratio plans from their budgets."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every profile as JSON.")
def list_command(as_json: bool) -> None:
    """List the built-in hardware profiles."""
    items = list_profiles()
    if as_json:
        _echo_json([dict(p.to_dict(), latency_basis=p.latency_basis) for p in items])
        return
    console = _console()
    # the device and CPU descriptions only where they fit (`profiles show NAME` has everything)
    wide = console.width >= 150
    cols: list[str | tuple[str, str]] = ["name"] + (["device", "cpu"] if wide else [])
    cols += [("RAM", "right"), ("fp32", "right"), ("int8", "right"), "figures", "train", ("latency", "right"), "export"]
    table = _table("hardware profiles (fp32, int8: effective GMAC/s; figures: cited from sources or measured by "
                   "a calibration; latency: the budget)", *cols)
    for p in items:
        desc = [p.device, f"{p.cpu.arch} {p.cpu.cores}× {p.cpu.core} @ {p.cpu.clock_mhz:g} MHz"] if wide else []
        _row(table, p.name, *desc, _mib(p.memory.ram_mib), f"{p.compute.effective_fp32_gmacs:g}",
             f"{p.compute.effective_int8_gmacs:g}", p.latency_basis, "yes" if p.can_train else "no",
             f"{p.budget.latency_ms:g} ms",
             f"{p.export.format}/{p.export.dtype}")
    console.print(table)
    if not wide:
        console.print("devices and CPUs: `dslth-edge profiles show NAME` (or a terminal of 150+ columns)",
                      markup=False)


def _show_profile(p: Profile) -> None:

    console = _console()
    console.print(f"{p.name} — {p.device}", markup=False)
    console.print(f"source: {p.source_path}", markup=False)
    console.print(f"latency figures: {latency_basis_line(p)}", markup=False)
    data = p.to_dict()
    for section, fields in SCHEMA.items():
        values = data if not section else data[section]
        title = "profile" if not section else section
        if values is None:
            console.print(f"[{title}] (none)", markup=False)
            continue
        table = _table(title, "key", "value", "unit", "meaning")
        for spec in fields:
            _row(table, spec.key, _shown(values[spec.key]), spec.unit, spec.doc)
        console.print(table)
    table = _table("sources", *(spec.key for spec in SOURCE_FIELDS))
    table.show_lines = True
    for s in p.sources:
        _row(table, s.title, s.url, s.supports)
    console.print(table)
    if p.calibration is not None:
        table = _table(f"calibration ({p.calibration.source_path})", "runtime", "version", ("threads", "right"),
                       ("channel multiple", "right"), ("networks", "right"), ("fit |error|", "right"))
        for key, fit in sorted(p.calibration.runtimes.items()):
            _row(table, key, fit.version, str(fit.threads), str(fit.channel_multiple), str(fit.points),
                 f"{100 * fit.median_rel_error:.1f}%")
        t = p.calibration.training
        if t is not None:
            _row(table, "training (torch)", t.version, str(t.threads), "", str(t.points), f"{100 * t.median_rel_error:.1f}%")
        console.print(table)


def latency_basis_line(p: Profile) -> str:
    """Whether a profile's latency figures are measured (a calibration file) or cited (its sources)."""
    if p.calibration is None:
        return (f"cited — published figures ([compute]: {p.compute.backend}), each with its source below; "
                "no calibration file (`dslth-edge profile --calibrate` on the device writes one)")
    runtimes = ", ".join(sorted(p.calibration.runtimes))
    other = ("; other runtimes fall back to the cited [compute] figures"
             if len(p.calibration.runtimes) < 3 else "")
    return f"measured — {p.calibration.describe()} (runtimes: {runtimes}){other}"


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def show_command(name: str, as_json: bool) -> None:
    """Show every field of profile NAME (a built-in name or a path to a .toml file)."""
    p = load_profile(name)
    if as_json:
        _echo_json(dict(p.to_dict(), latency_basis=p.latency_basis))
        return
    _show_profile(p)


def _model_costs(model: str, shape: tuple[int, int, int], classes: int) -> list[Any]:
    models = importlib.import_module("dslth_edge.learn.models")  # lazy: pulls in torch
    names = tuple(models.MODEL_NAMES)
    if model not in names:
        raise UsageError(f"unknown model {model!r}; available models: {', '.join(names)}")
    net = models.build_model(model, shape, classes)
    keep = importlib.import_module("dslth_edge.device.keep")  # residual-coupled layers keep their width, as in plan_node
    return list(keep.plan_costs(net, shape))


@profiles.command("plan")
@click.argument("name", required=False)
@click.option("--all", "all_profiles", is_flag=True, help="Every built-in profile in one table (the default without NAME).")
@click.option("--model", "model", required=True, help="Model from the zoo, e.g. paper-cnn.")
@click.option("--dataset-shape", default="1x28x28", show_default=True, help="Input shape CxHxW.")
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True)
@click.option(
    "--granularity",
    type=click.Choice(["channel", "unstructured"]),
    default=None,
    help="channel: pruned channels are removed from the export; unstructured: the export stays dense "
    "(default: channel for one profile; for every profile, what `train` does: unstructured, channels where needed).",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default=None,
    help="Export dtype (default: the profile's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(
    name: str | None,
    all_profiles: bool,
    model: str,
    dataset_shape: str,
    classes: int,
    granularity: str | None,
    dtype: str | None,
    as_json: bool,
) -> None:
    """Plan the keep ratio of MODEL on profile NAME: the largest that fits every budget.

    Without NAME (or with --all): one row per built-in profile, with what `train` would
    train there (keep ratio, granularity, the binding budget, in train's words).
    """
    from dslth_edge.device.planner import format_quantity, plan

    shape = parse_shape(dataset_shape)
    if name is None or all_profiles:
        if name is not None:
            raise UsageError("give a profile NAME or --all, not both")
        _plan_all(model, shape, classes, granularity or "unstructured", as_json)
        return
    granularity = granularity or "channel"
    p = load_profile(name)
    costs = _model_costs(model, shape, classes)
    result = plan(costs, p, granularity=granularity, dtype=dtype)
    if p.can_train:  # training memory and time per round against their budgets (device/training.py)
        from dslth_edge.device.training import attach_training, preset_setup

        result = attach_training(result, model, shape, classes, p, preset_setup(shape))
    if as_json:
        data = {"model": model, "input_shape": list(shape), "classes": classes}
        data.update(result.to_dict())
        _echo_json(data)
        return

    from rich.table import Table

    console = _console()
    console.print(
        f"{p.name} ({p.device}) · {model} on {'x'.join(map(str, shape))}, {classes} classes · "
        f"{result.granularity} · {result.dtype} → {result.export_format}",
        markup=False,
    )
    click.echo(result.explain())
    table = Table(title="budgets at the chosen keep ratio", title_justify="left")
    table.add_column("budget", no_wrap=True)
    table.add_column("predicted", justify="right")
    table.add_column("budget", justify="right")
    table.add_column("used", justify="right")
    table.add_column("fits")
    if result.keep_ratio < 1.0:
        table.add_column(f"at keep {result.keep_ratio + result.step:.2f}", justify="right")
    for c in result.checks + (result.training.checks if result.training is not None else ()):
        row = [
            c.name + (" (binding)" if c.name == result.binding else ""),
            format_quantity(c.predicted, c.unit),
            format_quantity(c.budget, c.unit, budget=True),
            f"{100 * c.usage:.1f}%",
            "yes" if c.ok else "no",
        ]
        if result.keep_ratio < 1.0 and c.next_predicted is not None:
            row.append(format_quantity(c.next_predicted, c.unit) + ("" if c.next_ok else " ✗"))
        table.add_row(*row)
    console.print(table)
    layers = Table(title="per-layer keep ratios", title_justify="left")
    for col in ("layer", "mask keep", "out kept", "in kept", "params", "MACs"):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for layer in result.layers:
        layers.add_row(
            layer.name,
            f"{layer.mask_density:.2f}",
            f"{layer.keep_out:.2f}",
            f"{layer.keep_in:.2f}",
            f"{layer.params:,.0f}",
            f"{layer.macs:,.0f}",
        )
    console.print(layers)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if result.training is not None:
        console.print(result.training.explain(), markup=False)
        for note in result.training.notes:
            console.print(f"note: {note}", markup=False)


_MASKS = {"unstructured": "w", "progressive": "w+ch", "aligned": "w+ch", "channel": "ch", "fixed": "--keep"}


def plan_rows(model: str, shape: tuple[int, int, int], classes: int, granularity: str) -> list[dict[str, Any]]:
    """One row per built-in profile: the plan `train` would use there (device.keep.plan_node), or why none fits."""
    from dslth_edge.device.keep import plan_node
    from dslth_edge.device.planner import PlanError

    rows = []
    for prof in list_profiles():
        row: dict[str, Any] = {"profile": prof.name, "can_train": prof.can_train, "fits": False}
        try:
            node = plan_node(model, shape, classes, prof.name, granularity)
        except PlanError as exc:
            row["why"] = str(exc)
            rows.append(row)
            continue
        row.update(fits=True, keep=node.keep, route=node.route, granularity=node.granularity, note=node.note)
        result = node.plan
        if result is not None:
            row["binding"] = result.binding
            row["plan_keep"] = result.keep_ratio
            if node.route == "unstructured" and result.keep_ratio > node.keep:
                row["binding"] = "cap"  # the learning cap, not a budget (the note says so)
            row["dtype"] = result.dtype
            row["export_format"] = result.export_format
            for c in result.checks:
                row[c.name] = {"predicted": c.predicted, "budget": c.budget, "unit": c.unit, "ok": c.ok}
            training = getattr(result, "training", None)
            if training is None and prof.can_train:  # a device that trains itself: will training fit its RAM?
                from dslth_edge.device.training import attach_training

                training = attach_training(result, model, shape, classes, prof).training
            if training is not None:
                row["training_ram"] = {"predicted": training.predicted_ram, "budget": training.ram_budget,
                                       "unit": "B", "ok": training.fits}
        rows.append(row)
    return rows


def _plan_all(model: str, shape: tuple[int, int, int], classes: int, granularity: str, as_json: bool) -> None:
    from dslth_edge.device.planner import format_quantity

    _model_costs(model, shape, classes)  # an unknown model: one clear error before the loop
    rows = plan_rows(model, shape, classes, granularity)
    if as_json:
        _echo_json({"model": model, "input_shape": list(shape), "classes": classes, "granularity": granularity,
                    "profiles": rows})
        return

    def q(row: dict[str, Any], key: str) -> str:
        c = row.get(key)
        if not c:
            return "-"
        v, unit = c["predicted"], c["unit"]
        text = f"{v:.3g} ms" if unit == "ms" else format_quantity(v, unit)
        if unit == "B":  # compact: K/M/G are KiB/MiB/GiB (the legend says so)
            for scale, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
                if v >= scale:
                    text = f"{v / scale:.3g}{suffix}"
                    break
        return text + ("" if c["ok"] else "!")

    console = _console()
    has_training = any("training_ram" in r for r in rows)
    cols: list[str | tuple[str, str]] = ["profile", ("keep", "right"), "masks", "binds", ("latency", "right"),
                                         ("RAM", "right"), ("flash", "right")]
    if has_training:
        cols.append(("train", "right"))
    host = "host" if has_training else None
    table = _table(f"{model} {'x'.join(map(str, shape))}, {classes} classes: what `train` uses per profile "
                   "(keep: no = does not fit)", *cols)
    for r in rows:
        label = r["profile"] + ("" if r["can_train"] else "*")
        if not r["fits"]:
            cells = [label, "no", "-", "-", "-", "-", "-"] + (["-"] if has_training else [])
        else:
            cells = [label, f"{r['keep']:.2f}", _MASKS.get(r["route"], r["route"]),
                     "-" if r.get("binding") in (None, "none") else r["binding"], q(r, "latency"), q(r, "ram"),
                     q(r, "storage")] + ([q(r, "training_ram") if r["can_train"] else host] if has_training else [])
        _row(table, *cells)
    console.print(table)
    console.print("masks: w = weight-level mask (dense export); w+ch = w, and channels removed as it trains; "
                  "ch = channel masks. binds: the budget that sets the keep (cap: masks denser than 0.5 stop "
                  "learning). RAM: the exported model's; train: RAM to train on the device (host: trained elsewhere). "
                  "K/M/G: KiB/MiB/GiB. ! = over budget", markup=False)
    if any(not r["can_train"] for r in rows):
        console.print("* cannot train itself: a host trains its mask (train --for-device) and deploys the export",
                      markup=False)
    for r in rows:
        line = r["note"] if r["fits"] else r["why"]
        console.print(f"{r['profile']}: {line}", markup=False, highlight=False)
