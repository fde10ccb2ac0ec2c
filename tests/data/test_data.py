"""Tests for dslth_edge.data: loaders, partitions, scarce subsampling, batches."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dslth_edge.data import (
    FASHION_MNIST_DIR,
    BatchSampler,
    Dataset,
    PartitionSpec,
    batch_indices,
    counts_matrix,
    load_count_matrix,
    load_dataset,
    parse_partition,
    partition,
    partition_labels,
    scale_counts,
    scarce,
)
from dslth_edge.errors import DatasetError, UsageError

# The paper's files live beside the checkout (../shared/paper); the repository never copies them.
PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"
if not PAPER.is_dir():
    PAPER = Path("/work/shared/paper")
needs_paper = pytest.mark.skipif(not PAPER.is_dir(), reason=f"paper data files not found at {PAPER}")
needs_fmnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def fake_fmnist(directory: Path, *, gz: bool = True, n_train: int = 30, n_test: int = 10) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)), gz=gz)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10, gz=gz)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)), gz=gz)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10, gz=gz)
    return directory


def fake_cifar(directory: Path, n: int = 20) -> Path:
    """A tiny batch dir in the official layout (dicts with byte keys, uint8 (n, 3072))."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in (np.arange(n) + k) % 10],
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return directory


def labels(n_per_class: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(n_per_class)), n_per_class).astype(np.int64)


def check_invariants(splits, y_train, y_test, num_classes, *, disjoint_test=True):
    seen = np.concatenate([s.train_indices for s in splits])
    assert np.unique(seen).size == seen.size, "train indices overlap across nodes"
    if disjoint_test:
        tseen = np.concatenate([s.test_indices for s in splits])
        assert np.unique(tseen).size == tseen.size, "test indices overlap across nodes"
    for i, s in enumerate(splits):
        assert s.node == i
        assert s.train_indices.dtype == np.int64 and s.test_indices.dtype == np.int64
        assert np.bincount(y_train[s.train_indices], minlength=num_classes).tolist() == s.train_counts
        assert np.bincount(y_test[s.test_indices], minlength=num_classes).tolist() == s.test_counts
        assert s.classes == [c for c in range(num_classes) if s.train_counts[c] > 0]
        # grouped by class in class order, sorted inside each block
        key = y_train[s.train_indices] * (len(y_train) + 1) + s.train_indices
        assert np.all(np.diff(key) > 0)
        # test only from the node's own classes
        assert set(np.unique(y_test[s.test_indices]).tolist()) <= set(s.classes)


# ------------------------------------------------------------------ datasets


def test_unknown_dataset_lists_known():
    with pytest.raises(DatasetError, match="fashion-mnist, cifar10, synthetic"):
        load_dataset("mnist-ish")


def test_dataset_error_is_usage_error():
    assert issubclass(DatasetError, UsageError) and DatasetError.exit_code == 2


def test_fashion_mnist_missing_dir_says_how(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", missing)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert f in msg
    assert f"--data-dir {missing}" in msg


def test_fashion_mnist_missing_file_is_named(tmp_path):
    d = fake_fmnist(tmp_path / "f")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing t10k-labels-idx1-ubyte\.gz\)"):
        load_dataset("fashion-mnist", d)


@pytest.mark.parametrize("gz", [True, False])
def test_fake_fashion_mnist_loads(tmp_path, gz):
    ds = load_dataset("fashion_mnist", fake_fmnist(tmp_path / "f", gz=gz))
    assert ds.name == "fashion-mnist"
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "header promises 30x28x28 = 23520 bytes of data, file holds 23515"),
        (lambda b: b"\x01\x00" + b[2:], "magic starts with 0100"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "element type 0x0d"),
        (lambda b: b[:3] + b"\x02" + b[4:], "has 2 dimensions, expected 3"),
        (lambda b: b[:3], "shorter than the 4-byte magic"),
    ],
)
def test_malformed_idx_names_file_and_problem(tmp_path, mutate, message):
    d = fake_fmnist(tmp_path / "f", gz=False)
    target = d / "train-images-idx3-ubyte"
    target.write_bytes(mutate(target.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", d)
    assert str(target) in str(info.value) and message in str(info.value)


def test_corrupt_gzip_and_count_mismatch(tmp_path):
    d = fake_fmnist(tmp_path / "f")
    target = d / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:20])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz: corrupt or truncated gzip"):
        load_dataset("fashion-mnist", d)
    write_idx(target, np.arange(29) % 10, gz=True)
    with pytest.raises(DatasetError, match="holds 30 images but .* holds 29 labels"):
        load_dataset("fashion-mnist", d)
    write_idx(target, np.full(30, 10), gz=True)
    with pytest.raises(DatasetError, match="label 10 out of range"):
        load_dataset("fashion-mnist", d)


