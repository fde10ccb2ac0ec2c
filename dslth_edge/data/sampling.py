"""Mini-batches as a pure function of (seed, step): resumable without sampler state.

A run resumed at step ``s`` sees exactly the batches an uninterrupted run sees from
step ``s`` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from dslth_edge.data.seeds import TAG_BATCH, check_seed, seeded_rng
from dslth_edge.errors import DatasetError

__all__ = ["batch_indices", "BatchSampler"]


def batch_indices(indices: np.ndarray, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The indices of mini-batch ``step``: a pure function of (indices, batch_size, step, seed).

    The sample stream is the concatenation of per-epoch permutations of ``indices``
    (epoch e shuffled by a (seed, e) stream); batch t is positions
    ``[t*B, (t+1)*B)`` of that stream, wrapping into the next epoch(s) when it runs
    past the end. So resuming at step s reproduces an uninterrupted run exactly, and
    no state has to be checkpointed. Give each node its own seed.
    """
    seed = check_seed(seed)
    idx = np.asarray(indices, dtype=np.int64)
    n = idx.shape[0]
    if n == 0:
        raise DatasetError("cannot draw batches from an empty split")
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
    if step < 0:
        raise DatasetError(f"step must be >= 0, got {step}")
    pos = int(step) * int(batch_size)
    end = pos + int(batch_size)
    parts = []
    while pos < end:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, end - pos)
        perm = seeded_rng(seed, TAG_BATCH, epoch).permutation(n)
        parts.append(idx[perm[offset : offset + take]])
        pos += take
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True, eq=False)
class BatchSampler:
    """Stateless mini-batch sampler over one node's indices (see :func:`batch_indices`)."""

    indices: np.ndarray = field(repr=False)
    batch_size: int
    seed: int

    def __call__(self, step: int) -> np.ndarray:
        return batch_indices(self.indices, self.batch_size, step, self.seed)

    def epoch_of(self, step: int) -> int:
        """The epoch in which batch ``step`` starts."""
        return (int(step) * self.batch_size) // len(self.indices)

    def steps(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Batches ``start, start+1, ...`` up to ``stop`` (exclusive; None: forever)."""
        t = start
        while stop is None or t < stop:
            yield self(t)
            t += 1
