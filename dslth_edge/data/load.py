"""``load_dataset``: one entry point for every dataset by name."""

from __future__ import annotations

from pathlib import Path

from dslth_edge.data.cifar import load_cifar10
from dslth_edge.data.dataset import Dataset
from dslth_edge.data.idx import FASHION_MNIST_DIR, load_fashion_mnist
from dslth_edge.data.synthetic import make_synthetic
from dslth_edge.errors import DatasetError

__all__ = ["KNOWN_DATASETS", "DATASET_ALIASES", "canonical_dataset_name", "load_dataset"]

KNOWN_DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "synthetic")
#: Accepted spellings -> canonical dataset name.
DATASET_ALIASES: dict[str, str] = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "synthetic": "synthetic",
}


def canonical_dataset_name(name: str) -> str:
    """The canonical name of a dataset spelling; raises :class:`DatasetError` listing the known ones."""
    key = DATASET_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    return key


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    synthetic_shape: tuple[int, int, int] = (1, 28, 28),
    synthetic_classes: int = 10,
    synthetic_train_size: int = 6000,
    synthetic_test_size: int = 1000,
    synthetic_noise: float = 6.0,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Load a dataset by name ("fashion-mnist", "cifar10", "synthetic"); images stay uint8.

    ``data_dir``: for fashion-mnist the directory holding the IDX files (default
    :data:`~dslth_edge.data.idx.FASHION_MNIST_DIR`); for cifar10 ``cifar-10-batches-py``
    itself or its parent (required). ``seed`` and the ``synthetic_*`` options apply to
    "synthetic" only. Fashion-MNIST's images are memory-mapped; gzipped IDX files are
    decompressed once into ``cache_dir`` (default
    :func:`~dslth_edge.data.idx.default_cache_dir`); nothing else is written. Raises
    :class:`DatasetError` when the data is missing or malformed, with the way to get it.
    """
    key = canonical_dataset_name(name)
    if key == "fashion-mnist":
        return load_fashion_mnist(Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR,
                                  cache_dir=Path(cache_dir) if cache_dir is not None else None)
    if key == "cifar10":
        return load_cifar10(data_dir)
    return make_synthetic(
        seed=seed,
        shape=synthetic_shape,
        num_classes=synthetic_classes,
        train_size=synthetic_train_size,
        test_size=synthetic_test_size,
        noise=synthetic_noise,
    )
