#!/usr/bin/env python3
"""Where the period-2 mask oscillation of MCE-PL comes from, and what damping it costs.

Runs one small fleet (lock-step, in memory, the simulator's nodes) under several
variants and records every node's published mask every round:

    flip      fraction of weights whose mask bit changed since the last round
    back      fraction that changed since the last round *back* to their value two
              rounds ago (m_k = m_{k-2} != m_{k-1}): the period-2 part of the flips
    acc       final mean personalized accuracy (each node's full test split)
    bytes     mean encoded bytes per node per round (the wire codec, which also tries
              deltas against the round before the base)

Variants: ``full`` (mce-pl: aggregation shift (1) + fine-tuning (5)), ``shift-only``
(consensus: no (5)), ``ft-only`` (β = 0: no shift), ``local`` (neither), and damped
mce-pl: ``self-A`` (m̄ mixes in the node's own mask with weight A), ``ft-half``
(η_ft halved) and ``beta-half`` (β halved). Flip figures average rounds ``--skip``..R (the first rounds move most).

    python tools/study_oscillation.py [--preset default] [--nodes 8] [--rounds 40] [--model mcu-cnn]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dslth_edge.data import load_dataset, make_synthetic
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.learn.algorithm import get_preset
from dslth_edge.transport.memory import MemoryHub

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"


def variants(preset: str) -> dict[str, tuple[str, dict[str, object]]]:
    """name -> (algorithm, overrides of the preset)."""
    ft = get_preset(preset).ft_lr
    return {
        "full": ("mce-pl", {}),
        "shift-only": ("consensus", {}),
        "ft-only": ("mce-pl", {"beta": 0.0}),
        "local": ("local", {}),
        "self-0.5": ("mce-pl", {"self_weight": 0.5}),
        "self-0.25": ("mce-pl", {"self_weight": 0.25}),
        "ft-half": ("mce-pl", {"ft_lr": ft / 2}),
        "beta-half": ("mce-pl", {"beta": get_preset(preset).beta / 2}),
    }


def run_variant(base: FleetOptions, algorithm: str, overrides: dict[str, object], ds: object, skip: int) -> dict[str, float]:
    opts = replace(base, algorithm=algorithm, overrides={**base.overrides, **overrides})
    plan = plan_fleet(opts, ds)  # type: ignore[arg-type]
    hub = MemoryHub()
    nodes = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), None) for i in range(opts.nodes)]
    history: list[list[np.ndarray]] = []  # per round: every node's mask, flattened
    flips, backs, sent = [], [], []
    for k in range(opts.rounds):
        for n in nodes:
            n.begin_round()
        masks = [np.concatenate([m.numpy().ravel() for m in n.current_masks()]) for n in nodes]  # as published
        results = [n.finish_round() for n in nodes]
        sent.append(statistics.fmean(r.bytes_sent for r in results))
        history.append(masks)
        if k >= max(2, skip):
            prev, prev2 = history[-2], history[-3]
            flips.append(statistics.fmean(float(np.mean(m != p)) for m, p in zip(masks, prev)))
            backs.append(statistics.fmean(float(np.mean((m != p) & (m == q))) for m, p, q in zip(masks, prev, prev2)))
            history.pop(0)
    accs = [n.evaluate()[0] for n in nodes]
    return {"flip": statistics.fmean(flips), "back": statistics.fmean(backs), "acc": statistics.fmean(accs),
            "acc_std": statistics.pstdev(accs), "bytes_per_node_round": statistics.fmean(sent[skip:])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10, help="rounds left out of the flip and byte means")
    ap.add_argument("--model", default="mcu-cnn")
    ap.add_argument("--keep", default="0.5")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--partition", default="classes:4")
    ap.add_argument("--topology", default="kregular:4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = make_synthetic(shape=(1, 28, 28)) if args.synthetic else load_dataset("fashion-mnist")
    base = FleetOptions(nodes=args.nodes, topology=args.topology, dataset="synthetic" if args.synthetic else "fashion-mnist",
                        partition=args.partition, model=args.model, keep=args.keep, rounds=args.rounds, eval_every=0,
                        seed=args.seed, preset=args.preset, overrides={"batch_size": args.batch_size})
    chosen = variants(args.preset)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    out = {}
    print(f"preset {args.preset}, {args.nodes} nodes ({args.topology}, {args.partition}), {args.model} keep {args.keep}, "
          f"batch {args.batch_size}, {args.rounds} rounds, seed {args.seed}; flips over rounds {args.skip}..{args.rounds}")
    print(f"{'variant':<11} {'flip %':>7} {'back %':>7} {'acc %':>13} {'B/node/round':>13}")
    for name, (algo, over) in chosen.items():
        t0 = time.perf_counter()
        r = run_variant(base, algo, over, ds, args.skip)
        out[name] = r
        print(f"{name:<11} {100 * r['flip']:7.2f} {100 * r['back']:7.2f} {100 * r['acc']:6.2f} ± {100 * r['acc_std']:4.1f} "
              f"{r['bytes_per_node_round']:13.0f}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        print(json.dumps({"args": vars(args), "variants": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
