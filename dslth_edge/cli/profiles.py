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

__all__ = ["profiles", "parse_shape"]

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


@click.group(name="profiles")
def profiles() -> None:
    """Hardware profiles of edge devices, and keep-ratio plans from their budgets."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every profile as JSON.")
def list_command(as_json: bool) -> None:
    """List the built-in hardware profiles."""
    items = list_profiles()
    if as_json:
        _echo_json([p.to_dict() for p in items])
        return
    from rich.table import Table

    table = Table(title="hardware profiles")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("device")
    table.add_column("cpu")
    table.add_column("RAM", justify="right")
    table.add_column("fp32 GMAC/s", justify="right")
    table.add_column("int8 GMAC/s", justify="right")
    table.add_column("can train")
    table.add_column("latency budget", justify="right")
    table.add_column("export")
    for p in items:
        table.add_row(
            p.name,
            p.device,
            f"{p.cpu.arch} {p.cpu.cores}× {p.cpu.core} @ {p.cpu.clock_mhz:g} MHz",
            _mib(p.memory.ram_mib),
            f"{p.compute.effective_fp32_gmacs:g}",
            f"{p.compute.effective_int8_gmacs:g}",
            "yes" if p.can_train else "no",
            f"{p.budget.latency_ms:g} ms",
            f"{p.export.format} {p.export.dtype}",
        )
    _console().print(table)


def _show_profile(p: Profile) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"{p.name} — {p.device}", markup=False)
    console.print(f"source: {p.source_path}", markup=False)
    data = p.to_dict()
    for section, fields in SCHEMA.items():
        values = data if not section else data[section]
        title = "profile" if not section else section
        if values is None:
            console.print(f"[{title}] (none)", markup=False)
            continue
        table = Table(title=title, show_header=True, title_justify="left")
        table.add_column("key", no_wrap=True)
        table.add_column("value")
        table.add_column("unit")
        table.add_column("meaning")
        for spec in fields:
            table.add_row(spec.key, _shown(values[spec.key]), spec.unit, spec.doc)
        console.print(table)
    table = Table(title="sources", title_justify="left", show_lines=True)
    for spec in SOURCE_FIELDS:
        table.add_column(spec.key, overflow="fold")
    for s in p.sources:
        table.add_row(s.title, s.url, s.supports)
    console.print(table)


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def show_command(name: str, as_json: bool) -> None:
    """Show every field of profile NAME (a built-in name or a path to a .toml file)."""
    p = load_profile(name)
    if as_json:
        _echo_json(p.to_dict())
        return
    _show_profile(p)


def _model_costs(model: str, shape: tuple[int, int, int], classes: int) -> list[Any]:
    models = importlib.import_module("dslth_edge.learn.models")  # lazy: pulls in torch
    names = tuple(models.MODEL_NAMES)
    if model not in names:
        raise UsageError(f"unknown model {model!r}; available models: {', '.join(names)}")
    net = models.build_model(model, shape, classes)
    return list(models.layer_costs(net, shape))


@profiles.command("plan")
@click.argument("name")
@click.option("--model", "model", required=True, help="Model from the zoo, e.g. paper-cnn.")
@click.option("--dataset-shape", default="1x28x28", show_default=True, help="Input shape CxHxW.")
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True)
@click.option(
    "--granularity",
    type=click.Choice(["channel", "unstructured"]),
    default="channel",
    show_default=True,
    help="channel: pruned channels are removed from the export; unstructured: the export stays dense.",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default=None,
    help="Export dtype (default: the profile's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(
    name: str,
    model: str,
    dataset_shape: str,
    classes: int,
    granularity: str,
    dtype: str | None,
    as_json: bool,
) -> None:
    """Plan the keep ratio of MODEL on profile NAME: the largest that fits every budget."""
    from dslth_edge.device.planner import format_quantity, plan

    shape = parse_shape(dataset_shape)
    p = load_profile(name)
    costs = _model_costs(model, shape, classes)
    result = plan(costs, p, granularity=granularity, dtype=dtype)
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
    for c in result.checks:
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
