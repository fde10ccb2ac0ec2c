"""Nodes of one process share one copy of the identical fixed weights."""

from __future__ import annotations

from pathlib import Path

import torch

from dslth_edge.data import make_synthetic
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.learn.masking import masked_layers, weights_fingerprint

DATA = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=120, test_size=40, noise=2.0)


def _plan(tmp: Path, **kw: object):
    base = dict(nodes=3, topology="ring", dataset="synthetic", partition="iid", profiles=("x86-host",),
                model="mcu-cnn", keep=0.5, rounds=2, eval_every=1, out=str(tmp), overrides={"batch_size": 16})
    base.update(kw)
    return plan_fleet(FleetOptions(**base), DATA)  # type: ignore[arg-type]


def _storages(node) -> list[int]:
    return [layer.weight.untyped_storage().data_ptr() for _, layer in masked_layers(node.model)]


def test_nodes_share_fixed_weights_and_still_learn_their_own_scores(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    nodes = [make_node(plan, i, None, None) for i in range(3)]
    assert _storages(nodes[0]) == _storages(nodes[1]) == _storages(nodes[2])
    assert all(weights_fingerprint(n.model) == n.fingerprint for n in nodes)
    before = [layer.weight.clone() for _, layer in masked_layers(nodes[1].model)]
    nodes[0].run_round()
    scores = [[layer.scores.detach().clone() for layer in n.layers] for n in nodes]
    assert any(not torch.equal(a, b) for a, b in zip(scores[0], scores[1]))  # scores are per node
    for w, (_, layer) in zip(before, masked_layers(nodes[1].model)):
        assert torch.equal(w, layer.weight)  # training one node leaves the fixed weights alone
    # buffers stay buffers: a checkpoint still leaves the fixed weights out
    fixed = {f"{name}.weight" for name, _ in masked_layers(nodes[1].model)}
    assert fixed <= set(nodes[1].model.state_dict()) and fixed.isdisjoint(nodes[1].state()["model"])


def test_other_weights_and_dense_baselines_are_not_shared(tmp_path: Path) -> None:
    a = make_node(_plan(tmp_path / "a", weight_seed=1), 0, None, None)
    b = make_node(_plan(tmp_path / "b", weight_seed=2), 0, None, None)
    assert a.fingerprint != b.fingerprint
    assert set(_storages(a)).isdisjoint(_storages(b))
    plan = _plan(tmp_path / "d", algorithm="dpsgd")
    d0, d1 = make_node(plan, 0, None, None), make_node(plan, 1, None, None)
    assert set(_storages(d0)).isdisjoint(_storages(d1))  # dense weights train: each node its own


def test_frame_memo_capacity_is_given_back_when_an_exchange_goes(tmp_path: Path) -> None:
    import gc

    plan = _plan(tmp_path, fleet_id="capacity")
    nodes = [make_node(plan, i, None, None) for i in range(3)]
    memo = nodes[0].exchange.memo
    assert memo is not None and memo.capacity == 6  # two frames per node of the process
    del nodes[2]
    gc.collect()
    assert memo.capacity == 4