@pytest.fixture(scope="module")
def fmnist() -> Dataset:
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion-mnist")


@needs_fmnist
def test_real_fashion_mnist(fmnist):
    assert fmnist.x_train.shape == (60000, 1, 28, 28) and fmnist.x_test.shape == (10000, 1, 28, 28)
    assert fmnist.train_class_counts().tolist() == [6000] * 10
    assert fmnist.test_class_counts().tolist() == [1000] * 10
    assert fmnist.mean[0] == pytest.approx(0.2860, abs=1e-3) and fmnist.std[0] == pytest.approx(0.3530, abs=1e-3)
    assert abs(float(fmnist.x_train[:5000].mean())) < 0.05


@needs_fmnist
@needs_paper
@pytest.mark.parametrize("k", [3, 4, 5])
def test_paper_counts_scaled_to_fashion_mnist(fmnist, k):
    splits = partition(fmnist, 20, f"file:{PAPER / f'train_counts_{k}.txt'}", seed=0)
    m = counts_matrix(splits)
    assert m.sum(axis=0).tolist() == [6000] * 10
    raw = load_count_matrix(PAPER / f"train_counts_{k}.txt")
    assert ((m > 0) == (raw > 0)).all()
    # proportions kept: each entry within rounding of the exact scaled value
    exact = raw * 6000 / raw.sum(axis=0)
    assert np.abs(m - exact).max() < 1
    check_invariants(splits, fmnist.y_train, fmnist.y_test, 10)
    assert counts_matrix(splits, "test").sum(axis=0).tolist() == [1000] * 10


def test_cifar_missing_dir_lists_files(tmp_path):
    with pytest.raises(DatasetError, match="data_batch_1, .*test_batch, batches.meta"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="needs a data directory"):
        load_dataset("cifar10")


@pytest.mark.parametrize("use_parent", [False, True])
def test_fake_cifar_loads(tmp_path, use_parent):
    d = fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path if use_parent else d)
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.class_names[-1] == "truck" and len(ds.mean) == 3
    # channel layout: first 1024 bytes of a row are the red plane
    raw = pickle.loads((d / "data_batch_1").read_bytes())[b"data"]
    assert np.allclose(ds.x_train[0, 0], ds.normalise(raw[:1].reshape(1, 3, 32, 32))[0, 0])
    assert ds.y_train[:3].tolist() == [0, 1, 2]


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_refuses_foreign_globals(tmp_path):
    d = fake_cifar(tmp_path / "c")
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_3: not a CIFAR-10 batch: refusing to load global posix\.getcwd"):
        load_dataset("cifar10", d)


