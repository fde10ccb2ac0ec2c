"""Memory discipline of the data room: uint8 storage, memory-mapped IDX, per-batch conversion."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from dslth_edge.data import Dataset, load_dataset, make_synthetic, normalise
from dslth_edge.data.idx import load_fashion_mnist, read_idx
from dslth_edge.errors import DatasetError


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def fake_fmnist(directory: Path, *, gz: bool, n_train: int = 40, n_test: int = 12) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)), gz=gz)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10, gz=gz)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)), gz=gz)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10, gz=gz)
    return directory


def test_uncompressed_idx_is_memory_mapped_uint8(tmp_path):
    ds = load_dataset("fashion-mnist", fake_fmnist(tmp_path / "f", gz=False))
    assert ds.memory_mapped
    assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (40, 1, 28, 28)
    assert isinstance(ds.train_images, np.memmap) and not ds.train_images.flags.writeable
    assert ds.input_shape == (1, 28, 28)
    assert ds.nbytes == 40 * 784 + 12 * 784 + 8 * (40 + 12)


def test_gzip_is_decompressed_once_into_the_cache_and_mapped(tmp_path):
    src = fake_fmnist(tmp_path / "f", gz=True)
    cache = tmp_path / "cache"
    a = load_fashion_mnist(src, cache_dir=cache, cache_min_bytes=0)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 4 and all(not n.startswith(".") for n in files)  # no temp files left behind
    assert a.memory_mapped
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    b = load_fashion_mnist(src, cache_dir=cache, cache_min_bytes=0)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # reused, not rewritten
    inram = load_fashion_mnist(src, cache_dir=tmp_path / "unused")  # small files stay in RAM
    assert not inram.memory_mapped and not (tmp_path / "unused").exists()
    for other in (b, inram):
        assert np.array_equal(np.asarray(a.train_images), np.asarray(other.train_images))
        assert np.array_equal(a.y_test, other.y_test) and a.mean == other.mean and a.std == other.std


def test_corrupt_gzip_with_cache_names_the_file(tmp_path):
    src = fake_fmnist(tmp_path / "f", gz=True)
    target = src / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-30] + b"\x00" * 4)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(target, 3, cache_dir=tmp_path / "cache", cache_min_bytes=0)
    assert not any((tmp_path / "cache").iterdir())


def test_stats_streamed_from_the_file_equal_the_in_memory_ones(tmp_path):
    mapped = load_dataset("fashion-mnist", fake_fmnist(tmp_path / "m", gz=False))
    inram = load_dataset("fashion-mnist", fake_fmnist(tmp_path / "r", gz=True))
    assert mapped.mean == inram.mean and mapped.std == inram.std


def test_batches_equal_the_whole_split_rows():
    ds = make_synthetic(seed=2, shape=(3, 8, 8), num_classes=4, train_size=40, test_size=12)
    idx = np.array([5, 0, 39, 5])
    assert ds.train_batch(idx).dtype == np.float32
    assert np.array_equal(ds.train_batch(idx), ds.x_train[idx])
    assert np.array_equal(ds.test_batch(idx[:3] % 12), ds.x_test[idx[:3] % 12])
    assert np.array_equal(ds.train_batch(idx), normalise(ds.train_images[idx], ds.mean, ds.std))


def test_dataset_holds_uint8_only():
    ds = make_synthetic(seed=0, train_size=100, test_size=20)
    assert isinstance(ds, Dataset)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    # the float view is built on demand: the dataset itself holds a quarter of its bytes
    assert ds.nbytes < ds.x_train.nbytes


def test_rows_of_a_mapping_are_read_with_pread_exactly(tmp_path):
    from dslth_edge.data.dataset import read_rows

    ds = load_dataset("fashion-mnist", fake_fmnist(tmp_path / "f", gz=False, n_train=60))
    full = np.array(ds.train_images)  # a plain in-RAM copy
    idx = np.array([3, 4, 5, 4, 59, 0, -1, 17, 18])
    assert np.array_equal(read_rows(ds.train_images, idx), full[idx])
    view = ds.train_images[10:50]
    assert np.array_equal(read_rows(view, np.array([0, 39, 5])), full[10:50][[0, 39, 5]])
    assert read_rows(ds.train_images, np.array([], dtype=np.int64)).shape == (0, 1, 28, 28)
    with pytest.raises(IndexError):
        read_rows(ds.train_images, np.array([60]))
    assert np.array_equal(ds.test_batch(np.array([2, 1])), ds.x_test[[2, 1]])
