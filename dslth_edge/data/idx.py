"""Fashion-MNIST from IDX files: memory-mapped uint8, gzip decompressed once to a cache.

IDX: two zero bytes, a type byte (0x08 = uint8), a dims byte, then ``ndim``
big-endian uint32 sizes, then the data in C order. An uncompressed IDX file is mapped
read-only (:class:`numpy.memmap`), so the images cost RAM only for the rows a process
touches, and processes on one machine share those pages. A gzipped file is
decompressed once into a cache file (``$DSLTH_EDGE_CACHE``, else
``$XDG_CACHE_HOME/dslth-edge/datasets``, else ``~/.cache/dslth-edge/datasets``), keyed
by the source's path, size and modification time, and that file is mapped; files
that decompress to less than :data:`CACHE_MIN_BYTES`, or a cache that cannot be
written, stay as uint8 in RAM. Channel statistics are computed by streaming the file,
not by touching the mapping.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dslth_edge.data.dataset import Dataset, build_dataset, channel_stats, stats_from_histograms
from dslth_edge.errors import DatasetError
from dslth_edge.util.atomic import atomic_write

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_CLASSES",
    "CACHE_ENV",
    "CACHE_MIN_BYTES",
    "default_cache_dir",
    "read_idx",
    "load_fashion_mnist",
]

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
#: Environment variable naming the directory for decompressed dataset files.
CACHE_ENV = "DSLTH_EDGE_CACHE"
#: Gzipped files decompressing to fewer bytes than this stay in RAM (no cache file).
CACHE_MIN_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """Where decompressed dataset files go (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dslth-edge" / "datasets"


def _check_header(name: Path, head: bytes, ndim: int, data_len: int) -> tuple[int, ...]:
    """Validate an IDX header against the bytes that follow it; returns the dims."""
    if len(head) < 4:
        raise DatasetError(f"{name}: not an IDX file: {len(head)} bytes, shorter than the 4-byte magic")
    if head[0] != 0 or head[1] != 0:
        raise DatasetError(f"{name}: not an IDX file: magic starts with {head[:2].hex()}, expected 0000")
    if head[2] != 0x08:
        raise DatasetError(f"{name}: IDX element type 0x{head[2]:02x} is not unsigned byte (0x08)")
    if head[3] != ndim:
        raise DatasetError(f"{name}: IDX file has {head[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DatasetError(f"{name}: truncated IDX header ({len(head)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", head[4:header])
    expected = math.prod(dims)
    if data_len != expected:
        shape = "x".join(str(d) for d in dims)
        raise DatasetError(f"{name}: IDX header promises {shape} = {expected} bytes of data, file holds {data_len}")
    return tuple(int(d) for d in dims)


def _from_bytes(name: Path, raw: bytes, ndim: int) -> np.ndarray:
    header = 4 + 4 * ndim
    dims = _check_header(name, raw[:header], ndim, max(0, len(raw) - header))
    return np.frombuffer(raw, dtype=np.uint8, count=math.prod(dims), offset=header).reshape(dims)


def _map(name: Path, path: Path, ndim: int) -> np.ndarray:
    """Map an uncompressed IDX file read-only (``name`` is what error messages call it)."""
    header = 4 + 4 * ndim
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(header)
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    dims = _check_header(name, head, ndim, max(0, size - header))
    if math.prod(dims) == 0:  # an empty mapping is not allowed
        return np.zeros(dims, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=dims)


def _gunzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def _gzip_size_hint(path: Path) -> int:
    """The decompressed size gzip records (ISIZE, modulo 2**32); 0 when unreadable."""
    try:
        with path.open("rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int(struct.unpack("<I", fh.read(4))[0])
    except (OSError, struct.error):
        return 0


def _cache_file(path: Path, cache_dir: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    return cache_dir / f"{stem}-{key}"


def _decompress_to(path: Path, target: Path) -> None:
    """Stream-decompress ``path`` into ``target`` atomically (:func:`~dslth_edge.util.atomic.atomic_write`)."""
    def copy(out: BinaryIO) -> None:
        with gzip.open(path, "rb") as src:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)

    atomic_write(target, copy)


def read_idx(
    path: Path,
    ndim: int,
    *,
    cache_dir: Path | None = None,
    cache_min_bytes: int = CACHE_MIN_BYTES,
) -> np.ndarray:
    """One IDX file of unsigned bytes with ``ndim`` dims, as a read-only uint8 array.

    Gzip is recognised by content, not by name. Uncompressed files are memory-mapped;
    gzipped ones are mapped from a decompressed cache file in ``cache_dir`` (default
    :func:`default_cache_dir`) when they decompress to ``cache_min_bytes`` or more,
    else held in RAM. Raises :class:`DatasetError` naming the file and the problem.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if magic != _GZIP_MAGIC:
        return _map(path, path, ndim)
    if _gzip_size_hint(path) < cache_min_bytes:
        return _from_bytes(path, _gunzip(path), ndim)
    try:
        target = _cache_file(path, cache_dir if cache_dir is not None else default_cache_dir())
        if not target.is_file():
            _decompress_to(path, target)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    except OSError:  # cache not writable: keep the bytes in RAM instead
        return _from_bytes(path, _gunzip(path), ndim)
    return _map(path, target, ndim)


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel statistics; a mapped file is streamed with ordinary reads, not through the mapping."""
    if not isinstance(images, np.memmap) or images.filename is None:
        return channel_stats(images.reshape(images.shape[0], 1, -1))
    hist = np.zeros(256, dtype=np.int64)
    left = int(images.size)
    buf = bytearray(_CHUNK)
    with open(images.filename, "rb") as fh:
        fh.seek(int(images.offset))
        while left > 0:
            n = fh.readinto(memoryview(buf)[: min(_CHUNK, left)])
            if not n:
                break
            hist += np.bincount(np.frombuffer(buf, dtype=np.uint8, count=n), minlength=256)
            left -= n
    return stats_from_histograms([hist])  # IDX images have one channel


def _fashion_mnist_help(directory: Path) -> str:
    names = ", ".join(f"{f}.gz" for f in FASHION_MNIST_FILES)
    return (
        f"apt-get install dataset-fashion-mnist (Debian) or put {names} "
        f"(gzipped or not) in {directory}, then pass --data-dir {directory}"
    )


def _find_idx(directory: Path, base: str) -> Path | None:
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(
    directory: Path = FASHION_MNIST_DIR,
    *,
    cache_dir: Path | None = None,
    cache_min_bytes: int = CACHE_MIN_BYTES,
) -> Dataset:
    """Fashion-MNIST from the four IDX files in ``directory`` (gzipped or not); images stay uint8."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"Fashion-MNIST not found: {directory} is not a directory; {_fashion_mnist_help(directory)}")
    paths = {base: _find_idx(directory, base) for base in FASHION_MNIST_FILES}
    missing = [f"{b}.gz" for b, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}); "
            f"{_fashion_mnist_help(directory)}"
        )
    arrays: dict[str, np.ndarray] = {}
    for base, p in paths.items():
        assert p is not None
        arrays[base] = read_idx(p, 3 if "images" in base else 1, cache_dir=cache_dir, cache_min_bytes=cache_min_bytes)
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
        n, h, w = images.shape
        parts.append((images.reshape(n, 1, h, w), np.array(labels, dtype=np.int64)))
    (xtr, ytr), (xte, yte) = parts
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetError(
            f"Fashion-MNIST in {directory}: train images {xtr.shape[2:]} and test images {xte.shape[2:]} differ in size"
        )
    return build_dataset("fashion-mnist", xtr, ytr, xte, yte, FASHION_MNIST_CLASSES,
                         stats=_stats(arrays["train-images-idx3-ubyte"]))
