"""The evaluation mask is the algorithm's: TopK of the final scores shifted by the current m̄
(the authors' train_MCE.py:245-247), in evaluation, in mask.npz and in the next forward pass;
and the ``paper`` preset starts round 0 from the authors' random m̄."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dslth_edge.data import make_synthetic
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.learn.algorithm import aggregation_shift, topk_mask
from dslth_edge.learn.algorithms.masked import MaskAlgorithm, round0_mbar
from dslth_edge.runs.rundir import load_mask
from dslth_edge.transport.memory import MemoryHub

TINY = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=240, test_size=80, noise=2.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fleet(tmp: Path, rounds: int, **kw: Any) -> list[Any]:
    base: dict[str, Any] = {"nodes": 4, "topology": "ring", "dataset": "synthetic", "partition": "classes:2",
                            "model": "mcu-cnn", "rounds": rounds, "eval_every": 0, "eval_samples": 10, "keep": 0.3,
                            "profiles": ("jetson-nano",), "overrides": {"batch_size": 8, "lr": 1.0}, "out": str(tmp)}
    base.update(kw)
    plan = plan_fleet(FleetOptions(**base), TINY)
    hub = MemoryHub()
    return [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), tmp) for i in range(4)]


def _lockstep(nodes: list[Any], rounds: int) -> None:
    for node in nodes:
        node.start()
    for _ in range(rounds):
        for node in nodes:
            node.begin_round()
        for node in nodes:
            node.finish_round()


def test_eval_mask_is_topk_of_the_final_scores_shifted_by_the_current_mbar(tmp_path: Path) -> None:
    nodes = _fleet(tmp_path, rounds=3)
    _lockstep(nodes, 3)
    for node in nodes:
        algorithm = node.algorithm
        assert isinstance(algorithm, MaskAlgorithm) and algorithm.mbar is not None
        expected = [topk_mask(layer.scores.detach() + aggregation_shift(layer.scores, mb, algorithm.config.beta), layer.keep)
                    for layer, mb in zip(node.layers, algorithm.mbar)]
        assert all(torch.equal(a, b) for a, b in zip(node.current_masks(), expected))  # what evaluate() pins
        saved = load_mask(tmp_path / f"node-{node.config.node_id}" / "mask.npz").masks
        assert all(np.array_equal(s, e.numpy()) for s, e in zip(saved, expected))


def test_paper_preset_starts_from_one_random_mbar_shared_by_every_node(tmp_path: Path) -> None:
    nodes = _fleet(tmp_path, rounds=1, preset="paper", keep=0.5)
    first = [n.algorithm.mbar for n in nodes]
    assert all(m is not None for m in first)
    for m in first[1:]:
        assert all(torch.equal(a, b) for a, b in zip(first[0], m))  # one m̄ for the whole fleet
    for layer, mb in zip(nodes[0].layers, first[0]):
        assert mb.shape == layer.weight.shape and set(mb.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(mb.mean()) - layer.keep) < 0.1  # Bernoulli(keep)
    other = round0_mbar(nodes[0].layers, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(first[0], other))  # from the fleet seed
    # the default preset (and local training) apply no shift in round 0
    assert all(n.algorithm.mbar is None for n in _fleet(tmp_path / "d", rounds=1))
    assert all(n.algorithm.mbar is None for n in _fleet(tmp_path / "l", rounds=1, preset="paper", algorithm="local"))
