"""Atomic writes: mode before data, no half file on failure, a check that can veto, no temp left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dslth_edge.util import atomic
from dslth_edge.util.atomic import TEMP_GLOB, atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_with_the_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "secret.key"
    atomic_write_bytes(target, b"abc", mode=0o600)
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write_text(tmp_path / "pub.json", "{}")
    assert stat.S_IMODE((tmp_path / "pub.json").stat().st_mode) == 0o644
    assert not list(tmp_path.rglob(TEMP_GLOB))


def test_the_mode_is_set_before_any_data(tmp_path: Path) -> None:
    """A secret never sits in a file others could read, not even while it is being written."""
    seen: list[int] = []

    def write(fh) -> None:  # noqa: ANN001 - a binary file object
        seen.append(stat.S_IMODE(os.fstat(fh.fileno()).st_mode))
        fh.write(b"x")

    atomic_write(tmp_path / "k", write, mode=0o600)
    assert seen == [0o600]


def test_a_failed_write_or_check_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(fh) -> None:  # noqa: ANN001
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, boom)

    def veto(tmp: Path) -> None:
        assert tmp.parent == target.parent and tmp.read_text() == "new"
        raise ValueError("does not load")

    with pytest.raises(ValueError, match="does not load"):
        atomic_write_text(target, "new", check=veto)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_the_temp_file_is_private_and_in_the_target_directory(tmp_path: Path, monkeypatch) -> None:
    """mkstemp in the same directory (atomic rename, no predictable name), then a directory fsync."""
    made: list[str] = []
    real = atomic.tempfile.mkstemp

    def spy(*args, **kw):  # noqa: ANN002, ANN003
        fd, name = real(*args, **kw)
        made.append(name)
        return fd, name

    synced: list[str] = []
    monkeypatch.setattr(atomic.tempfile, "mkstemp", spy)
    monkeypatch.setattr(atomic, "fsync_dir", lambda d: synced.append(os.fspath(d)))
    atomic_write_bytes(tmp_path / "a.bin", b"1")
    atomic_write_bytes(tmp_path / "a.bin", b"2")
    assert len(made) == 2 and made[0] != made[1]
    assert all(Path(m).parent == tmp_path and Path(m).name.startswith(".a.bin.") for m in made)
    assert synced == [os.fspath(tmp_path)] * 2
    assert (tmp_path / "a.bin").read_bytes() == b"2"
