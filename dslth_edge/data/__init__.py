"""Datasets and non-IID partitions across the nodes of a fleet.

Three datasets load into one :class:`Dataset` shape (NCHW float32, normalised per
channel with the training set's mean and standard deviation):

* ``fashion-mnist``: the four IDX files (gzipped or not), by default from Debian's
  ``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``;
* ``cifar10``: the "python version" batch directory ``cifar-10-batches-py``;
* ``synthetic``: seeded class prototypes plus noise, any shape and class count.

A partition scheme (:func:`parse_partition`) turns a dataset into one
:class:`NodeSplit` per node: index arrays into the dataset's train and test arrays.
Training indices of different nodes never overlap. Every random choice is drawn from
a :class:`numpy.random.SeedSequence` keyed by the caller's seed and a fixed purpose
tag, so the same seed gives the same split on every machine, and changing how one
step draws cannot shift the numbers another step sees.

Batches (:func:`batch_indices`) are a pure function of ``(seed, step)``: a run resumed
at step ``s`` sees exactly the batches an uninterrupted run sees from step ``s`` on.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from dslth_edge.errors import DatasetError
from dslth_edge.data.textmatrix import read_int_matrix

__all__ = [
    "KNOWN_DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "CIFAR10_FILES",
    "PARTITION_FORMS",
    "Dataset",
    "NodeSplit",
    "PartitionSpec",
    "BatchSampler",
    "load_dataset",
    "make_synthetic",
    "parse_partition",
    "load_count_matrix",
    "scale_counts",
    "partition",
    "partition_labels",
    "scarce",
    "counts_matrix",
    "batch_indices",
]

KNOWN_DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "synthetic")
_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "synthetic": "synthetic",
}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

CIFAR10_FILES: tuple[str, ...] = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

PARTITION_FORMS: tuple[str, ...] = ("iid", "classes:K", "dirichlet:ALPHA", "file:PATH")

# Purpose tags for SeedSequence spawn keys: one per independent random decision, so
# each stream is fixed by (seed, tag, ...) alone.
_TAG_SYN_PROTO = 1
_TAG_SYN_TRAIN = 2
_TAG_SYN_TEST = 3
_TAG_ASSIGN = 10
_TAG_IID = 11
_TAG_DIRICHLET = 12
_TAG_TRAIN_PERM = 13
_TAG_TEST_PERM = 14
_TAG_TEST_DRAW = 15
_TAG_SCARCE = 16
_TAG_BATCH = 20


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """A generator fixed by the seed and a spawn key naming what it is used for."""
    return np.random.default_rng(np.random.SeedSequence(_check_seed(seed), spawn_key=tuple(int(k) for k in key)))


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held in memory as normalised NCHW float32 arrays.

    ``mean``/``std`` are per channel, on the [0, 1] pixel scale, computed from the
    training images; ``x = (raw / 255 - mean) / std``. Use :meth:`normalise` to
    bring new uint8 images onto the same scale.
    """

    name: str
    x_train: np.ndarray  # (N, C, H, W) float32
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, C, H, W) float32
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
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def train_class_counts(self) -> np.ndarray:
        """Number of training samples per class, shape (num_classes,)."""
        return np.bincount(self.y_train, minlength=self.num_classes).astype(np.int64)

    def test_class_counts(self) -> np.ndarray:
        """Number of test samples per class, shape (num_classes,)."""
        return np.bincount(self.y_test, minlength=self.num_classes).astype(np.int64)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """uint8 NCHW images -> float32 on this dataset's normalised scale."""
        return _normalise(np.asarray(raw, dtype=np.uint8), self.mean, self.std)

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


