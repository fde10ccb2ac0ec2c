#!/usr/bin/env python3
"""Mask-only training vs dense weight training of the same network, side by side.

One node, all classes of Fashion-MNIST, the paper CNN. Both models see the same
mini-batches in the same order; their steps are interleaved (one mask step, one dense
step) so that the time-per-step ratio is measured under the same machine load.

    .venv/bin/python tools/bench_train.py --epochs 3 [--keep 0.5] [--json]

Targets (issue 2): mask step <= 1.2x the dense step; mask accuracy within 3 points.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from dslth_edge.learn.algorithm import get_preset
from dslth_edge.data import batch_indices, load_dataset
from dslth_edge.learn.models import ModelSpec, build_model


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for s in range(0, len(x), batch):
        out = model(torch.from_numpy(x[s : s + batch]))
        correct += int((out.argmax(1) == torch.from_numpy(y[s : s + batch])).sum())
    model.train()
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--model", default="paper-cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--dense-lr", type=float, default=None, help="dense SGD lr (preset's dense_lr by default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ds = load_dataset(args.dataset, args.data_dir)
    algo = get_preset(args.preset, "local", batch_size=args.batch_size, dense_lr=args.dense_lr)
    spec = ModelSpec(args.model, ds.input_shape, ds.num_classes, keep=args.keep)
    masked = build_model(spec)
    dense = build_model(ModelSpec(args.model, ds.input_shape, ds.num_classes, dense=True))
    opt_m = torch.optim.SGD([p for p in masked.parameters() if p.requires_grad], lr=algo.lr,
                            momentum=algo.momentum, weight_decay=algo.weight_decay)
    opt_d = torch.optim.SGD(dense.parameters(), lr=algo.dense_lr, momentum=algo.dense_momentum, weight_decay=algo.weight_decay)
    # cosine decay for both: the same schedule shape, each at its own base rate
    steps = int(args.epochs * len(ds.y_train) / args.batch_size)
    sched = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in (opt_m, opt_d)]
    all_idx = np.arange(len(ds.y_train))
    t_mask = t_dense = 0.0
    curve = []
    for step in range(steps):
        idx = batch_indices(all_idx, args.batch_size, step, args.seed)
        x, y = torch.from_numpy(ds.train_batch(idx)), torch.from_numpy(ds.y_train[idx])
        for model, opt, which in ((masked, opt_m, "mask"), (dense, opt_d, "dense")):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            if which == "mask":
                t_mask += dt
            else:
                t_dense += dt
        for s in sched:
            s.step()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            x_test = ds.x_test  # a property that converts the whole uint8 test set: once per evaluation
            row = {"step": step + 1, "epoch": (step + 1) * args.batch_size / len(ds.y_train),
                   "mask_acc": accuracy(masked, x_test, ds.y_test), "dense_acc": accuracy(dense, x_test, ds.y_test),
                   "step_ratio_so_far": t_mask / t_dense}
            curve.append(row)
            if not args.json:
                print(f"step {row['step']:5d}  epoch {row['epoch']:.2f}  mask {100 * row['mask_acc']:.2f}%  dense {100 * row['dense_acc']:.2f}%  "
                      f"step time mask/dense {row['step_ratio_so_far']:.3f}x", flush=True)
    result = {
        "model": args.model, "dataset": args.dataset, "keep": args.keep, "epochs": args.epochs, "steps": steps,
        "batch_size": args.batch_size, "preset": algo.to_dict(), "threads": torch.get_num_threads(),
        "mask_acc": curve[-1]["mask_acc"], "dense_acc": curve[-1]["dense_acc"],
        "mask_step_ms": 1000 * t_mask / steps, "dense_step_ms": 1000 * t_dense / steps,
        "step_ratio": t_mask / t_dense, "curve": curve,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print()
    print(f"{'':14s}{'test acc':>10s}{'ms/step':>10s}")
    print(f"{'mask (keep ' + str(args.keep) + ')':14s}{100 * result['mask_acc']:9.2f}%{result['mask_step_ms']:10.1f}")
    print(f"{'dense':14s}{100 * result['dense_acc']:9.2f}%{result['dense_step_ms']:10.1f}")
    gap = 100 * (result["dense_acc"] - result["mask_acc"])
    print(f"mask/dense step time: {result['step_ratio']:.3f}x (target <= 1.2x);  accuracy gap: {gap:.2f} points (target <= 3)")


if __name__ == "__main__":
    main()
