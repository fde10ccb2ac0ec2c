"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The one way every room writes a file it must not lose: a private temporary file from
``mkstemp`` in the target's directory (same file system, so the rename is atomic; a
name nobody else can predict or race), its mode set *before* any data is written (a
secret never sits readable under a looser mode, even for an instant), the data
flushed and fsynced, an optional check of the finished temporary file, ``os.replace``
over the target, then an fsync of the directory so the rename survives a power cut.
Temporary names follow ``.<target name>.<random>.tmp`` (:data:`TEMP_GLOB` finds the
ones a killed writer left behind).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["DEFAULT_MODE", "TEMP_GLOB", "atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]

#: mode of a written file unless the caller asks for another (mkstemp alone would leave 0600)
DEFAULT_MODE = 0o644
#: what the temporary files of interrupted writes look like in a directory
TEMP_GLOB = ".*.tmp"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, mode: int = DEFAULT_MODE,
                 check: Callable[[Path], None] | None = None) -> Path:
    """Write ``path`` atomically with ``write(fh)`` filling a binary file; returns the path.

    ``mode``: the file's permission bits, set on the temporary file before ``write``
    runs. ``check``: called with the finished temporary file's path before it replaces
    anything; an exception from it leaves the target untouched. The parent directory
    is created if missing. On any failure the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = DEFAULT_MODE,
                       check: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    return atomic_write(path, lambda fh: fh.write(data), mode=mode, check=check)  # type: ignore[arg-type,return-value]


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = DEFAULT_MODE,
                      check: Callable[[Path], None] | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode, check=check)
