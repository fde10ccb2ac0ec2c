"""The algorithms as pluggable pieces: the registry agrees with the command line's names,
each algorithm is its own module behind one interface, and the node loop names none."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from dslth_edge.errors import UsageError
from dslth_edge.learn.algorithms.base import PAYLOADS, Algorithm
from dslth_edge.learn.algorithms.registry import REGISTRY, algorithm_class
from dslth_edge.learn.names import ALGORITHMS

ROOT = Path(__file__).resolve().parents[2]


def test_registry_names_every_algorithm_the_cli_offers() -> None:
    assert tuple(REGISTRY) == ALGORITHMS
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Algorithm) and not inspect.isabstract(cls), name
        assert cls.payload in PAYLOADS
    with pytest.raises(UsageError, match="unknown algorithm"):
        algorithm_class("gossip-momentum")


def test_each_algorithm_is_its_own_module() -> None:
    modules = {REGISTRY[name].__module__ for name in REGISTRY}
    assert len(modules) == len(REGISTRY)


def test_the_node_loop_names_no_algorithm_and_never_asks_for_dense() -> None:
    source = (ROOT / "dslth_edge" / "fleet" / "node.py").read_text()
    strings = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & set(ALGORITHMS)
    names = {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}
    assert not names & {"dense", "is_dense", "name"}
    assert "getattr(" not in source


def test_mce_pl_personal_phase_sends_nothing_and_drops_mbar() -> None:
    """mce-pl with ft_rounds > 0: the last rounds publish no frame and train without m̄."""
    from dslth_edge.data import make_synthetic
    from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
    from dslth_edge.transport.memory import MemoryHub

    data = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=120, test_size=40, noise=2.0)
    opts = FleetOptions(nodes=3, topology="ring", dataset="synthetic", partition="classes:2", model="mcu-cnn",
                        rounds=4, eval_every=0, keep=0.5, profiles=("jetson-nano",),
                        overrides={"batch_size": 8, "ft_rounds": 2}, algorithm="mce-pl")
    plan = plan_fleet(opts, data)
    hub = MemoryHub()
    nodes = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), None) for i in range(3)]
    sent = []
    for _ in range(4):
        for node in nodes:
            node.begin_round()
        results = [node.finish_round() for node in nodes]
        sent.append([r.bytes_sent for r in results])
        if results[0].round >= 2:
            assert all(node.algorithm.mbar is None for node in nodes)
    assert all(b > 0 for b in sent[0] + sent[1]) and sent[2:] == [[0, 0, 0], [0, 0, 0]]
