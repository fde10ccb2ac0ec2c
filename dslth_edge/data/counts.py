"""Per-class sample counts: exact apportioning, count files, class assignment, Dirichlet draws."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dslth_edge.data.seeds import TAG_ASSIGN, TAG_DIRICHLET, seeded_rng
from dslth_edge.data.textmatrix import read_int_matrix
from dslth_edge.errors import DatasetError

__all__ = ["apportion", "load_count_matrix", "scale_counts", "assign_classes", "dirichlet_counts"]


def apportion(total: int, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Split integer ``total`` in proportion to non-negative weights, exactly.

    Largest-remainder (Hamilton) rounding in integer arithmetic: the parts sum to
    ``total``, a zero weight gets 0, and each part is the floor or ceiling of its
    exact quota. Ties in the remainder go to the lower index (deterministic).
    """
    w = np.asarray(weights)
    if w.size == 0:
        if total:
            raise ValueError("cannot apportion a positive total over no weights")
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(w.dtype, np.integer):
        wi = [int(x) for x in w]
    else:
        # Integerise float weights (relative precision 2^-40) so the rounding is exact.
        top = float(np.max(w)) if w.size else 0.0
        wi = [int(round(float(x) / top * 2**40)) if top > 0 else 0 for x in w]
    if any(x < 0 for x in wi):
        raise ValueError("weights must be non-negative")
    s = sum(wi)
    if s == 0:
        if total:
            raise ValueError("cannot apportion a positive total over zero weights")
        return np.zeros(len(wi), dtype=np.int64)
    q = [total * x // s for x in wi]
    r = [total * x % s for x in wi]
    left = total - sum(q)
    # left < number of positive remainders, so only nonzero-weight entries get +1.
    for i in sorted(range(len(wi)), key=lambda i: (-r[i], i))[:left]:
        q[i] += 1
    return np.array(q, dtype=np.int64)


def load_count_matrix(path: str | Path) -> np.ndarray:
    """Read a whitespace-separated (nodes x classes) matrix of non-negative ints."""
    p = Path(path)
    m = read_int_matrix(p, "partition file", DatasetError)
    if (m < 0).any():
        raise DatasetError(f"partition file {p}: negative count")
    return m


def scale_counts(counts: np.ndarray, class_totals: Sequence[int] | np.ndarray) -> np.ndarray:
    """Scale each column of a (nodes x classes) count matrix to the class's total.

    Proportions between nodes are kept (largest-remainder rounding), so each column
    sums exactly to ``class_totals[c]``; a column of zeros stays zero (that class goes
    unused). Used to carry the paper's CIFAR-10 counts over to other datasets.
    """
    counts = np.asarray(counts, dtype=np.int64)
    totals = np.asarray(class_totals, dtype=np.int64)
    out = np.zeros_like(counts)
    for c in range(counts.shape[1]):
        if counts[:, c].sum() > 0:
            out[:, c] = apportion(int(totals[c]), counts[:, c])
    return out


def assign_classes(num_nodes: int, num_classes: int, k: int, seed: int) -> list[list[int]]:
    """K distinct classes per node, every class held by floor/ceil(nK/C) nodes.

    Greedy: each node takes the K classes currently held by the fewest nodes, ties
    broken by a seeded random key; this keeps holder counts within one of each other,
    so every class is held as soon as n*K >= C.
    """
    rng = seeded_rng(seed, TAG_ASSIGN)
    held = np.zeros(num_classes, dtype=np.int64)
    out = []
    for _ in range(num_nodes):
        order = np.lexsort((rng.random(num_classes), held))
        chosen = sorted(int(c) for c in order[:k])
        held[chosen] += 1
        out.append(chosen)
    return out


def dirichlet_counts(
    class_totals: np.ndarray, num_nodes: int, alpha: float, seed: int, min_samples: int
) -> np.ndarray:
    """Per class, split its samples by proportions ~ Dirichlet(alpha) over the nodes.

    Redraws (bounded) until every node holds at least ``min_samples``; if a very small
    alpha keeps failing, moves single samples from the richest node to the poorest so
    the minimum is guaranteed.
    """
    total = int(class_totals.sum())
    if total < num_nodes * min_samples:
        raise DatasetError(
            f"dirichlet partition: {total} training samples cannot give {num_nodes} nodes "
            f"at least {min_samples} each"
        )
    rng = seeded_rng(seed, TAG_DIRICHLET)
    counts = np.zeros((num_nodes, len(class_totals)), dtype=np.int64)
    for _attempt in range(100):
        for c, n_c in enumerate(class_totals):
            counts[:, c] = apportion(int(n_c), rng.dirichlet(np.full(num_nodes, alpha))) if n_c else 0
        if counts.sum(axis=1).min() >= min_samples:
            return counts
    while True:  # deterministic repair; terminates since total >= n * min_samples
        sizes = counts.sum(axis=1)
        poor = int(np.argmin(sizes))
        if sizes[poor] >= min_samples:
            return counts
        rich = int(np.argmax(sizes))
        c = int(np.argmax(counts[rich]))
        counts[rich, c] -= 1
        counts[poor, c] += 1
