"""The in-memory shape every dataset loads into: uint8 images, normalised per batch.

A :class:`Dataset` keeps its images as uint8 NCHW arrays (memory-mapped from a file
where the format allows, see :mod:`dslth_edge.data.idx`) and converts only the rows a
caller asks for to normalised float32 (:meth:`Dataset.train_batch`,
:meth:`Dataset.test_batch`). Fashion-MNIST's training set is 47 MB as uint8 and
188 MB as float32; a node that trains on its own partition touches only its rows.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Dataset",
    "read_rows",
    "channel_stats",
    "stats_from_histograms",
    "normalise",
    "build_dataset",
]


def normalise(u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NCHW -> float32 ``(u8 / 255 - mean) / std`` per channel (one float32 copy, no float64 temp)."""
    x = np.asarray(u8).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return x


def read_rows(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``images[indices]`` as a new uint8 array; rows of a file mapping are read with ``pread``.

    Indexing a :class:`numpy.memmap` faults its pages into the process, and touched
    file pages count in its resident set (and its peak) until unmapped. Reading the
    rows with ``os.pread`` instead leaves them in the kernel's page cache (shared
    between processes, dropped under memory pressure) and puts only the batch itself in
    the process. Other arrays are indexed as usual.
    """
    idx = np.asarray(indices, dtype=np.int64)
    filename = getattr(images, "filename", None)
    base = _file_offset(images) if isinstance(images, np.memmap) and filename is not None else None
    if base is None or idx.size == 0:
        return np.asarray(images[idx])
    n = images.shape[0]
    if idx.min() < -n or idx.max() >= n:
        raise IndexError(f"row index out of range for {n} rows")
    idx = np.where(idx < 0, idx + n, idx)
    row = int(math.prod(images.shape[1:])) * images.dtype.itemsize
    out = np.empty((idx.size, *images.shape[1:]), dtype=images.dtype)
    flat = out.reshape(idx.size, -1).view(np.uint8)
    order = np.argsort(idx, kind="stable")
    fd = os.open(filename, os.O_RDONLY)
    try:
        start = 0
        while start < order.size:  # coalesce runs of consecutive rows into one read
            end = start + 1
            while end < order.size and idx[order[end]] <= idx[order[end - 1]] + 1:
                end += 1
            first, last = int(idx[order[start]]), int(idx[order[end - 1]])
            data = os.pread(fd, (last - first + 1) * row, base + first * row)
            if len(data) != (last - first + 1) * row:
                raise OSError(f"{filename}: short read at row {first}")
            block = np.frombuffer(data, dtype=np.uint8).reshape(last - first + 1, row)
            flat[order[start:end]] = block[idx[order[start:end]] - first]
            start = end
    finally:
        os.close(fd)
    return out


def _file_offset(images: np.memmap) -> int | None:
    """File offset of ``images``' first element, or None when its rows are not contiguous in the file."""
    mm = getattr(images, "_mmap", None)
    if mm is None or not images.flags.c_contiguous:
        return None
    mapped_at = int(images.offset) - int(images.offset) % mmap.ALLOCATIONGRANULARITY  # where numpy's mapping starts
    start = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    return mapped_at + int(images.__array_interface__["data"][0]) - int(start)


def stats_from_histograms(hists: Sequence[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel (mean, std) on the [0, 1] scale from one 256-bin histogram per channel."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for hist in hists:
        h = np.asarray(hist, dtype=np.float64)
        total = h.sum()
        m = float((h * values).sum() / total) if total else 0.0
        var = float((h * (values - m) ** 2).sum() / total) if total else 0.0
        means.append(m)
        # A constant channel would divide by zero; leave it centred but unscaled.
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def channel_stats(u8: np.ndarray, *, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of uint8 NCHW images on the [0, 1] scale.

    A 256-bin histogram is exact and cheap for uint8 (no float accumulation over 47M
    pixels); it is accumulated ``chunk`` images at a time, so a memory-mapped array
    is streamed rather than copied.
    """
    channels = u8.shape[1]
    hists = [np.zeros(256, dtype=np.int64) for _ in range(channels)]
    for start in range(0, u8.shape[0], chunk):
        block = np.asarray(u8[start : start + chunk])
        for c in range(channels):
            hists[c] += np.bincount(block[:, c].reshape(-1), minlength=256)
    return stats_from_histograms(hists)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset: uint8 NCHW images, int64 labels, per-channel statistics.

    ``mean``/``std`` are per channel, on the [0, 1] pixel scale, computed from the
    training images; a model sees ``x = (raw / 255 - mean) / std``. Training and
    evaluation code takes normalised float32 rows with :meth:`train_batch` /
    :meth:`test_batch`; :attr:`x_train` / :attr:`x_test` build a whole split at once
    (a new array on every access: for analysis and small datasets, not for loops).
    ``train_images``/``test_images`` may be read-only :class:`numpy.memmap` views.
    """

    name: str
    train_images: np.ndarray  # (N, C, H, W) uint8
    y_train: np.ndarray  # (N,) int64
    test_images: np.ndarray  # (M, C, H, W) uint8
    y_test: np.ndarray  # (M,) int64
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def x_train(self) -> np.ndarray:
        """The whole training split as normalised float32 NCHW (a new array each access)."""
        return self.normalise(self.train_images)

    @property
    def x_test(self) -> np.ndarray:
        """The whole test split as normalised float32 NCHW (a new array each access)."""
        return self.normalise(self.test_images)

    def train_batch(self, indices: np.ndarray) -> np.ndarray:
        """Normalised float32 rows ``indices`` of the training images (only those rows are read)."""
        return self.normalise(read_rows(self.train_images, indices))

    def test_batch(self, indices: np.ndarray) -> np.ndarray:
        """Normalised float32 rows ``indices`` of the test images (only those rows are read)."""
        return self.normalise(read_rows(self.test_images, indices))

    @property
    def nbytes(self) -> int:
        """Bytes of the uint8 images and int64 labels (mapped or in RAM)."""
        return int(self.train_images.nbytes + self.test_images.nbytes + self.y_train.nbytes + self.y_test.nbytes)

    @property
    def memory_mapped(self) -> bool:
        """Whether the images are mapped from a file rather than held in RAM."""
        return isinstance(self.train_images, np.memmap) and isinstance(self.test_images, np.memmap)

    def train_class_counts(self) -> np.ndarray:
        """Number of training samples per class, shape (num_classes,)."""
        return np.bincount(self.y_train, minlength=self.num_classes).astype(np.int64)

    def test_class_counts(self) -> np.ndarray:
        """Number of test samples per class, shape (num_classes,)."""
        return np.bincount(self.y_test, minlength=self.num_classes).astype(np.int64)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """uint8 NCHW images -> float32 on this dataset's normalised scale."""
        return normalise(np.asarray(raw, dtype=np.uint8), self.mean, self.std)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays), e.g. for a run's config.json."""
        return {
            "name": self.name,
            "train": int(len(self.y_train)),
            "test": int(len(self.y_test)),
            "input_shape": list(self.input_shape),
            "classes": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def build_dataset(
    name: str,
    train_u8: np.ndarray,
    y_train: np.ndarray,
    test_u8: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str],
    *,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Dataset:
    """A :class:`Dataset` from uint8 NCHW arrays; ``stats`` (mean, std) is computed when not given."""
    mean, std = stats if stats is not None else channel_stats(train_u8)
    return Dataset(
        name=name,
        train_images=train_u8,
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        test_images=test_u8,
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        class_names=list(class_names),
        mean=mean,
        std=std,
    )
