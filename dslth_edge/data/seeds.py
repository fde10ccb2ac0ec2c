"""Seeded random streams of the data room: one per purpose, fixed by (seed, tag, ...).

Every random choice in :mod:`dslth_edge.data` is drawn from a
:class:`numpy.random.SeedSequence` keyed by the caller's seed and a fixed purpose tag,
so the same seed gives the same split on every machine, and changing how one step
draws cannot shift the numbers another step sees.
"""

from __future__ import annotations

import numpy as np

from dslth_edge.errors import DatasetError

__all__ = [
    "TAG_SYN_PROTO",
    "TAG_SYN_TRAIN",
    "TAG_SYN_TEST",
    "TAG_ASSIGN",
    "TAG_IID",
    "TAG_DIRICHLET",
    "TAG_TRAIN_PERM",
    "TAG_TEST_PERM",
    "TAG_TEST_DRAW",
    "TAG_SCARCE",
    "TAG_BATCH",
    "check_seed",
    "seeded_rng",
]

# Purpose tags for SeedSequence spawn keys: one per independent random decision. The
# values are part of the reproducibility contract: changing one changes every split.
TAG_SYN_PROTO = 1
TAG_SYN_TRAIN = 2
TAG_SYN_TEST = 3
TAG_ASSIGN = 10
TAG_IID = 11
TAG_DIRICHLET = 12
TAG_TRAIN_PERM = 13
TAG_TEST_PERM = 14
TAG_TEST_DRAW = 15
TAG_SCARCE = 16
TAG_BATCH = 20


def check_seed(seed: int) -> int:
    """``seed`` as an int; raises :class:`DatasetError` unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator fixed by the seed and a spawn key naming what it is used for."""
    return np.random.default_rng(np.random.SeedSequence(check_seed(seed), spawn_key=tuple(int(k) for k in key)))
