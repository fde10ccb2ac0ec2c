"""Secrets on disk: private directories, private files written without a window, private files read.

Stricter than a plain atomic write, because a secret must never be readable by anyone
else, not even for an instant, and a planted symlink must never redirect it:

* :func:`private_dir` refuses a directory this user does not own or others can write
  (they could swap a file between our checks and our rename), and creates a missing one 0700;
* :func:`write_private` writes through a fresh temporary file opened with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` and its mode set before any byte goes in, fsyncs it
  and renames it over the target (``os.replace`` replaces a symlink at the target, never
  what it points to); without ``overwrite`` an existing target is refused atomically
  (a hard link, which fails when the name exists);
* :func:`read_private` refuses a secret that is not a regular file, that others can read
  or write, or that is shorter than the secret needs.

POSIX only (the toolkit's devices are Linux); imports nothing of the project but ``errors``.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from dslth_edge.errors import UsageError

__all__ = ["private_dir", "read_private", "write_private"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def private_dir(path: str | Path, *, what: str = "directory") -> Path:
    """``path`` as a directory fit for secrets: created 0700 if missing; refused (UsageError)
    when it is not a directory, not owned by this user, or writable by group or others."""
    p = Path(path)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(p)
    except OSError as exc:
        raise UsageError(f"cannot create {what} {p}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {p} is not a directory")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise UsageError(f"{what} {p} belongs to uid {st.st_uid}, not to this user: refusing to write secrets there")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"{what} {p} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         f"refusing to write secrets there; chmod go-w it or pick another --out")
    return p


def write_private(path: str | Path, data: bytes, *, mode: int = 0o600, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte on, atomically (temp file +
    rename in the same directory). Without ``overwrite`` an existing ``path`` is a UsageError."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    except OSError as exc:
        raise UsageError(f"cannot create {tmp}: {exc.strerror or exc}") from exc
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; set before any data goes in
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target, follow_symlinks=False)  # fails if the name exists, even as a dangling link
                except FileExistsError:
                    raise UsageError(f"{target} exists; pass --force to replace it") from None
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def read_private(path: str | Path, *, what: str, min_bytes: int = 1, max_bytes: int = 1 << 16) -> bytes:
    """The bytes of secret file ``path``; UsageError when it is missing, not a regular file,
    readable or writable by group or others, shorter than ``min_bytes`` or longer than ``max_bytes``."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | _NOFOLLOW)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {p} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"{what} {p} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UsageError(f"{what} {p} is larger than {max_bytes} bytes: not a key file")
    if len(data) < min_bytes:
        raise UsageError(f"{what} {p} holds {len(data)} bytes; it needs at least {min_bytes}")
    return data
