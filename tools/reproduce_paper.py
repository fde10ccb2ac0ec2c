#!/usr/bin/env python3
"""Reproduce the paper's experiments (E1-E3) with ``dslth_edge.fleet.simulate``.

Fashion-MNIST by default; CIFAR-10 when ``--data-dir`` points at cifar-10-batches-py.
Every run writes its own run directory under ``--out`` (skipped when its summary.json
exists, so an interrupted reproduction continues), then the tables are rendered to
``--out/results.md`` and ``--out/results.json``.

Full setting (the paper's): ``--rounds 400 --model paper-cnn --batch-size 128 --seeds 0,1,2``.
A reduced setting for a small machine: ``--model mcu-cnn --rounds 40 --batch-size 32``.

    E1  DSLTH verification: mask training (mce-pl) at keep 0.1/0.3/0.5 vs weight training (dpsgd)
    E2  communication: mce-pl, consensus, local, dpsgd, dpsgd-ft; accuracy vs bytes, bytes to target
    E3  heterogeneity: paper splits 3/4/5 classes; scarce data; ring vs paper graph vs full
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dslth_edge.data import load_dataset
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import simulate
from dslth_edge.fleet.summary import bytes_to_reach

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"
ALGOS = ("mce-pl", "consensus", "local", "dpsgd", "dpsgd-ft")


def runs_for(exp: str, base: FleetOptions, args: argparse.Namespace) -> list[tuple[str, str, FleetOptions]]:
    """(table row, column, options) of every run of one experiment (seed added later)."""
    paper4 = str(PAPER / "train_counts_4.txt")
    out: list[tuple[str, str, FleetOptions]] = []
    if exp == "E1":
        for keep in (0.1, 0.3, 0.5):
            out.append((f"mask (mce-pl) keep {keep}", "E1", replace(base, algorithm="mce-pl", keep=keep)))
        out.append(("weights (dpsgd)", "E1", replace(base, algorithm="dpsgd")))
    elif exp == "E2":
        for setting, scarce in (("full data", None), (f"scarce {args.scarce}", args.scarce)):
            for algo in args.algorithms:
                out.append((algo, setting, replace(base, algorithm=algo, scarce=scarce)))
    elif exp == "E3":
        for k in (3, 4, 5):
            for algo in ("mce-pl", "local"):
                out.append((algo, f"paper-{k}", replace(base, algorithm=algo, partition_file=str(PAPER / f"train_counts_{k}.txt"))))
        for topo, name in (("ring", "ring"), (str(PAPER / "adjacency_20.txt"), "paper graph"), ("full", "full")):
            out.append(("mce-pl", f"topology {name}", replace(base, algorithm="mce-pl", topology=topo, partition_file=paper4)))
    return out


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * statistics.fmean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default="E1,E2,E3")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 batches directory (default: Fashion-MNIST)")
    ap.add_argument("--model", default="paper-cnn")
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--momentum", type=float, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--scarce", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--profiles", default="jetson-nano,raspberry-pi-4,nrf52840")
    ap.add_argument("--algorithms", default=",".join(ALGOS))
    ap.add_argument("--target", type=float, default=None, help="accuracy for 'bytes to reach' (default: 90%% of local's final)")
    ap.add_argument("--out", default="runs/reproduce")
    ap.add_argument("--cached-only", action="store_true", help="render tables from finished runs only; run nothing")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: many small models in lock-step; more threads only spin on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.algorithms = tuple(a for a in args.algorithms.split(",") if a)
    dataset = "cifar10" if args.data_dir else "fashion-mnist"
    ds = load_dataset(dataset, args.data_dir)
    over = {k: v for k, v in {"batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum}.items() if v is not None}
    base = FleetOptions(nodes=args.nodes, topology=str(PAPER / "adjacency_20.txt"), dataset=dataset, data_dir=args.data_dir,
                        partition_file=str(PAPER / "train_counts_4.txt"), profiles=tuple(args.profiles.split(",")),
                        model=args.model, rounds=args.rounds, eval_every=args.eval_every, eval_samples=args.eval_samples,
                        preset=args.preset, overrides=over)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "args": vars(args), "experiments": {}}
    for exp in args.experiments.split(","):
        rows = []
        for row, col, opts in runs_for(exp, base, args):
            per_seed = []
            for seed in seeds:
                tag = f"{exp}/{col}/{row}/seed{seed}".replace(" ", "_").replace(".", "p")
                o = replace(opts, seed=seed, out=str(root / tag))
                path = Path(o.out) / "summary.json"
                if path.exists():
                    summary = json.loads(path.read_text())
                elif args.cached_only:
                    continue
                else:
                    t0 = time.time()
                    summary = simulate(o, dataset=ds, write_plots=(seed == seeds[0]))
                    print(f"{tag}: acc {summary['final']['acc_mean']:.4f} in {time.time() - t0:.0f} s", flush=True)
                per_seed.append(summary)
            if not per_seed:
                continue
            rows.append({"seeds": [s["options"]["seed"] for s in per_seed], "row": row, "col": col, "runs": [s["run_dir"] for s in per_seed],
                         "acc": [s["final"]["acc_mean"] for s in per_seed],
                         "bytes_per_round": statistics.fmean(s["final"]["bytes_per_round"] for s in per_seed),
                         "bytes_reference_per_round": statistics.fmean(s["final"]["bytes_reference_per_round"] for s in per_seed),
                         "curve": [[(r["round"], r.get("acc_mean"), r["bytes_cum"]) for r in s["per_round"] if "acc_mean" in r] for s in per_seed]})
        results["experiments"][exp] = rows
        (root / "results.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps(results, indent=1))
    plot_curves(results, root)
    (root / "results.md").write_text(render(results, args))
    print(render(results, args))
    return 0


def plot_curves(results: dict[str, Any], root: Path) -> None:
    """<exp>_<setting>.png: mean accuracy against cumulative encoded bytes, one line per run (first seed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for exp, rows in results["experiments"].items():
        for col in dict.fromkeys(r["col"] for r in rows):
            fig, ax = plt.subplots(figsize=(6, 4))
            for r in (r for r in rows if r["col"] == col):
                curve = r["curve"][0]
                ax.plot([max(b, 1) for _, _, b in curve], [100 * a for _, a, _ in curve], marker=".", label=r["row"])
            ax.set(xscale="log", xlabel="cumulative bytes sent, encoded (all nodes; local: 1)", ylabel="mean accuracy (%)",
                   title=f"{exp} {col}")
            ax.grid(alpha=0.3), ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(root / f"{exp}_{col.replace(' ', '_')}.png", dpi=100)
            plt.close(fig)


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown tables: final accuracy mean ± std over seeds, bytes per round, curves."""
    lines = [f"Command: `{results['command']}`", ""]
    for exp, rows in results["experiments"].items():
        lines += [f"### {exp}", "", "| setting | run | seeds | final acc % (mean ± std over seeds) | bytes/round encoded | bytes/round reference | bytes to target |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        locals_ = {r["col"]: statistics.fmean(r["acc"]) for r in rows if r["row"] == "local"}
        for r in rows:
            target = args.target or (0.9 * locals_[r["col"]] if r["col"] in locals_ else None)
            btt = []
            if target:
                for curve in r["curve"]:
                    hit = bytes_to_reach([{"acc_mean": a, "bytes_cum": b} for _, a, b in curve], target)
                    btt.append(hit)
            btt_s = "-" if not btt else ("not reached" if any(b is None for b in btt) else f"{statistics.fmean(btt) / 1e6:.2f} MB (target {100 * target:.1f}%)")
            lines.append(f"| {r['col']} | {r['row']} | {','.join(map(str, r['seeds']))} | {mean_std(r['acc'])} | {r['bytes_per_round'] / 1e3:.1f} kB | "
                         f"{r['bytes_reference_per_round'] / 1e3:.1f} kB | {btt_s} |")
        if exp == "E1":
            lines += ["", "Convergence (mean accuracy % over nodes at evaluated rounds, first seed):", ""]
            for r in rows:
                pts = ", ".join(f"{k + 1}: {100 * a:.1f}" for k, a, _ in r["curve"][0])
                lines.append(f"- {r['row']}: {pts}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
