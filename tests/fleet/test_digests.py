"""Every algorithm's behaviour, pinned: per-round digests of scores, masks, m̄ and metrics.

A 4-node ring of the MCU CNN on tiny synthetic data, lock-step in memory (the
simulator's schedule: every ``begin_round``, then every ``finish_round``), 6 rounds with
an evaluation every 3. The golden digests were recorded on the code of each behaviour
change; a refactor must leave them as they are (tests/fleet/digests.py says what goes in).
"""

from __future__ import annotations

from typing import Any

import pytest

from dslth_edge.data import make_synthetic
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.transport.memory import MemoryHub

from .digests import round_digest

TINY = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=240, test_size=80, noise=2.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: name -> (algorithm, FleetOptions changes)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "mce-pl": ("mce-pl", {}),
    "mce-pl-paper": ("mce-pl", {"preset": "paper", "keep": 0.5, "overrides": {"batch_size": 8}}),
    "mce-pl-structured": ("mce-pl", {"overrides": {"batch_size": 8, "lr": 1.0, "group_lasso": 1e-3,
                                                   "drop_threshold": 0.5, "ft_recompute": True, "self_weight": 0.25}}),
    "consensus": ("consensus", {}),
    "local": ("local", {}),
    "dpsgd": ("dpsgd", {}),
    "dpsgd-uniform": ("dpsgd", {"overrides": {"batch_size": 8, "mixing": "uniform"}}),
    "dpsgd-ft": ("dpsgd-ft", {}),
}


def fleet_digests(algorithm: str, rounds: int = 6, **kw: Any) -> list[str]:
    """One digest per round of a lock-step in-memory fleet."""
    base: dict[str, Any] = {"nodes": 4, "topology": "ring", "dataset": "synthetic", "partition": "classes:2",
                            "model": "mcu-cnn", "rounds": rounds, "eval_every": 3, "eval_samples": 10, "keep": 0.3,
                            "profiles": ("jetson-nano",), "overrides": {"batch_size": 8, "lr": 1.0},
                            "algorithm": algorithm}
    base.update(kw)
    plan = plan_fleet(FleetOptions(**base), TINY)
    hub = MemoryHub()
    nodes = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), None) for i in range(plan.options.nodes)]
    out = []
    for _ in range(rounds):
        for node in nodes:
            node.begin_round()
        results = [node.finish_round() for node in nodes]
        out.append(round_digest(nodes, results))
    return out


GOLDEN: dict[str, list[str]] = {
    "consensus": ["c8fc0ffad1e1026e", "0806a9ab281fd964", "3b4d29a35c03ea0e", "b464b7c20bd96398", "623ba31e67219a9f", "d93761061d3b2728"],
    "dpsgd": ["ad1dd078ed3fd155", "f30229d24859151f", "5b506b8e656cd67c", "62c7890178398cc3", "f71d1e133dbb2b2e", "44297dad98bbf166"],
    "dpsgd-ft": ["ad1dd078ed3fd155", "f30229d24859151f", "5b506b8e656cd67c", "62c7890178398cc3", "f71d1e133dbb2b2e", "870611975be0bca4"],
    "dpsgd-uniform": ["b76f90e753d8b757", "ae0593019d210583", "a0391f8a33ddf85f", "76a411b6797b3e10", "e328d7149677ef68", "ef83604cecad22a3"],
    "local": ["78d0364040761de6", "7913d737bc10c68d", "7ac6f6953bede22f", "da99c9655a189056", "ab1b1908cc56f476", "58ae306972df9b2d"],
    "mce-pl": ["dc48a20fdd423962", "4d5bbfb7903c7759", "20d6012736a43ea0", "79b19c53b4b79f35", "f98abce3c9cf20d2", "9c498a0438396ef1"],
    "mce-pl-paper": ["db626995c2930411", "00f48ce47db8f244", "1141f0efbc1f5fa5", "a919db3d7d9952d1", "e54ff5c11143b3db", "f7212fb5b6bfdefa"],
    "mce-pl-structured": ["921bd2f4ee9ee66c", "a6374b8f2350ad29", "9faee41f1d9ee7b9", "c0e7f11ce9ca946f", "e2d1564c5f4201ad", "11d4e726cc708da7"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_digests(case: str) -> None:
    algorithm, kw = CASES[case]
    assert fleet_digests(algorithm, **kw) == GOLDEN[case]
