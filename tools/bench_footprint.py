#!/usr/bin/env python3
"""Training footprint: planned vs measured peak memory and time per round, and fleet worker RSS.

Part 1, for every trainable profile and model on Fashion-MNIST: the training plan made
for the device (per-architecture runtime base: micro-batch, predicted peak RSS, the
profile's training RAM budget, predicted time per round on the device) and a real
``dslth-edge train`` process of ``--rounds`` rounds under that profile. That process
plans again with the runtime base it measures at start-up (issue 25): its prediction
("pred", from train's JSON) is compared with its measured peak RSS ("peak": the
kernel's VmHWM from start-up on, recorded by ``train``); "re" counts the times its memory
guard re-planned the micro-batch down. Runs whose process would be identical (same
model, keep ratio and micro-batch) are measured once and the figures shared.

Part 2: the peak RSS of one ``fleet run`` worker process hosting 1, 10, 50 … mcu-cnn
nodes (from the nodes' metrics, which record their process's VmHWM), the memory per
additional node, and rounds per minute.

Figures are printed (a table, or ``--json``), never asserted: this host is x86_64
and stands in for ARM boards. Every figure comes from this run.

    .venv/bin/python tools/bench_footprint.py --rounds 20
    .venv/bin/python tools/bench_footprint.py --profiles raspberry-pi-zero-2w --models paper-cnn --fleet-sizes ""
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "dslth_edge"]
TRAINABLE = ("jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2w", "x86-host")
MIB = 2**20


def _plan(profile: str, model: str) -> dict[str, Any]:
    """The training plan `train` uses (same preset, dataset sizes and mapping)."""
    from dslth_edge.data import load_dataset
    from dslth_edge.device.keep import plan_keep
    from dslth_edge.device.profiles import load_profile
    from dslth_edge.device.training import plan_training, preset_setup

    ds = load_dataset("fashion-mnist")
    p = load_profile(profile)
    tp = plan_training(model, ds.input_shape, ds.num_classes, p,
                       preset_setup(ds.input_shape, train_samples=len(ds.y_train), test_samples=len(ds.y_test),
                                    mapped=ds.memory_mapped))
    keep, _ = plan_keep(model, ds.input_shape, ds.num_classes, profile, "unstructured")
    return {"profile": profile, "model": model, "keep": keep, "micro_batch": tp.micro_batch if tp.accumulation > 1 else 0,
            "fits": tp.fits, "predicted_peak_mib": tp.predicted_ram / MIB, "budget_mib": tp.ram_budget / MIB,
            "predicted_device_s": tp.time_per_round_s, "round_period_s": tp.round_period_s,
            "macs_per_round": tp.macs_per_round}


def _train(profile: str, model: str, rounds: int, work: Path) -> dict[str, Any]:
    out = work / f"{profile}-{model}"
    cmd = CLI + ["train", "--profile", profile, "--model", model, "--dataset", "fashion-mnist", "--rounds", str(rounds),
                 "--eval-every", str(rounds), "--out", str(out), "--overwrite", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    res = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"peak_mib": res["peak_rss_bytes"] / MIB, "s_per_round": res["seconds_per_round"],
            "train_predicted_mib": res["predicted_peak_bytes"] / MIB, "replans": res.get("replans", 0),
            "micro_batch_used": res["micro_batch"], "accuracy": res["accuracy"], "wall_s": wall,
            "warned": "exceeds" in proc.stderr}


def bench_train(profiles: list[str], models: list[str], rounds: int, work: Path) -> list[dict[str, Any]]:
    from dslth_edge.device.profiles import load_profile
    from dslth_edge.device.training import plan_training, preset_setup

    rows, measured = [], {}
    host = load_profile("x86-host")
    for model in models:
        host_plan = plan_training(model, (1, 28, 28), 10, host, preset_setup((1, 28, 28)))
        for profile in profiles:
            row = _plan(profile, model)
            key = (model, row["keep"], row["micro_batch"])
            if key not in measured:
                measured[key] = _train(profile, model, rounds, work) | {"measured_as": profile}
                print(f"# measured {profile} {model}: {measured[key]}", file=sys.stderr, flush=True)
            row.update(measured[key])
            row["predicted_host_s"] = host_plan.time_per_round_s
            row["within_budget"] = row["peak_mib"] <= row["budget_mib"]
            row["prediction_error"] = row["train_predicted_mib"] / row["peak_mib"] - 1
            rows.append(row)
    return rows


def _fleet(nodes: int, rounds: int, work: Path) -> dict[str, Any]:
    out = work / f"fleet-{nodes}"
    cmd = CLI + ["fleet", "run", "--nodes", str(nodes), "--workers", "1", "--model", "mcu-cnn", "--dataset",
                 "fashion-mnist", "--partition", "iid", "--profiles", "raspberry-pi-zero-2w", "--rounds", str(rounds),
                 "--eval-every", str(rounds), "--out", str(out), "--overwrite", "--no-plots", "--json",
                 "--round-deadline", "60"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"nodes": nodes, "error": proc.stderr.strip()[-300:]}
    peaks = []
    for i in range(nodes):
        lines = (out / f"node-{i}" / "metrics.jsonl").read_text().splitlines()
        peaks.append(max(json.loads(line).get("peak_rss_bytes") or 0 for line in lines))
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    seconds = float(summary.get("seconds") or wall)
    return {"nodes": nodes, "worker_peak_mib": max(peaks) / MIB, "seconds": seconds,
            "rounds_per_min": rounds / seconds * 60.0}


def bench_fleet(sizes: list[int], rounds: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        rows.append(_fleet(n, rounds, work))
        print(f"# fleet {rows[-1]}", file=sys.stderr, flush=True)
    ok = [r for r in rows if "worker_peak_mib" in r]
    for a, b in zip(ok, ok[1:]):
        b["mib_per_added_node"] = (b["worker_peak_mib"] - a["worker_peak_mib"]) / (b["nodes"] - a["nodes"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default=",".join(TRAINABLE))
    ap.add_argument("--models", default="paper-cnn,mcu-cnn")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--fleet-sizes", default="1,10,50", help="mcu-cnn nodes in one worker, comma-separated ('' skips)")
    ap.add_argument("--fleet-rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        profiles = [p for p in args.profiles.split(",") if p]
        models = [m for m in args.models.split(",") if m]
        train_rows = bench_train(profiles, models, args.rounds, work) if profiles and models else []
        sizes = [int(s) for s in args.fleet_sizes.split(",") if s.strip()]
        fleet_rows = bench_fleet(sizes, args.fleet_rounds, work) if sizes else []
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "note": "x86_64 host standing in for ARM boards"}
    if args.json:
        print(json.dumps({"host": host, "train": train_rows, "fleet": fleet_rows}, indent=2))
        return
    print(f"host: {host['machine']}, {host['cpus']} CPUs ({host['note']})")
    print(f"{'profile':22s} {'model':9s} {'micro':>5s} {'used':>5s} {'re':>2s} {'budget':>7s} {'dev plan':>8s} "
          f"{'pred':>7s} {'peak':>7s} {'err':>6s} {'ok':>3s} {'dev s/rd':>8s} {'host pred':>9s} {'host meas':>9s}")
    for r in train_rows:
        print(f"{r['profile']:22s} {r['model']:9s} {r['micro_batch'] or 'all':>5} {r['micro_batch_used'] or 'all':>5} "
              f"{r['replans']:2d} {r['budget_mib']:7.0f} {r['predicted_peak_mib']:8.1f} {r['train_predicted_mib']:7.1f} "
              f"{r['peak_mib']:7.1f} {100 * r['prediction_error']:+5.1f}% "
              f"{'yes' if r['within_budget'] else 'NO':>3s} {r['predicted_device_s']:8.3f} {r['predicted_host_s']:9.3f} "
              f"{r['s_per_round']:9.3f}")
    for r in fleet_rows:
        if "error" in r:
            print(f"fleet {r['nodes']:4d} mcu-cnn nodes in one worker: failed: {r['error']}")
            continue
        extra = f", {r['mib_per_added_node']:.2f} MiB per added node" if "mib_per_added_node" in r else ""
        print(f"fleet {r['nodes']:4d} mcu-cnn nodes in one worker: peak {r['worker_peak_mib']:.1f} MiB{extra}, "
              f"{r['rounds_per_min']:.1f} rounds/min")


if __name__ == "__main__":
    main()
