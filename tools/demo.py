#!/usr/bin/env python3
"""`make demo`: the whole job on embedded defaults, from training to a verdict per device.

1. an 8-node heterogeneous fleet gossips masks over the embedded MQTT broker
   (Fashion-MNIST, non-IID: 2 classes per node) and prints the fleet summary;
2. every node's final mask is shrunk and exported as TFLite (int8 for the profiles
   whose preferred dtype is int8, the MCUs), verified against torch, with a size /
   accuracy report;
3. every exported file is profiled here and judged against its node's profile:
   measured on this machine, predicted for the device, against the device's budgets.

    .venv/bin/python tools/demo.py [--out DIR] [--rounds 60] [--nodes 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dslth_edge.exporters.pipeline import ExportOptions, export_node
from dslth_edge.profiler.measure import ProfileOptions, profile_model
from dslth_edge.profiler.verdict import judge
from dslth_edge.device.profiles import load_profile

PROFILES = "jetson-nano,raspberry-pi-4,esp32-s3,stm32h743"
console = Console()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--profiles", default=PROFILES)
    args = ap.parse_args()
    run = Path(args.out)

    console.rule("[bold]1. fleet: masks gossiped over the embedded MQTT broker")
    cmd = [sys.executable, "-m", "dslth_edge", "fleet", "run", "--nodes", str(args.nodes), "--profiles", args.profiles,
           "--dataset", "fashion-mnist", "--partition", "classes:2", "--model", "mcu-cnn", "--granularity", "unstructured",
           "--rounds", str(args.rounds), "--eval-every", "20", "--out", str(run)]
    console.print("$ " + " ".join(cmd[1:]).replace("-m dslth_edge", "dslth-edge"), style="dim")
    if subprocess.run(cmd).returncode != 0:
        return 1

    console.rule("[bold]2. shrink + export every node's model (TFLite; int8 where the profile prefers it)")
    verdicts = Table(title="3. on-device verdicts (measured here with LiteRT, predicted for the device)")
    for col in ("node", "profile", "file", "size", "accuracy", "p95 here", "predicted there", "budget", "verdict"):
        verdicts.add_column(col, justify="right" if col not in ("profile", "file", "verdict") else "left")
    for node_dir in sorted(run.glob("node-*"), key=lambda p: int(p.name.split("-")[1])):
        cfg = json.loads((node_dir / "config.json").read_text())
        profile = load_profile(cfg["profile"])
        quantize = "int8" if profile.export.dtype == "int8" else "none"
        report = export_node(ExportOptions(run=str(node_dir), format="tflite", quantize=quantize, compare_dense=False))
        header, rows = report.table()
        t = Table(title=f"{node_dir.name} ({profile.name}): {Path(report.file).name}, parity {report.parity.get('max_abs_diff', float('nan')):.1e}")
        for h in header:
            t.add_column(h)
        for r in rows:
            t.add_row(*r)
        console.print(t)
        result = profile_model(report.file, ProfileOptions(runs=50, threads=1))
        v = judge(result, profile)
        acc = next((r.accuracy for r in reversed(report.rows) if r.accuracy is not None), None)
        pred = next((c.value for c in v.checks if c.name == "predicted latency"), None)
        verdicts.add_row(
            node_dir.name.split("-")[1], profile.name, Path(report.file).name, f"{Path(report.file).stat().st_size / 1024:.1f} KiB",
            "-" if acc is None else f"{100 * acc:.1f}%", f"{result.latency.p95:.3f} ms",
            "-" if pred is None else f"{pred:.3f} ms", f"{profile.budget.latency_ms:g} ms",
            {True: "[green]fits[/]", False: "[red]does not fit[/]", None: "[yellow]unknown[/]"}[v.ok],
        )
    console.print(verdicts)
    console.print(f"run directory: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
