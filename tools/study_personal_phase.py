#!/usr/bin/env python3
"""Issue 26, item 5: can a final personal phase close mce-pl's gap to dpsgd-ft?

dpsgd-ft's lead over mce-pl (``default`` preset, mcu-cnn, 400 rounds: 87.0 against 83.1 %)
comes at the end: its last fifth of the rounds is local fine-tuning of each node's own
weights, evaluated on the node's own classes. mce-pl's mask-level analogue
(:func:`dslth_edge.learn.algorithm.in_personal_phase`, ``ft_rounds`` > 0): the last
rounds send nothing and train the scores locally from the collaborative mask. This runs
the three side by side on the paper's graph and paper-4 split (resumable, cached like
tools/reproduce_paper.py) and prints final and last-evaluation accuracies.

    python tools/study_personal_phase.py --rounds 100 --seeds 0 --out runs/personal
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from dslth_edge.data import load_dataset
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import resume_round, simulate

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mcu-cnn")
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--ft-fraction", type=float, default=0.2, help="personal phase: this fraction of the rounds (dpsgd-ft's)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--paper-dir", default=str(PAPER))
    ap.add_argument("--out", default="runs/personal")
    ap.add_argument("--no-dense", action="store_true", help="mce-pl with and without the phase only (no dpsgd-ft)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist")
    paper = Path(args.paper_dir)
    ft = max(1, round(args.ft_fraction * args.rounds))
    base = FleetOptions(nodes=20, topology=str(paper / "adjacency_20.txt"), partition_file=str(paper / "train_counts_4.txt"),
                        profiles=("jetson-nano", "raspberry-pi-4", "nrf52840"), model=args.model, rounds=args.rounds,
                        eval_every=args.eval_every, preset="default")
    runs = {"mce-pl": replace(base, algorithm="mce-pl"),
            f"mce-pl + personal phase ({ft} rounds)": replace(base, algorithm="mce-pl", overrides={"ft_rounds": ft}),
            "dpsgd-ft": replace(base, algorithm="dpsgd-ft")}
    if args.no_dense:
        del runs["dpsgd-ft"]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for label, o in runs.items():
            tag = label.split(" ")[0] + ("-phase" if "phase" in label else "")
            o = replace(o, seed=seed, out=str(Path(args.out) / f"{tag}/seed{seed}"))
            s = simulate(o, dataset=ds, resume=True, checkpoint_every=10, write_plots=False)
            evals = [r["acc_mean"] for r in s["per_round"] if "acc_mean" in r]
            rows.append({"run": label, "seed": seed, "rounds": o.rounds, "final": s["final"]["acc_mean"],
                         "last5": sum(evals[-5:]) / len(evals[-5:]), "curve": evals})
            print(f"{label} seed {seed}: final {100 * rows[-1]['final']:.2f} % (resumed from {resume_round(o.out)})", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(f"| {r['run']} | {r['seed']} | {r['rounds']} | {100 * r['final']:.2f} | {100 * r['last5']:.2f} | "
              + " / ".join(f"{100 * a:.1f}" for a in r["curve"]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
