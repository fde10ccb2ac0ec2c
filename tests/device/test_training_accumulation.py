"""Gradient accumulation over micro-batches equals the full batch (models without batch norm)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dslth_edge.data import make_synthetic, partition
from dslth_edge.errors import UsageError
from dslth_edge.fleet.node import Node, NodeConfig
from dslth_edge.learn.algorithm import get_preset
from dslth_edge.learn.models import ModelSpec


def node(micro: int, *, model: str = "paper-cnn", group_lasso: float = 0.0, batch: int = 48) -> Node:
    ds = make_synthetic(seed=1, shape=(1, 16, 16), num_classes=4, train_size=200, test_size=40)
    split = partition(ds, 1, "iid", seed=0)[0]
    algo = replace(get_preset("default", "local"), batch_size=batch, micro_batch=micro, group_lasso=group_lasso)
    cfg = NodeConfig(node_id=0, model=ModelSpec(model, ds.input_shape, ds.num_classes, keep=0.5), algorithm=algo,
                     rounds=3, eval_every=0)
    return Node(cfg, ds, split)


@pytest.mark.parametrize("micro", [1, 7, 16, 47])
@pytest.mark.parametrize("group_lasso", [0.0, 1e-3])
def test_accumulated_gradient_equals_the_full_batch(micro, group_lasso):
    full, acc = node(0, group_lasso=group_lasso), node(micro, group_lasso=group_lasso)
    idx = np.arange(48) * 3 % 200
    full.algorithm.optimizer.zero_grad(set_to_none=True)
    acc.algorithm.optimizer.zero_grad(set_to_none=True)
    loss_full, loss_acc = full._backward_on(idx), acc._backward_on(idx)
    assert loss_acc == pytest.approx(loss_full, rel=1e-5, abs=1e-6)
    for a, b in zip(full.layers, acc.layers):
        assert a.scores.grad is not None and b.scores.grad is not None
        torch.testing.assert_close(b.scores.grad, a.scores.grad, rtol=1e-4, atol=1e-7)


def test_rounds_with_micro_batches_track_the_full_batch_run():
    full, acc = node(0), node(12)
    for _ in range(3):
        r_full, r_acc = full.run_round(), acc.run_round()
        assert r_acc.loss == pytest.approx(r_full.loss, rel=1e-4)
    for a, b in zip(full.layers, acc.layers):
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-6)
    assert full.evaluate() == pytest.approx(acc.evaluate(), rel=1e-4)


def test_evaluation_chunks_do_not_change_the_result():
    n = node(0)
    assert n.evaluate(batch=7) == pytest.approx(n.evaluate(batch=1000), rel=1e-5)


def test_micro_batch_is_validated():
    with pytest.raises(UsageError, match="micro_batch"):
        replace(get_preset("default", "local"), micro_batch=-1)
