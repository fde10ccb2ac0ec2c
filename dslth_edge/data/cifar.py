"""CIFAR-10 from the "python version" batches, through a restricted unpickler.

CIFAR-10's batches are pickles, and a pickle can call any importable function; the
unpickler here resolves only numpy's array/dtype reconstruction (and latin-1 string
encoding), so a tampered batch file fails to load instead of running code. The
images stay uint8 (150 MB for the training set, 600 MB as float32).
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dslth_edge.data.dataset import Dataset, build_dataset
from dslth_edge.errors import DatasetError

__all__ = ["CIFAR10_FILES", "CIFAR10_CLASSES", "ArrayOnlyUnpickler", "load_cifar10"]

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


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Protocol-2 pickles from Python 3 store bytes as _codecs.encode(str, 'latin1')."""
    if encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1", errors)


def _numpy_attr(*candidates: str) -> Any:
    """First of several dotted names that exists (numpy 2 renamed numpy.core to numpy._core)."""
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


class ArrayOnlyUnpickler(pickle.Unpickler):
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
            return ArrayOnlyUnpickler(fh, encoding="bytes").load()
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


def load_cifar10(data_dir: str | Path | None) -> Dataset:
    """CIFAR-10 from the python batch directory ``data_dir`` (or its parent); images stay uint8."""
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
    return build_dataset("cifar10", xtr, ytr, xte, yte, names)
