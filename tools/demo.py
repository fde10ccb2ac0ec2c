#!/usr/bin/env python3
"""`make demo`: per-device plans, models that really shrink, and a verdict per device.

1. a heterogeneous fleet (two Linux boards, two microcontrollers) plans every node from
   its own profile: the paper CNN fits the Linux boards whole, while the MCUs' budgets
   (latency, flash, RAM) can only be met by removing channels, so their nodes train
   masks that remove channels (group sparsity + progressive drop);
2. the fleet gossips masks over the embedded MQTT broker (Fashion-MNIST, 2 classes per node);
3. every node's final mask is shrunk; a node whose plan shrinks trains the surviving
   weights of its shrunk model on its own data (the deploy-time step: nothing on the
   wire; the gateway runs it for a microcontroller); each is exported as TFLite (int8
   where the profile prefers it) and judged against its profile (file size against
   flash, predicted latency against the budget, RAM) and on its accuracy (the file
   itself on the node's test split: near chance, or far below the masked model, is
   not worth deploying). One table per node, readable in 80 columns; the demo ends
   with both judgements per node.

    .venv/bin/python tools/demo.py [--out DIR] [--rounds 30] [--nodes 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dslth_edge.cli.progress import native_stderr_captured, quiet_third_party, setup_logging

quiet_third_party()  # before torch / LiteRT load: their start-up chatter is not the demo's

from dslth_edge.device.profiles import load_profile  # noqa: E402
from dslth_edge.exporters.pipeline import ExportOptions, export_node  # noqa: E402
from dslth_edge.cost.macs import count_macs  # noqa: E402
from dslth_edge.exporters.shrink import count_params, shrink, shrunk_info, to_plain  # noqa: E402
from dslth_edge.runs.runinfo import load_run  # noqa: E402

PROFILES = "jetson-nano,raspberry-pi-4,nrf52840,stm32h743"
console = Console(width=min(Console().width, 80))


def _n(x: float) -> str:
    """1234567 -> 1.23 M; 12345 -> 12.3 k."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f}"


def _kib(b: float) -> str:
    return f"{b / 1024:.1f} KiB" if b < 1024 * 1024 else f"{b / 2**20:.2f} MiB"


def _ok(ok: bool | None) -> str:
    return {True: "[green]ok[/]", False: "[red]OVER[/]", None: "[yellow]?[/]"}[ok]


