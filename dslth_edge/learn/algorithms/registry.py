"""Algorithm name -> implementation; :func:`build_algorithm` is what a node calls.

Adding an algorithm: one module in this package with an :class:`~dslth_edge.learn.algorithms.base.Algorithm`
subclass, its entry in :data:`REGISTRY` and its name in :data:`dslth_edge.learn.names.ALGORITHMS`
(the command line's choices, importable without torch; tests/learn/test_algorithms.py checks
that the two agree).
"""

from __future__ import annotations

from dslth_edge.errors import UsageError
from dslth_edge.learn.algorithm import AlgorithmConfig
from dslth_edge.learn.algorithms.base import Algorithm, AlgorithmSetup
from dslth_edge.learn.algorithms.consensus import Consensus
from dslth_edge.learn.algorithms.dpsgd import DPSGD
from dslth_edge.learn.algorithms.dpsgd_ft import DPSGDFT
from dslth_edge.learn.algorithms.local import Local
from dslth_edge.learn.algorithms.mce_pl import MCEPL

__all__ = ["REGISTRY", "algorithm_class", "build_algorithm"]

REGISTRY: dict[str, type[Algorithm]] = {
    "mce-pl": MCEPL,
    "consensus": Consensus,
    "local": Local,
    "dpsgd": DPSGD,
    "dpsgd-ft": DPSGDFT,
}


def algorithm_class(name: str) -> type[Algorithm]:
    """The implementation of algorithm ``name`` (UsageError for an unknown one)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown algorithm {name!r}; choose one of {', '.join(REGISTRY)}") from None


def build_algorithm(config: AlgorithmConfig, setup: AlgorithmSetup) -> Algorithm:
    """A node's algorithm: ``config.name``'s implementation with its constants and setup."""
    return algorithm_class(config.name)(config, setup)