def _channel_stats(u8: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std on the [0, 1] scale via a 256-bin histogram.

    A histogram is exact and cheap for uint8 (no float accumulation over 47M pixels).
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(u8.shape[1]):
        hist = np.bincount(u8[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = hist.sum()
        m = float((hist * values).sum() / total)
        var = float((hist * (values - m) ** 2).sum() / total)
        means.append(m)
        # A constant channel would divide by zero; leave it centred but unscaled.
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def _normalise(u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 -> float32 in place-friendly steps (one float32 copy, no float64 temp)."""
    x = u8.astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return x


def _build(
    name: str,
    train_u8: np.ndarray,
    y_train: np.ndarray,
    test_u8: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str],
) -> Dataset:
    mean, std = _channel_stats(train_u8)
    return Dataset(
        name=name,
        x_train=_normalise(train_u8, mean, std),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=_normalise(test_u8, mean, std),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        class_names=list(class_names),
        mean=mean,
        std=std,
    )


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
) -> Dataset:
    """Load a dataset by name ("fashion-mnist", "cifar10", "synthetic").

    ``data_dir``: for fashion-mnist the directory holding the IDX files (default
    :data:`FASHION_MNIST_DIR`); for cifar10 ``cifar-10-batches-py`` itself or its
    parent (required). ``seed`` and the ``synthetic_*`` options apply to "synthetic"
    only. Nothing is written anywhere. Raises :class:`DatasetError` when the data is
    missing or malformed, with the way to get it.
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    if key == "fashion-mnist":
        return _load_fashion_mnist(Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR)
    if key == "cifar10":
        return _load_cifar10(data_dir)
    return make_synthetic(
        seed=seed,
        shape=synthetic_shape,
        num_classes=synthetic_classes,
        train_size=synthetic_train_size,
        test_size=synthetic_test_size,
        noise=synthetic_noise,
    )


# ---------------------------------------------------------------- fashion-mnist (IDX)


def _fashion_mnist_help(directory: Path) -> str:
    names = ", ".join(f"{f}.gz" for f in FASHION_MNIST_FILES)
    return (
        f"apt-get install dataset-fashion-mnist (Debian) or put {names} "
        f"(gzipped or not) in {directory}, then pass --data-dir {directory}"
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes with ``ndim`` dims.

    IDX: two zero bytes, a type byte (0x08 = uint8), a dims byte, then ``ndim``
    big-endian uint32 sizes, then the data in C order.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    if len(raw) < 4:
        raise DatasetError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic")
    if raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file: magic starts with {raw[:2].hex()}, expected 0000")
    if raw[2] != 0x08:
        raise DatasetError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    if raw[3] != ndim:
        raise DatasetError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    actual = len(raw) - header
    if actual != expected:
        shape = "x".join(str(d) for d in dims)
        raise DatasetError(
            f"{path}: IDX header promises {shape} = {expected} bytes of data, file holds {actual}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _find_idx(directory: Path, base: str) -> Path | None:
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(directory: Path) -> Dataset:
    if not directory.is_dir():
        raise DatasetError(f"Fashion-MNIST not found: {directory} is not a directory; {_fashion_mnist_help(directory)}")
    paths = {base: _find_idx(directory, base) for base in FASHION_MNIST_FILES}
    missing = [f"{b}.gz" for b, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}); "
            f"{_fashion_mnist_help(directory)}"
        )
    arrays = {}
    for base, p in paths.items():
        assert p is not None
        arrays[base] = _read_idx(p, 3 if "images" in base else 1)
    parts = []
    for split in ("train", "t10k"):
        img_path, lab_path = paths[f"{split}-images-idx3-ubyte"], paths[f"{split}-labels-idx1-ubyte"]
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DatasetError(f"{lab_path}: label {int(labels.max())} out of range 0..9")
        parts.append((images[:, None, :, :], labels.astype(np.int64)))
    (xtr, ytr), (xte, yte) = parts
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetError(f"Fashion-MNIST in {directory}: train images {xtr.shape[2:]} and test images {xte.shape[2:]} differ in size")
    return _build("fashion-mnist", xtr, ytr, xte, yte, FASHION_MNIST_CLASSES)


# ------------------------------------------------------------------ cifar10 (pickle)


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Protocol-2 pickles from Python 3 store bytes as _codecs.encode(str, 'latin1')."""
    if encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1", errors)


def _numpy_attr(*candidates: str) -> Any:
    """First of several dotted names that exists (numpy 2 renamed numpy.core to numpy._core)."""
    import importlib

    for dotted in candidates:
        module, _, attr = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct")
    frombuffer = _numpy_attr("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        if reconstruct is not None:
            allowed[(mod, "_reconstruct")] = reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        if frombuffer is not None:
            allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays.

    CIFAR-10's batches are pickles, and a pickle can call any importable function.
    Refusing every global except numpy's array/dtype reconstruction (and latin-1
    string encoding) means a tampered batch file fails to load instead of running
    code. The user still has to trust the data itself.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            # encoding="bytes": the official files are Python 2 pickles with byte-string keys.
            return _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path}: not a CIFAR-10 batch: {exc}") from exc
    except Exception as exc:  # truncated/garbage pickles raise EOFError, ValueError, ...
        raise DatasetError(f"{path}: not a CIFAR-10 batch: {type(exc).__name__}: {exc}") from exc


def _get(d: Any, key: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 batch: holds {type(d).__name__}, expected dict")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetError(f"{path}: not a CIFAR-10 batch: no {key!r} entry")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data = _get(d, "data", path)
    labels = _get(d, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' is {desc}, expected uint8 (n, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: 'labels' is not a list of integers") from exc
    if y.shape[0] != data.shape[0]:
        raise DatasetError(f"{path}: {data.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= 10):
        raise DatasetError(f"{path}: labels outside 0..9")
    # Rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32), y


def _cifar_help() -> str:
    return (
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"unpack it and pass --data-dir pointing at cifar-10-batches-py (holding {', '.join(CIFAR10_FILES)}) "
        "or at its parent"
    )


def _load_cifar10(data_dir: str | Path | None) -> Dataset:
    if data_dir is None:
        raise DatasetError(f"CIFAR-10 needs a data directory: {_cifar_help()}")
    root = Path(data_dir)
    candidates = [root, root / "cifar-10-batches-py"]
    directory = next((c for c in candidates if (c / "data_batch_1").is_file()), None)
    if directory is None:
        raise DatasetError(f"CIFAR-10 not found in {root} (no data_batch_1 there or in {root / 'cifar-10-batches-py'}); {_cifar_help()}")
    missing = [f for f in CIFAR10_FILES[:-1] if not (directory / f).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 in {directory} is incomplete (missing {', '.join(missing)}); {_cifar_help()}")
    train = [_read_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = _read_cifar_batch(directory / "test_batch")
    names = list(CIFAR10_CLASSES)
    meta_path = directory / "batches.meta"
    if meta_path.is_file():  # optional: the class names are fixed anyway
        raw_names = _get(_unpickle(meta_path), "label_names", meta_path)
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
        except (TypeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_path}: 'label_names' is not a list of names") from exc
        if len(names) != 10:
            raise DatasetError(f"{meta_path}: {len(names)} label names, expected 10")
    xtr = np.concatenate([x for x, _ in train])
    ytr = np.concatenate([y for _, y in train])
    return _build("cifar10", xtr, ytr, xte, yte, names)


# ------------------------------------------------------------------------- synthetic


def make_synthetic(
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    train_size: int = 6000,
    test_size: int = 1000,
    noise: float = 6.0,
) -> Dataset:
    """A seeded, learnable image dataset: smooth class prototypes plus pixel noise.

    Each class has a prototype drawn at 1/4 resolution and upsampled (smooth blobs a
    small CNN picks up quickly); a sample is its class prototype plus Gaussian noise of
    standard deviation ``noise`` (prototype std is 1), quantised to uint8 like a real
    image and then normalised as the real datasets are. Labels are balanced.

    The default noise 6.0 keeps the task learnable but not saturated: a one-conv CNN
    reaches about 85% test accuracy after 40 SGD steps of 64 (noise 2: 100%; noise 8:
    about 70%), so algorithms still separate on it.
    """
    seed = _check_seed(seed)
    try:
        c, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"synthetic shape must be (C, H, W), got {shape!r}") from exc
    if min(c, h, w) < 1:
        raise DatasetError(f"synthetic shape must be positive, got {shape!r}")
    if num_classes < 2:
        raise DatasetError(f"synthetic dataset needs at least 2 classes, got {num_classes}")
    if train_size < num_classes or test_size < 1:
        raise DatasetError(
            f"synthetic sizes too small: train {train_size} (need >= {num_classes} classes), test {test_size}"
        )
    if not (noise >= 0 and math.isfinite(noise)):
        raise DatasetError(f"synthetic noise must be a finite number >= 0, got {noise!r}")
    ch, cw = -(-h // 4), -(-w // 4)
    coarse = _rng(seed, _TAG_SYN_PROTO).standard_normal((num_classes, c, ch, cw))
    protos = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    # Map roughly +-3 standard deviations of (prototype + noise) onto 0..255.
    scale = 127.5 / (3.0 * math.sqrt(1.0 + noise * noise))

    def draw(tag: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(seed, tag)
        y = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
        x = protos[y] + noise * rng.standard_normal((n, c, h, w))
        u8 = np.clip(np.rint(127.5 + scale * x), 0, 255).astype(np.uint8)
        return u8, y

    xtr, ytr = draw(_TAG_SYN_TRAIN, train_size)
    xte, yte = draw(_TAG_SYN_TEST, test_size)
    return _build("synthetic", xtr, ytr, xte, yte, [f"class{i}" for i in range(num_classes)])


# ------------------------------------------------------------------------ partitions


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


def _apportion(total: int, weights: Sequence[float] | np.ndarray) -> np.ndarray:
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
            out[:, c] = _apportion(int(totals[c]), counts[:, c])
    return out


def _assign_classes(num_nodes: int, num_classes: int, k: int, seed: int) -> list[list[int]]:
    """K distinct classes per node, every class held by floor/ceil(nK/C) nodes.

    Greedy: each node takes the K classes currently held by the fewest nodes, ties
    broken by a seeded random key; this keeps holder counts within one of each other,
    so every class is held as soon as n*K >= C.
    """
    rng = _rng(seed, _TAG_ASSIGN)
    held = np.zeros(num_classes, dtype=np.int64)
    out = []
    for _ in range(num_nodes):
        order = np.lexsort((rng.random(num_classes), held))
        chosen = sorted(int(c) for c in order[:k])
        held[chosen] += 1
        out.append(chosen)
    return out


def _dirichlet_counts(
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
    rng = _rng(seed, _TAG_DIRICHLET)
    counts = np.zeros((num_nodes, len(class_totals)), dtype=np.int64)
    for _attempt in range(100):
        for c, n_c in enumerate(class_totals):
            counts[:, c] = _apportion(int(n_c), rng.dirichlet(np.full(num_nodes, alpha))) if n_c else 0
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


def _materialise(
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
        idx = idx[_rng(seed, tag, c).permutation(idx.size)]
        bounds = np.concatenate([[0], np.cumsum(col)])
        for i in range(num_nodes):
            if col[i]:
                per_node[i].append(np.sort(idx[bounds[i] : bounds[i + 1]]))
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in per_node]


def _group_by_class(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorder indices by (label, index) to meet NodeSplit's grouping invariant."""
    return indices[np.lexsort((indices, labels[indices]))].astype(np.int64)


def _test_counts_per_node(
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
            share = np.minimum(_apportion(left, weights), room)
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
    seed = _check_seed(seed)
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
        perm = _rng(seed, _TAG_IID, 0).permutation(y_train.size).astype(np.int64)
        train_idx = [_group_by_class(p, y_train) for p in np.array_split(perm, num_nodes)]
        train_counts = np.array([np.bincount(y_train[p], minlength=num_classes) for p in train_idx], dtype=np.int64)
    else:
        if spec.kind == "classes":
            k = int(spec.classes_per_node or 0)
            if k > num_classes:
                raise DatasetError(f"classes:{k} asks for more classes per node than the {num_classes} the dataset has")
            assignment = _assign_classes(num_nodes, num_classes, k, seed)
            holders = np.zeros((num_nodes, num_classes), dtype=np.int64)
            for i, cls in enumerate(assignment):
                holders[i, cls] = 1
            # Each class's samples divided evenly among its holders (the remainder goes
            # one by one to the lowest-numbered holders; the authors' code gives all of
            # it to the last holder, a difference of a few samples).
            train_counts = scale_counts(holders, train_totals)
        elif spec.kind == "dirichlet":
            train_counts = _dirichlet_counts(train_totals, num_nodes, float(spec.alpha or 0), seed, min_samples)
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
        train_idx = _materialise(y_train, train_counts, seed, _TAG_TRAIN_PERM)

    # Personalized test split: from the node's own classes, proportional to its
    # training distribution.
    if test_size is None:
        if spec.kind == "iid":
            perm = _rng(seed, _TAG_IID, 1).permutation(y_test.size).astype(np.int64)
            test_idx = [_group_by_class(p, y_test) for p in np.array_split(perm, num_nodes)]
            test_counts = np.array([np.bincount(y_test[p], minlength=num_classes) for p in test_idx], dtype=np.int64)
        else:
            # Disjoint: each class's test samples are divided among the nodes holding
            # it, in proportion to their training counts of that class.
            test_counts = scale_counts(train_counts, test_totals)
            test_idx = _materialise(y_test, test_counts, seed, _TAG_TEST_PERM)
    else:
        # A fixed size per node generally needs more samples of a class than a
        # disjoint share leaves, so each node draws its own test set independently:
        # test sets may overlap across nodes. They are only evaluated, never trained
        # on, so the overlap leaks nothing; it only correlates the nodes' accuracies.
        test_counts = _test_counts_per_node(train_counts, test_totals, int(test_size))
        test_idx = []
        for i in range(num_nodes):
            parts = []
            for c in np.flatnonzero(test_counts[i]):
                pool = np.flatnonzero(y_test == c).astype(np.int64)
                pick = _rng(seed, _TAG_TEST_DRAW, i, int(c)).choice(pool.size, int(test_counts[i, c]), replace=False)
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


def scarce(splits: Sequence[NodeSplit], max_train_per_node: int, seed: int) -> list[NodeSplit]:
    """Subsample each node's training split to at most ``max_train_per_node``.

    Class proportions are kept (largest remainder), and every class the node holds
    keeps at least one sample when the budget allows, so ``classes`` and the test split
    stay as they were; a class that does drop out (budget below the number of held
    classes) leaves the test split as well. Which samples stay is drawn per (seed, node, class). Relies on the
    NodeSplit invariant that train indices are grouped by class.
    """
    seed = _check_seed(seed)
    if isinstance(max_train_per_node, bool) or not isinstance(max_train_per_node, (int, np.integer)) or max_train_per_node < 1:
        raise DatasetError(f"max_train_per_node must be a positive integer, got {max_train_per_node!r}")
    out = []
    for s in splits:
        counts = np.asarray(s.train_counts, dtype=np.int64)
        if s.num_train <= max_train_per_node:
            out.append(s)
            continue
        new = _apportion(int(max_train_per_node), counts)
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
            pick = _rng(seed, _TAG_SCARCE, s.node, int(c)).choice(block.size, int(new[c]), replace=False)
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


# --------------------------------------------------------------------------- batches


def batch_indices(indices: np.ndarray, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The indices of mini-batch ``step``: a pure function of (indices, batch_size, step, seed).

    The sample stream is the concatenation of per-epoch permutations of ``indices``
    (epoch e shuffled by a (seed, e) stream); batch t is positions
    ``[t*B, (t+1)*B)`` of that stream, wrapping into the next epoch(s) when it runs
    past the end. So resuming at step s reproduces an uninterrupted run exactly, and
    no state has to be checkpointed. Give each node its own seed.
    """
    seed = _check_seed(seed)
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
        perm = _rng(seed, _TAG_BATCH, epoch).permutation(n)
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
