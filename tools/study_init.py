#!/usr/bin/env python3
"""Issue 26: how large is one score step relative to the scores, per layer, at initialisation?

For a model and initialisation, one mini-batch of 128 Fashion-MNIST training images
(seeded), keep conv 0.3 / fc 0.9 (the ``paper`` preset's), no neighbours: prints
lr · mean|∇z| / mean|z| per masked layer, the relative size of the first SGD step on the
scores at the ``paper`` preset's lr 10. The authors' network has no normalisation, so
the gradient scales with the fixed weights' scale and the score scale sets the
denominator: the paper's constants were tuned for their initialisation.

    python tools/study_init.py [--lr 10] [--batches 4]

``--train-steps N`` instead trains one node on all of Fashion-MNIST for N steps of 128
under the ``default`` preset's optimiser (SGD lr 0.1, momentum 0.9, wd 5e-4; keep 0.5) for
each initialisation of ``--model`` and prints the test accuracy: what chose the
``default`` preset's initialisation.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from dslth_edge.data import load_dataset
from dslth_edge.learn.keep_spec import model_layer_kinds, parse_keep
from dslth_edge.learn.masking import masked_layers
from dslth_edge.learn.models import ModelSpec, build_model

CASES = (("paper-cnn", "kaiming-normal", "kaiming-uniform"), ("paper-cnn", "pytorch-default", "pytorch-default"),
         ("authors-cnn", "kaiming-normal", "kaiming-uniform"), ("authors-cnn", "pytorch-default", "pytorch-default"))


def relative_steps(model_name: str, weight_init: str, score_init: str, x: torch.Tensor, y: torch.Tensor,
                   lr: float) -> list[tuple[str, float]]:
    """(layer, lr · mean|g| / mean|z|) of one backward pass on (x, y)."""
    shape = tuple(x.shape[1:])
    kinds, _ = model_layer_kinds(model_name, shape, 10)  # type: ignore[arg-type]
    keep = parse_keep("conv=0.3,fc=0.9").layer_keeps(kinds)
    model = build_model(ModelSpec(model_name, shape, 10, keep=keep, weight_init=weight_init,  # type: ignore[arg-type]
                                  score_init=score_init, score_seed=1))
    F.cross_entropy(model(x), y).backward()
    return [(n, lr * float(layer.scores.grad.abs().mean()) / float(layer.scores.detach().abs().mean()))
            for n, layer in masked_layers(model)]


def train_accuracy(model_name: str, weight_init: str, score_init: str, steps: int, ds: object) -> float:
    """Test accuracy after ``steps`` seeded steps of 128 under the default preset's optimiser."""
    from dslth_edge.learn.algorithm import get_preset
    from dslth_edge.learn.sgd import SGD

    algo = get_preset("default", "local")
    shape = tuple(ds.input_shape)  # type: ignore[attr-defined]
    model = build_model(ModelSpec(model_name, shape, 10, keep=0.5, weight_init=weight_init,  # type: ignore[arg-type]
                                  score_init=score_init, score_seed=1))
    opt = SGD([p for p in model.parameters() if p.requires_grad], lr=algo.lr, momentum=algo.momentum,
              weight_decay=algo.weight_decay)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        idx = np.sort(rng.choice(len(ds.y_train), algo.batch_size, replace=False))  # type: ignore[attr-defined]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(torch.from_numpy(ds.train_batch(idx))), torch.from_numpy(ds.y_train[idx])).backward()  # type: ignore[attr-defined]
        opt.step()
    model.eval()
    with torch.no_grad():
        x, y = torch.from_numpy(ds.x_test[:2000]), torch.from_numpy(ds.y_test[:2000])  # type: ignore[attr-defined]
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", type=float, default=10.0)
    ap.add_argument("--batches", type=int, default=4, help="seeded batches averaged")
    ap.add_argument("--train-steps", type=int, default=0, help="train instead (see above); 0: the step-size table")
    ap.add_argument("--model", default="paper-cnn", help="--train-steps only")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    ds = load_dataset("fashion-mnist")
    if args.train_steps:
        for wi, si in (("kaiming-normal", "kaiming-uniform"), ("pytorch-default", "pytorch-default")):
            acc = train_accuracy(args.model, wi, si, args.train_steps, ds)
            print(f"{args.model}, weights {wi}, scores {si}: {100 * acc:.1f} % after {args.train_steps} steps", flush=True)
        return 0
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(ds.y_train), 128, replace=False)) for _ in range(args.batches)]
    print("| model | weight init | score init | " + " | ".join(["layer 1", "2", "3", "4", "5"]) + " |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for model_name, wi, si in CASES:
        per = None
        for idx in batches:
            x, y = torch.from_numpy(ds.train_batch(idx)), torch.from_numpy(ds.y_train[idx])
            r = [v for _, v in relative_steps(model_name, wi, si, x, y, args.lr)]
            per = r if per is None else [a + b for a, b in zip(per, r)]
        assert per is not None
        print(f"| {model_name} | {wi} | {si} | " + " | ".join(f"{v / len(batches):.4f}" for v in per) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
