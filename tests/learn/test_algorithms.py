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