def node_table(node_dir: Path) -> tuple[Table, dict[str, Any]]:
    """Export one node and describe it: plan, channels, params/MACs before → after, budgets, verdict."""
    cfg = json.loads((node_dir / "config.json").read_text())
    profile = load_profile(cfg["profile"])
    plan = cfg["extra"].get("plan") or {}
    info = load_run(node_dir, load_data=False)
    shape = info.input_shape
    plain = to_plain(info.model)
    shrunk = shrink(info.model, shape, channel_multiple=profile.compute.channel_multiple)  # as exported: zero-padded
    widths = list(shrunk_info(shrunk).widths().values())
    full = [int(layer.weight.shape[0]) for _, layer in info.model.named_modules() if hasattr(layer, "channel_alive")]
    quantize = "int8" if profile.export.dtype == "int8" else "none"
    with native_stderr_captured():  # absl/XNNPACK lines from the converter and interpreter
        report = export_node(ExportOptions(run=str(node_dir), format="tflite", quantize=quantize, compare_dense=False))
    checks = {c["name"]: c for c in (report.budget or {}).get("checks", [])}
    acc = next((r.accuracy for r in reversed(report.rows) if r.accuracy is not None), None)
    fits = (report.budget or {}).get("ok")
    worth = report.worth or {}
    step = report.deploy_step or {}
    if worth.get("accuracy") is not None:  # the written file's own row (the int8 row is in every report)
        acc = worth["accuracy"]

    kind = f"{Path(report.file).suffix.lstrip('.')}, {'int8' if quantize == 'int8' else 'fp32'}"
    t = Table(title=f"node {info.node_id} · {profile.name} ({kind})",
              show_header=False, width=78, title_justify="left")
    t.add_column("what", style="bold", width=10)
    t.add_column("figure", overflow="fold")
    t.add_row("plan", f"{plan.get('route', '?')}: {plan.get('note', cfg['extra'].get('keep_source', ''))}")
    keeps = info.mask_file.meta.get("keep") or []
    t.add_row("keep", f"{keeps[0]:.2f} of the weights in kept channels" if keeps else "-")
    t.add_row("channels", f"{'/'.join(map(str, full))} → {'/'.join(map(str, widths))}")
    t.add_row("params", f"{_n(count_params(plain))} → {_n(count_params(shrunk))}")
    t.add_row("MACs", f"{_n(count_macs(plain, shape))} → {_n(count_macs(shrunk, shape))}")
    st, lat, ram = checks.get("storage"), checks.get("latency"), checks.get("ram")
    if st:
        t.add_row("file", f"{Path(report.file).name}: {_kib(st['value'])} vs {_kib(st['budget'])} flash  {_ok(st['ok'])}")
    if lat:
        v = "n/a" if lat["value"] is None else f"{lat['value']:.4g} ms"
        t.add_row("latency", f"{v} predicted vs {lat['budget']:g} ms budget  {_ok(lat['ok'])}")
    if ram:
        v = "n/a" if ram["value"] is None else _kib(ram["value"])
        t.add_row("RAM", f"{v} vs {_kib(ram['budget'])} budget  {_ok(ram['ok'])}")
    if step.get("steps"):
        t.add_row("deploy", f"{step['kind']}: {step['steps']} steps of {step['batch_size']} on the node's data, "
                            f"{step['where']} ({step['seconds_here']:.1f} s here)")
    masked = worth.get("masked")
    t.add_row("accuracy", "-" if acc is None else f"{100 * acc:.1f}% (exported file, node's test split)"
              + ("" if masked is None else f"; masked model {100 * masked:.1f}%"))
    t.add_row("verdict", {True: "[green]fits its device[/]", False: "[red]over budget[/]", None: "[yellow]unknown[/]"}[fits])
    return t, {"node": info.node_id, "profile": profile.name, "fits": fits, "widths": widths, "accuracy": acc,
               "worth": worth.get("worth"), "worth_line": worth.get("line", "accuracy not judged")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--profiles", default=PROFILES)
    args = ap.parse_args()
    setup_logging()
    run = Path(args.out)

    console.rule("[bold]1-2. per-device plans; masks gossiped over the embedded MQTT broker")
    cmd = [sys.executable, "-m", "dslth_edge", "fleet", "run", "--nodes", str(args.nodes), "--profiles", args.profiles,
           "--dataset", "fashion-mnist", "--partition", "classes:2", "--model", "paper-cnn",
           "--rounds", str(args.rounds), "--batch-size", str(args.batch_size), "--eval-every", "10",
           "--out", str(run)]
    console.print("$ " + " ".join(cmd[1:]).replace("-m dslth_edge", "dslth-edge"), style="dim")
    if subprocess.run(cmd).returncode != 0:
        return 1

    console.rule("[bold]3. shrink, export, judge: one table per node")
    results = []
    for node_dir in sorted(run.glob("node-*"), key=lambda p: int(p.name.split("-")[1])):
        table, row = node_table(node_dir)
        console.print(table)
        results.append(row)
    fit = sum(1 for r in results if r["fits"])
    worth = sum(1 for r in results if r["worth"])
    console.rule("[bold]judgement per node")
    for r in results:
        fits = {True: "fits its device", False: "OVER BUDGET", None: "budget unknown"}[r["fits"]]
        console.print(f"node {r['node']} ({r['profile']}): {fits}; {r['worth_line']}", markup=False)
    console.print(f"{fit}/{len(results)} nodes fit every budget of their device · {worth}/{len(results)} files worth "
                  f"deploying · run directory: {run}")
    if fit != len(results):
        return 3
    return 0 if worth == len(results) else 6


if __name__ == "__main__":
    sys.exit(main())
