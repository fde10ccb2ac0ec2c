"""A dataset split into one :class:`NodeSplit` per node (schemes in :func:`partition`).

Training indices of different nodes never overlap; every random choice comes from a
(seed, purpose tag) stream (:mod:`dslth_edge.data.seeds`). Splits depend only on the
label arrays (:func:`partition_labels`), never on the images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dslth_edge.data.counts import apportion, assign_classes, dirichlet_counts, load_count_matrix, scale_counts
from dslth_edge.data.dataset import Dataset
from dslth_edge.data.scarce import scarce
from dslth_edge.data.seeds import TAG_IID, TAG_TEST_DRAW, TAG_TEST_PERM, TAG_TRAIN_PERM, check_seed, seeded_rng
from dslth_edge.data.splits import PARTITION_FORMS, NodeSplit, PartitionSpec, parse_partition
from dslth_edge.errors import DatasetError

__all__ = ["materialise", "group_by_class", "node_test_counts", "partition_labels", "partition"]


def materialise(
    labels: np.ndarray, counts: np.ndarray, seed: int, tag: int
) -> list[np.ndarray]:
    """Turn a (nodes x classes) count matrix into disjoint per-node index arrays.

    Per class, the class's indices are permuted with a (seed, tag, class) stream and
    cut into consecutive runs of the nodes' counts; each run is sorted and the runs
    of a node are concatenated in class order.
    """
    num_nodes, num_classes = counts.shape
    per_node: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    for c in range(num_classes):
        col = counts[:, c]
        if col.sum() == 0:
            continue
        idx = np.flatnonzero(labels == c).astype(np.int64)
        if col.sum() > idx.size:
            raise DatasetError(f"partition asks for {int(col.sum())} samples of class {c}, only {idx.size} exist")
        idx = idx[seeded_rng(seed, tag, c).permutation(idx.size)]
        bounds = np.concatenate([[0], np.cumsum(col)])
        for i in range(num_nodes):
            if col[i]:
                per_node[i].append(np.sort(idx[bounds[i] : bounds[i + 1]]))
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in per_node]


def group_by_class(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorder indices by (label, index) to meet NodeSplit's grouping invariant."""
    return indices[np.lexsort((indices, labels[indices]))].astype(np.int64)


def node_test_counts(
    train_counts: np.ndarray, test_totals: np.ndarray, test_size: int
) -> np.ndarray:
    """Each node's wanted test counts for a fixed ``test_size``, proportional to its
    training distribution, capped by what the test set has (excess moves to the
    node's other classes while they have room)."""
    out = np.zeros_like(train_counts)
    for i, row in enumerate(train_counts):
        want = np.zeros_like(row)
        room = test_totals.copy()
        weights = row.copy()
        left = test_size
        while left > 0 and weights.sum() > 0:
            share = np.minimum(apportion(left, weights), room)
            want += share
            room -= share
            left -= int(share.sum())
            weights = np.where(room > 0, weights, 0)
            if share.sum() == 0:
                break
        out[i] = want
    return out


