"""The scarce-data cap: each node's training split subsampled, class proportions kept."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dslth_edge.data.counts import apportion
from dslth_edge.data.seeds import TAG_SCARCE, check_seed, seeded_rng
from dslth_edge.data.splits import NodeSplit
from dslth_edge.errors import DatasetError

__all__ = ["scarce"]


def scarce(splits: Sequence[NodeSplit], max_train_per_node: int, seed: int) -> list[NodeSplit]:
    """Subsample each node's training split to at most ``max_train_per_node``.

    Class proportions are kept (largest remainder), and every class the node holds
    keeps at least one sample when the budget allows, so ``classes`` and the test split
    stay as they were; a class that does drop out (budget below the number of held
    classes) leaves the test split as well. Which samples stay is drawn per (seed, node, class). Relies on the
    NodeSplit invariant that train indices are grouped by class.
    """
    seed = check_seed(seed)
    if isinstance(max_train_per_node, bool) or not isinstance(max_train_per_node, (int, np.integer)) or max_train_per_node < 1:
        raise DatasetError(f"max_train_per_node must be a positive integer, got {max_train_per_node!r}")
    out = []
    for s in splits:
        counts = np.asarray(s.train_counts, dtype=np.int64)
        if s.num_train <= max_train_per_node:
            out.append(s)
            continue
        new = apportion(int(max_train_per_node), counts)
        held = np.flatnonzero(counts)
        if max_train_per_node >= held.size:
            # Give a sample to classes rounded down to zero, taken from the largest share.
            for c in sorted(held, key=lambda c: (-counts[c], c)):
                if new[c] == 0:
                    donor = int(np.argmax(new))
                    new[donor] -= 1
                    new[c] += 1
        starts = np.concatenate([[0], np.cumsum(counts)])
        parts = []
        for c in np.flatnonzero(new):
            block = s.train_indices[starts[c] : starts[c + 1]]
            pick = seeded_rng(seed, TAG_SCARCE, s.node, int(c)).choice(block.size, int(new[c]), replace=False)
            parts.append(np.sort(block[pick]))
        # A class squeezed out of training leaves the test split too, so the test
        # split keeps coming from the node's own classes only.
        test_counts = np.asarray(s.test_counts, dtype=np.int64)
        tstarts = np.concatenate([[0], np.cumsum(test_counts)])
        keep = [s.test_indices[tstarts[c] : tstarts[c + 1]] for c in np.flatnonzero(new) if test_counts[c]]
        test_counts = np.where(new > 0, test_counts, 0)
        out.append(
            NodeSplit(
                node=s.node,
                train_indices=np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64),
                test_indices=np.concatenate(keep).astype(np.int64) if keep else np.zeros(0, dtype=np.int64),
                classes=[int(c) for c in np.flatnonzero(new)],
                train_counts=[int(v) for v in new],
                test_counts=[int(v) for v in test_counts],
            )
        )
    return out