def test_cifar_protocol5_and_bad_shapes(tmp_path):
    d = fake_cifar(tmp_path / "c")
    good = pickle.loads((d / "test_batch").read_bytes())
    (d / "test_batch").write_bytes(pickle.dumps(good, protocol=5))
    assert load_dataset("cifar10", d).x_test.shape == (20, 3, 32, 32)
    # the official files were written by numpy 1 / Python 2: numpy.core.multiarray names
    old_style = pickle.dumps(good, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in old_style
    (d / "test_batch").write_bytes(old_style)
    assert np.array_equal(load_dataset("cifar10", d).y_test, np.asarray(good[b"labels"]))
    good[b"data"] = good[b"data"][:, :100]
    (d / "test_batch").write_bytes(pickle.dumps(good, protocol=4))
    with pytest.raises(DatasetError, match=r"test_batch: 'data' is uint8 \(20, 100\)"):
        load_dataset("cifar10", d)
    (d / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test_batch: not a CIFAR-10 batch"):
        load_dataset("cifar10", d)


def test_synthetic_deterministic_any_shape():
    a = load_dataset("synthetic", seed=5, synthetic_shape=(3, 8, 10), synthetic_classes=4, synthetic_train_size=40, synthetic_test_size=8)
    b = load_dataset("synthetic", seed=5, synthetic_shape=(3, 8, 10), synthetic_classes=4, synthetic_train_size=40, synthetic_test_size=8)
    c = load_dataset("synthetic", seed=6, synthetic_shape=(3, 8, 10), synthetic_classes=4, synthetic_train_size=40, synthetic_test_size=8)
    assert a.x_train.shape == (40, 3, 8, 10) and a.num_classes == 4
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.train_class_counts().tolist() == [10] * 4


def test_synthetic_is_learnable_by_nearest_centroid():
    ds = load_dataset("synthetic", seed=0, synthetic_train_size=500, synthetic_test_size=200)
    flat = ds.x_train.reshape(len(ds.y_train), -1)
    centroids = np.stack([flat[ds.y_train == c].mean(axis=0) for c in range(10)])
    pred = np.argmin(((ds.x_test.reshape(200, -1)[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.y_test).mean() > 0.5  # chance is 0.1


def test_synthetic_bad_args():
    with pytest.raises(DatasetError, match="at least 2 classes"):
        load_dataset("synthetic", synthetic_classes=1)
    with pytest.raises(DatasetError, match="seed"):
        load_dataset("synthetic", seed=-1)


# ---------------------------------------------------------------- partitions


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("iid", PartitionSpec("iid")),
        (" IID ", PartitionSpec("iid")),
        ("classes:4", PartitionSpec("classes", classes_per_node=4)),
        ("dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
        ("file:/x/y.txt", PartitionSpec("file", path=Path("/x/y.txt"))),
    ],
)
def test_parse_partition(spec, expected):
    assert parse_partition(spec) == expected
    assert parse_partition(str(expected)) == expected


@pytest.mark.parametrize("spec", ["", "iid:3", "classes", "classes:x", "classes:0", "dirichlet:-1", "dirichlet:nan", "file:", "shards:2"])
def test_parse_partition_errors_list_forms(spec):
    with pytest.raises(DatasetError, match="valid forms: iid, classes:K, dirichlet:ALPHA, file:PATH"):
        parse_partition(spec)


@st.composite
def label_sets(draw):
    num_classes = draw(st.integers(2, 6))
    per_class = draw(st.lists(st.integers(0, 40), min_size=num_classes, max_size=num_classes))
    per_class[0] = max(per_class[0], 30)
    test_per = draw(st.lists(st.integers(0, 12), min_size=num_classes, max_size=num_classes))
    return num_classes, labels(per_class), labels(test_per)


@FAST
@given(data=label_sets(), nodes=st.integers(1, 8), k=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_classes_scheme_properties(data, nodes, k, seed):
    num_classes, ytr, yte = data
    k = min(k, num_classes)
    splits = partition_labels(ytr, yte, num_classes, nodes, f"classes:{k}", seed=seed)
    check_invariants(splits, ytr, yte, num_classes)
    again = partition_labels(ytr, yte, num_classes, nodes, f"classes:{k}", seed=seed)
    assert all(np.array_equal(a.train_indices, b.train_indices) and np.array_equal(a.test_indices, b.test_indices) for a, b in zip(splits, again))
    totals = np.bincount(ytr, minlength=num_classes)
    m = counts_matrix(splits)
    holders = np.zeros((nodes, num_classes), dtype=int)
    # class assignment is balanced: holder counts differ by at most one
    from dslth_edge.data import assign_classes

    for i, cls in enumerate(assign_classes(nodes, num_classes, k, seed)):
        assert len(cls) == k == len(set(cls))
        holders[i, cls] = 1
    h = holders.sum(axis=0)
    assert h.max() - h.min() <= 1
    if nodes * k >= num_classes:
        assert (h > 0).all() and m.sum(axis=0).tolist() == totals.tolist()
    # even division per class
    for c in range(num_classes):
        col = m[holders[:, c] == 1, c]
        if col.size:
            assert col.max() - col.min() <= 1


@FAST
@given(data=label_sets(), nodes=st.integers(1, 6), alpha=st.floats(0.05, 10), seed=st.integers(0, 2**32))
def test_dirichlet_properties(data, nodes, alpha, seed):
    num_classes, ytr, yte = data
    splits = partition_labels(ytr, yte, num_classes, nodes, f"dirichlet:{alpha}", seed=seed, min_samples=3)
    check_invariants(splits, ytr, yte, num_classes)
    assert counts_matrix(splits).sum(axis=0).tolist() == np.bincount(ytr, minlength=num_classes).tolist()
    assert min(s.num_train for s in splits) >= 3


def test_dirichlet_min_samples_guaranteed_and_infeasible():
    y = labels([50, 50])
    splits = partition_labels(y, y, 2, 10, "dirichlet:0.01", seed=0, min_samples=9)
    assert min(s.num_train for s in splits) >= 9
    with pytest.raises(DatasetError, match="cannot give 11 nodes at least 10"):
        partition_labels(y, y, 2, 11, "dirichlet:1", seed=0, min_samples=10)


@FAST
@given(data=label_sets(), nodes=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_iid_properties(data, nodes, seed):
    num_classes, ytr, yte = data
    splits = partition_labels(ytr, yte, num_classes, nodes, "iid", seed=seed)
    seen = np.sort(np.concatenate([s.train_indices for s in splits]))
    assert np.array_equal(seen, np.arange(ytr.size))
    sizes = [s.num_train for s in splits]
    assert max(sizes) - min(sizes) <= 1
    assert sum(s.num_test for s in splits) == yte.size


@FAST
@given(
    matrix=st.integers(1, 5).flatmap(
        lambda n: st.lists(st.lists(st.integers(0, 50), min_size=3, max_size=3), min_size=n, max_size=n)
    ),
    per_class=st.lists(st.integers(1, 60), min_size=3, max_size=3),
)
def test_scale_counts_exact_totals(matrix, per_class):
    m = np.array(matrix, dtype=np.int64)
    out = scale_counts(m, per_class)
    for c in range(3):
        if m[:, c].sum():
            assert out[:, c].sum() == per_class[c]
            exact = m[:, c] * per_class[c] / m[:, c].sum()
            assert np.all(np.abs(out[:, c] - exact) < 1)
        else:
            assert (out[:, c] == 0).all()
    assert ((m == 0) <= (out == 0)).all()


def test_file_scheme_shape_errors(tmp_path):
    f = tmp_path / "counts.txt"
    f.write_text("1 2 3\n4 5 6\n")
    y = labels([10, 10, 10])
    with pytest.raises(DatasetError, match="has 2 rows \\(nodes\\) but the fleet has 3 nodes"):
        partition_labels(y, y, 3, 3, "file", partition_file=f, seed=0)
    with pytest.raises(DatasetError, match="has 3 columns \\(classes\\) but the dataset has 4"):
        partition_labels(labels([10, 10, 10, 10]), y, 4, 2, f"file:{f}", seed=0)
    y = labels([10, 10])
    f.write_text("1 2\n3\n")
    with pytest.raises(DatasetError, match="different lengths"):
        partition_labels(y, y, 2, 2, f"file:{f}", seed=0)
    f.write_text("1 x\n")
    with pytest.raises(DatasetError, match="line 1 holds a non-integer"):
        partition_labels(y, y, 2, 1, None, partition_file=f, seed=0)
    with pytest.raises(DatasetError, match="cannot read"):
        partition_labels(y, y, 2, 1, f"file:{tmp_path / 'missing.txt'}", seed=0)
    with pytest.raises(DatasetError, match="partition_file given but the scheme is iid"):
        partition_labels(y, y, 2, 1, "iid", partition_file=f, seed=0)
    f.write_text("1 0\n0 0\n")
    with pytest.raises(DatasetError, match=r"node\(s\) \[1\] get no training samples"):
        partition_labels(y, y, 2, 2, f"file:{f}", seed=0)


@needs_paper
def test_paper_counts_on_cifar_sized_labels_are_identity():
    raw = load_count_matrix(PAPER / "train_counts_3.txt")
    y = labels([5000] * 10)
    splits = partition_labels(y, labels([1000] * 10), 10, 20, f"file:{PAPER / 'train_counts_3.txt'}", seed=1)
    assert np.array_equal(counts_matrix(splits), raw)
    held = [sorted(int(c) for c in line.split()) for line in (PAPER / "classes_per_node_3.txt").read_text().split("\n") if line.strip()]
    assert [s.classes for s in splits] == held


def test_classes_too_many_and_bad_nodes():
    y = labels([5, 5])
    with pytest.raises(DatasetError, match="classes:3 asks for more classes"):
        partition_labels(y, y, 2, 2, "classes:3", seed=0)
    with pytest.raises(DatasetError, match="num_nodes"):
        partition_labels(y, y, 2, 0, "iid", seed=0)


def test_test_size_mode_proportional_from_own_classes():
    ytr, yte = labels([100, 50, 0, 30]), labels([20, 20, 20, 20])
    splits = partition_labels(ytr, yte, 4, 3, "classes:2", seed=2, test_size=30)
    check_invariants(splits, ytr, yte, 4, disjoint_test=False)
    for s in splits:
        available = sum(20 for c in s.classes)
        assert s.num_test == min(30, available)
        for c in range(4):
            if s.train_counts[c] == 0:
                assert s.test_counts[c] == 0


# -------------------------------------------------------------------- scarce


@FAST
@given(data=label_sets(), nodes=st.integers(1, 5), cap=st.integers(1, 50), seed=st.integers(0, 1000))
def test_scarce_properties(data, nodes, cap, seed):
    num_classes, ytr, yte = data
    base = partition_labels(ytr, yte, num_classes, nodes, "dirichlet:1.0", seed=seed, min_samples=1)
    small = scarce(base, cap, seed)
    check_invariants(small, ytr, yte, num_classes)
    for b, s in zip(base, small):
        assert s.num_train == min(cap, b.num_train)
        assert set(s.train_indices.tolist()) <= set(b.train_indices.tolist())
        if cap >= len(b.classes):
            assert s.classes == b.classes
            assert np.array_equal(s.test_indices, b.test_indices)
        assert set(s.test_indices.tolist()) <= set(b.test_indices.tolist())
    again = scarce(base, cap, seed)
    assert all(np.array_equal(a.train_indices, b.train_indices) for a, b in zip(small, again))


def test_scarce_keeps_proportions():
    y = labels([600, 300, 100])
    (s,) = partition_labels(y, y, 3, 1, "iid", seed=0, max_train_per_node=100)
    assert s.train_counts == [60, 30, 10]


# ------------------------------------------------------------------- batches


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), bs=st.integers(1, 70), seed=st.integers(0, 2**32), start=st.integers(0, 40))
def test_batches_resume_equals_uninterrupted(n, bs, seed, start):
    idx = np.arange(100, 100 + n, dtype=np.int64)
    stream = np.concatenate([batch_indices(idx, bs, t, seed) for t in range(start + 3)])
    for t in range(start, start + 3):
        b = batch_indices(idx, bs, t, seed)
        assert b.shape == (bs,)
        assert np.array_equal(b, stream[t * bs : (t + 1) * bs])
    # every epoch is a permutation of the indices
    epochs = (start + 3) * bs // n
    for e in range(epochs):
        assert np.array_equal(np.sort(stream[e * n : (e + 1) * n]), idx)


def test_batch_sampler_and_errors():
    idx = np.arange(10)
    s = BatchSampler(idx, 4, seed=3)
    got = list(s.steps(0, 5))
    assert all(np.array_equal(a, batch_indices(idx, 4, t, 3)) for t, a in enumerate(got))
    assert s.epoch_of(2) == 0 and s.epoch_of(3) == 1
    assert not np.array_equal(batch_indices(idx, 10, 0, 3), batch_indices(idx, 10, 0, 4))
    with pytest.raises(DatasetError, match="empty split"):
        batch_indices(np.zeros(0, dtype=np.int64), 4, 0, 0)
    with pytest.raises(DatasetError, match="batch_size"):
        batch_indices(idx, 0, 0, 0)
