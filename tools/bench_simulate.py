#!/usr/bin/env python3
"""Cost of one simulated fleet round against plain dense SGD steps of the same model.

Target: one simulated 20-node round of the paper CNN (mce-pl, 1 local step, batch 64)
costs <= 1.2x the time of 20 plain dense SGD steps of that model in the same process.
Both sides use the same inputs (Fashion-MNIST, or --synthetic), the same thread count
and are timed after a warm-up. The simulated round includes everything a node does:
aggregation shifts, top-k, the step, frame encoding, decoding every neighbour's frame,
m̄, fine-tuning (no evaluation: --eval-every 0).

    python tools/bench_simulate.py [--nodes 20] [--model paper-cnn] [--rounds 3] [--threads 1]

With ``--workers W`` it instead times whole ``simulate`` runs of the fleet with 1 and
with W worker processes (one torch thread each; the masks are the same): the median
round time of each, rounds 2 .. R+1 (the first is warm-up, the last evaluates), and
their ratio. Target: 20 mcu-cnn nodes, W = 2: <= 0.6. On a machine shared with other
work the figures are noisy: run it more than once.

    python tools/bench_simulate.py --model mcu-cnn --workers 2 [--rounds 6] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dslth_edge.data import load_dataset, make_synthetic
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.learn.models import ModelSpec, build_model
from dslth_edge.transport.memory import MemoryHub

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--model", default="paper-cnn")
    ap.add_argument("--algorithm", default="mce-pl")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=float, default=None)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="compare simulate with 1 and with this many worker processes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.workers:
        return compare_workers(args)
    ds = make_synthetic(shape=(1, 28, 28)) if args.synthetic else load_dataset("fashion-mnist")
    paper = args.nodes == 20 and (PAPER / "adjacency_20.txt").exists()
    opts = FleetOptions(nodes=args.nodes, topology=str(PAPER / "adjacency_20.txt") if paper else "ring",
                        dataset="synthetic" if args.synthetic else "fashion-mnist",
                        partition_file=str(PAPER / "train_counts_4.txt") if paper else None,
                        partition="iid", profiles=("jetson-nano", "raspberry-pi-4", "nrf52840"),
                        algorithm=args.algorithm, model=args.model, keep=args.keep, rounds=10_000, eval_every=0,
                        overrides={"batch_size": args.batch_size})
    plan = plan_fleet(opts, ds)
    hub = MemoryHub()
    nodes = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), None) for i in range(args.nodes)]

    def fleet_round() -> tuple[float, float]:
        t0 = time.perf_counter()
        for n in nodes:
            n.begin_round()
        t1 = time.perf_counter()
        for n in nodes:
            n.finish_round()
        return t1 - t0, time.perf_counter() - t1

    dense = build_model(ModelSpec(args.model, ds.input_shape, ds.num_classes, dense=True))
    opt = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batches = [torch.from_numpy(ds.train_batch(np.arange(i * args.batch_size, (i + 1) * args.batch_size))) for i in range(args.nodes)]
    labels = [torch.from_numpy(ds.y_train[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(args.nodes)]

    def dense_steps() -> float:
        t0 = time.perf_counter()
        for x, y in zip(batches, labels):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(dense(x), y).backward()
            opt.step()
        return time.perf_counter() - t0

    fleet_round()  # warm-up
    dense_steps()
    # interleaved pairs: on a shared machine the load drifts; each pair sees about the same
    halves, denses = [], []
    for _ in range(args.rounds):
        halves.append(fleet_round())
        denses.append(dense_steps())
    ratios = sorted((a + b) / d for (a, b), d in zip(halves, denses))
    t_round = statistics.median(a + b for a, b in halves)
    t_begin = statistics.median(a for a, _ in halves)
    t_dense = statistics.median(denses)
    res = {"nodes": args.nodes, "model": args.model, "algorithm": args.algorithm, "batch_size": args.batch_size,
           "threads": args.threads, "keeps": sorted(set(plan.keeps)), "round_s": t_round, "begin_half_s": t_begin,
           "finish_half_s": t_round - t_begin, "dense_steps_s": t_dense, "ratio": statistics.median(ratios), "pair_ratios": ratios, "target": 1.2}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.nodes}-node {args.algorithm} round of {args.model} (batch {args.batch_size}, {args.threads} thread(s)): "
              f"{t_round:.3f} s (begin {t_begin:.3f} s, finish {t_round - t_begin:.3f} s); "
              f"{args.nodes} dense SGD steps: {t_dense:.3f} s; median pair ratio {res['ratio']:.2f} "
              f"(pairs {', '.join(f'{r:.2f}' for r in ratios)}; target <= 1.2)")
    return 0


def compare_workers(args: argparse.Namespace) -> int:
    """Median round time of simulate with 1 worker and with ``args.workers``, and the ratio."""
    import resource
    import tempfile

    from dslth_edge.fleet.simulator import simulate

    def cpu_s() -> float:  # this process and its finished children (the workers), user + system
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    paper = args.nodes == 20 and (PAPER / "adjacency_20.txt").exists()
    ds = make_synthetic(shape=(1, 28, 28)) if args.synthetic else load_dataset("fashion-mnist")
    medians, cpu = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in (1, args.workers):
            stamps: list[float] = []
            opts = FleetOptions(nodes=args.nodes, topology=str(PAPER / "adjacency_20.txt") if paper else "ring",
                                dataset="synthetic" if args.synthetic else "fashion-mnist",
                                partition_file=str(PAPER / "train_counts_4.txt") if paper else None, partition="iid",
                                algorithm=args.algorithm, model=args.model, keep=args.keep or 0.5, rounds=args.rounds + 2,
                                eval_every=0, out=f"{tmp}/w{w}", overrides={"batch_size": args.batch_size})
            t0, c0 = time.perf_counter(), cpu_s()
            simulate(opts, dataset=ds if args.synthetic else None, write_plots=False, workers=w,
                     worker_threads=args.threads, checkpoint_every=10_000,
                     on_round=lambda k, _r, stamps=stamps: stamps.append(time.perf_counter()))
            rounds = [b - a for a, b in itertools.pairwise(stamps)][:args.rounds]  # rounds 2 .. R+1
            medians[w] = statistics.median(rounds)
            cpu[w] = cpu_s() - c0  # CPU of the whole run (start-up included): what the run costs the machine
            print(f"{w} worker(s): median round {medians[w]:.3f} s (rounds {', '.join(f'{r:.2f}' for r in rounds)}); "
                  f"whole run {time.perf_counter() - t0:.1f} s wall, {cpu[w]:.1f} s CPU", flush=True)
    ratio = medians[args.workers] / medians[1]
    res = {"nodes": args.nodes, "model": args.model, "batch_size": args.batch_size, "workers": args.workers,
           "threads_per_process": args.threads, "round_s": medians, "run_cpu_s": cpu, "ratio": ratio, "target": 0.6}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.nodes}-node {args.model} round, {args.workers} workers / 1 worker: {ratio:.2f} (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
