"""Partition specs ("iid", "classes:K", "dirichlet:ALPHA", "file:PATH") and per-node splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dslth_edge.errors import DatasetError

__all__ = ["PARTITION_FORMS", "PartitionSpec", "parse_partition", "NodeSplit", "counts_matrix"]

PARTITION_FORMS: tuple[str, ...] = ("iid", "classes:K", "dirichlet:ALPHA", "file:PATH")


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition scheme: kind is "iid", "classes", "dirichlet" or "file"."""

    kind: str
    classes_per_node: int | None = None
    alpha: float | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "classes":
            return f"classes:{self.classes_per_node}"
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "file":
            return f"file:{self.path}"
        return self.kind


def _bad_spec(spec: str, why: str) -> DatasetError:
    return DatasetError(f"bad partition {spec!r}: {why}; valid forms: {', '.join(PARTITION_FORMS)}")


def parse_partition(spec: str | PartitionSpec) -> PartitionSpec:
    """Parse "iid", "classes:K", "dirichlet:ALPHA" or "file:PATH"."""
    if isinstance(spec, PartitionSpec):
        return spec
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind == "iid" and not sep:
        return PartitionSpec("iid")
    if kind == "classes" and sep:
        try:
            k = int(arg)
        except ValueError:
            raise _bad_spec(text, f"K must be an integer, got {arg!r}") from None
        if k < 1:
            raise _bad_spec(text, "K must be >= 1")
        return PartitionSpec("classes", classes_per_node=k)
    if kind == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            raise _bad_spec(text, f"ALPHA must be a number, got {arg!r}") from None
        if not (alpha > 0 and math.isfinite(alpha)):
            raise _bad_spec(text, "ALPHA must be a finite number > 0")
        return PartitionSpec("dirichlet", alpha=alpha)
    if kind == "file" and sep:
        if not arg:
            raise _bad_spec(text, "PATH is empty")
        return PartitionSpec("file", path=Path(arg))
    raise _bad_spec(text, "unknown form")


@dataclass(frozen=True, eq=False)
class NodeSplit:
    """One node's share of a dataset.

    ``train_indices``/``test_indices`` index the dataset's train/test arrays (int64).
    Invariant: ``train_indices`` is grouped by class in increasing class order (the
    block of class c has ``train_counts[c]`` entries) and sorted within each block;
    the same holds for the test side. ``classes`` are the classes with a training
    sample at this node.
    """

    node: int
    train_indices: np.ndarray
    test_indices: np.ndarray
    classes: list[int]
    train_counts: list[int]
    test_counts: list[int]

    @property
    def num_train(self) -> int:
        return int(self.train_indices.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_indices.shape[0])

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary without the index arrays."""
        return {
            "node": self.node,
            "classes": list(self.classes),
            "train": self.num_train,
            "test": self.num_test,
            "train_counts": list(self.train_counts),
            "test_counts": list(self.test_counts),
        }


def counts_matrix(splits: Sequence[NodeSplit], which: str = "train") -> np.ndarray:
    """(nodes x classes) int64 matrix of the splits' per-class counts ("train"/"test")."""
    if which not in ("train", "test"):
        raise ValueError(f"which must be 'train' or 'test', got {which!r}")
    return np.array([s.train_counts if which == "train" else s.test_counts for s in splits], dtype=np.int64)