def partition_labels(
    y_train: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    num_nodes: int,
    scheme: str | PartitionSpec | None,
    *,
    seed: int,
    partition_file: str | Path | None = None,
    test_size: int | None = None,
    min_samples: int = 10,
    max_train_per_node: int | None = None,
) -> list[NodeSplit]:
    """:func:`partition` on label arrays alone (what the splits depend on)."""
    seed = check_seed(seed)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise DatasetError(f"num_nodes must be a positive integer, got {num_nodes!r}")
    num_nodes = int(num_nodes)
    if scheme is None:
        if partition_file is None:
            raise DatasetError(f"no partition scheme given; valid forms: {', '.join(PARTITION_FORMS)}")
        spec = PartitionSpec("file", path=Path(partition_file))
    elif partition_file is not None and isinstance(scheme, str) and scheme.strip().lower() == "file":
        spec = PartitionSpec("file", path=Path(partition_file))
    else:
        spec = parse_partition(scheme)
        if partition_file is not None:
            if spec.kind != "file":
                raise DatasetError(f"partition_file given but the scheme is {spec}; use 'file' or leave it out")
            spec = PartitionSpec("file", path=Path(partition_file))
    if test_size is not None and test_size < 0:
        raise DatasetError(f"test_size must be >= 0, got {test_size}")
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.asarray(y_test, dtype=np.int64)
    train_totals = np.bincount(y_train, minlength=num_classes).astype(np.int64)
    test_totals = np.bincount(y_test, minlength=num_classes).astype(np.int64)
    if train_totals.size > num_classes or test_totals.size > num_classes:
        raise DatasetError(f"labels exceed the {num_classes} classes")

    train_idx: list[np.ndarray]
    if spec.kind == "iid":
        if y_train.size < num_nodes:
            raise DatasetError(f"iid partition: {y_train.size} training samples for {num_nodes} nodes")
        perm = seeded_rng(seed, TAG_IID, 0).permutation(y_train.size).astype(np.int64)
        train_idx = [group_by_class(p, y_train) for p in np.array_split(perm, num_nodes)]
        train_counts = np.array([np.bincount(y_train[p], minlength=num_classes) for p in train_idx], dtype=np.int64)
    else:
        if spec.kind == "classes":
            k = int(spec.classes_per_node or 0)
            if k > num_classes:
                raise DatasetError(f"classes:{k} asks for more classes per node than the {num_classes} the dataset has")
            assignment = assign_classes(num_nodes, num_classes, k, seed)
            holders = np.zeros((num_nodes, num_classes), dtype=np.int64)
            for i, cls in enumerate(assignment):
                holders[i, cls] = 1
            # Each class's samples divided evenly among its holders (the remainder goes
            # one by one to the lowest-numbered holders; the authors' code gives all of
            # it to the last holder, a difference of a few samples).
            train_counts = scale_counts(holders, train_totals)
        elif spec.kind == "dirichlet":
            train_counts = dirichlet_counts(train_totals, num_nodes, float(spec.alpha or 0), seed, min_samples)
        else:
            assert spec.path is not None
            raw = load_count_matrix(spec.path)
            if raw.shape[0] != num_nodes:
                raise DatasetError(
                    f"partition file {spec.path} has {raw.shape[0]} rows (nodes) but the fleet has {num_nodes} nodes"
                )
            if raw.shape[1] != num_classes:
                raise DatasetError(
                    f"partition file {spec.path} has {raw.shape[1]} columns (classes) but the dataset has {num_classes} classes"
                )
            train_counts = scale_counts(raw, train_totals)
            empty = np.flatnonzero(train_counts.sum(axis=1) == 0)
            if empty.size:
                raise DatasetError(f"partition file {spec.path}: node(s) {empty.tolist()} get no training samples")
        train_idx = materialise(y_train, train_counts, seed, TAG_TRAIN_PERM)

    # Personalized test split: from the node's own classes, proportional to its
    # training distribution.
    if test_size is None:
        if spec.kind == "iid":
            perm = seeded_rng(seed, TAG_IID, 1).permutation(y_test.size).astype(np.int64)
            test_idx = [group_by_class(p, y_test) for p in np.array_split(perm, num_nodes)]
            test_counts = np.array([np.bincount(y_test[p], minlength=num_classes) for p in test_idx], dtype=np.int64)
        else:
            # Disjoint: each class's test samples are divided among the nodes holding
            # it, in proportion to their training counts of that class.
            test_counts = scale_counts(train_counts, test_totals)
            test_idx = materialise(y_test, test_counts, seed, TAG_TEST_PERM)
    else:
        # A fixed size per node generally needs more samples of a class than a
        # disjoint share leaves, so each node draws its own test set independently:
        # test sets may overlap across nodes. They are only evaluated, never trained
        # on, so the overlap leaks nothing; it only correlates the nodes' accuracies.
        test_counts = node_test_counts(train_counts, test_totals, int(test_size))
        test_idx = []
        for i in range(num_nodes):
            parts = []
            for c in np.flatnonzero(test_counts[i]):
                pool = np.flatnonzero(y_test == c).astype(np.int64)
                pick = seeded_rng(seed, TAG_TEST_DRAW, i, int(c)).choice(pool.size, int(test_counts[i, c]), replace=False)
                parts.append(np.sort(pool[pick]))
            test_idx.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))

    splits = [
        NodeSplit(
            node=i,
            train_indices=train_idx[i],
            test_indices=test_idx[i],
            classes=[int(c) for c in np.flatnonzero(train_counts[i])],
            train_counts=[int(v) for v in train_counts[i]],
            test_counts=[int(v) for v in test_counts[i]],
        )
        for i in range(num_nodes)
    ]
    if max_train_per_node is not None:
        splits = scarce(splits, max_train_per_node, seed)
    return splits


def partition(
    dataset: Dataset,
    num_nodes: int,
    scheme: str | PartitionSpec | None,
    *,
    seed: int,
    partition_file: str | Path | None = None,
    test_size: int | None = None,
    min_samples: int = 10,
    max_train_per_node: int | None = None,
) -> list[NodeSplit]:
    """Split a dataset across ``num_nodes`` nodes; one :class:`NodeSplit` per node.

    Schemes (see :func:`parse_partition`):

    * ``iid``: shuffle and cut train and test evenly.
    * ``classes:K``: node i gets K distinct classes (seeded, balanced: every class is
      held by floor/ceil(nK/C) nodes, so all are held once nK >= C); each class's
      training samples are divided evenly among the nodes holding it.
    * ``dirichlet:ALPHA``: per class, proportions ~ Dirichlet(ALPHA) over the nodes;
      every node gets at least ``min_samples`` training samples.
    * ``file:PATH`` (or ``partition_file=``): a (nodes x classes) count matrix such
      as the paper's ``train_counts_K.txt``; each column is scaled to the dataset's
      number of samples of that class (largest remainder, exact totals).

    Test split: by default disjoint across nodes, drawn only from the node's classes:
    each class's test samples are divided among the nodes holding it in proportion to
    their training counts (iid: an even cut). With ``test_size`` each node instead
    gets (at most) that many test samples in proportion to its training distribution,
    drawn independently per node, so nodes' test sets may overlap (the authors give
    every holder all 1000 test images of its classes; ``test_size=1000*K`` is close).

    ``max_train_per_node`` applies :func:`scarce` afterwards (the paper's
    scarce-data setting uses 300). Training indices never overlap across nodes.
    """
    return partition_labels(
        dataset.y_train,
        dataset.y_test,
        dataset.num_classes,
        num_nodes,
        scheme,
        seed=seed,
        partition_file=partition_file,
        test_size=test_size,
        min_samples=min_samples,
        max_train_per_node=max_train_per_node,
    )
