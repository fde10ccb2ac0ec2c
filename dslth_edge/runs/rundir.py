"""The run directory of one node: atomic files, metrics lines, the final mask.

```
runs/<run-id>/node-<i>/
  config.json     resolved config          metrics.jsonl  one line per round
  checkpoint.pt   resumable state (atomic) mask.npz       final mask, bit-packed
```
Everything is written by :func:`dslth_edge.util.atomic.atomic_write_bytes` (re-exported
here for the rooms that write run files): a temporary file in the same directory, flushed,
fsynced and renamed over the target (then the directory is fsynced, so the rename survives a power
cut), so a node killed at any instant leaves either the old or the new file, never half of
one; files are 0644. A kill can leave a ``.<name>.*.tmp`` behind: :func:`remove_stale_temps`
(called when a run directory is opened, :mod:`dslth_edge.runs.guard`) deletes them.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslth_edge.errors import CheckpointError
from dslth_edge.util.atomic import DEFAULT_MODE, TEMP_GLOB, atomic_write_bytes

__all__ = [
    "NodePaths",
    "atomic_write_bytes",
    "write_json",
    "save_checkpoint",
    "load_checkpoint",
    "save_mask",
    "load_mask",
    "MaskFile",
    "read_metrics",
    "truncate_metrics",
    "remove_stale_temps",
    "FILE_MODE",
]

log = logging.getLogger(__name__)

#: mode of every file a run writes (mkstemp alone would leave 0600)
FILE_MODE = DEFAULT_MODE


@dataclass(frozen=True)
class NodePaths:
    """Paths of one node's run directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | Path, node_id: int) -> "NodePaths":
        return cls(Path(run_dir) / f"node-{node_id}")

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def mask(self) -> Path:
        return self.root / "mask.npz"

    @property
    def exports(self) -> Path:
        return self.root / "exports"


def remove_stale_temps(directory: str | Path) -> int:
    """Delete temporary files that interrupted atomic writes left in ``directory``; returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    n = 0
    for tmp in directory.glob(TEMP_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a state dict of tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (run without --resume to start fresh)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc


@dataclass(frozen=True)
class MaskFile:
    """A node's final mask as stored in mask.npz."""

    masks: list[np.ndarray]  # bool, one per masked layer
    names: list[str]
    fingerprint: bytes
    meta: dict[str, Any]


def save_mask(path: str | Path, masks: list[np.ndarray], names: list[str], fingerprint: bytes, meta: dict[str, Any]) -> None:
    """Write masks bit-packed (1 bit per weight) with layer names, shapes and fingerprint."""
    arrays: dict[str, np.ndarray] = {
        "names": np.array(names),
        "fingerprint": np.frombuffer(fingerprint, dtype=np.uint8),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    for i, m in enumerate(masks):
        arrays[f"shape_{i}"] = np.array(m.shape, dtype=np.int64)
        arrays[f"bits_{i}"] = np.packbits(np.asarray(m, dtype=bool).ravel())
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_mask(path: str | Path) -> MaskFile:
    """Read a mask.npz written by :func:`save_mask` (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no final mask at {path}: the run has not finished (or --node names another node)")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            masks = []
            for i in range(len(names)):
                shape = tuple(int(s) for s in data[f"shape_{i}"])
                n = int(np.prod(shape))
                bits = data[f"bits_{i}"]
                if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != math.ceil(n / 8):
                    raise ValueError(f"layer {names[i]!r} has {bits.size} bytes of mask bits, its shape {shape} "
                                     f"needs {math.ceil(n / 8)}")
                masks.append(np.unpackbits(bits, count=n).astype(bool).reshape(shape))
            return MaskFile(masks, names, bytes(data["fingerprint"].tobytes()), json.loads(str(data["meta"])))
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"mask file {path} is malformed: {exc}") from exc


def read_metrics(path: str | Path, *, bad: list[str] | None = None) -> list[dict[str, Any]]:
    """All metrics lines of a node.

    An unfinished last line (no newline: a kill mid-write) is ignored silently. Any other
    line that is not a JSON object is skipped, logged as a warning and, when ``bad`` is
    given, described there ("metrics.jsonl:7: …"): the rounds after it are still read.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    unfinished = lines.pop() if lines else ""  # "" when the file ends with a newline
    rows = []
    problems = []
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{ln}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{ln}: not a JSON object")
            continue
        rows.append(row)
    if unfinished.strip():
        try:
            row = json.loads(unfinished)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
    if problems:
        log.warning("%d corrupt metrics line(s) skipped, first: %s", len(problems), problems[0])
        if bad is not None:
            bad.extend(problems)
    return rows


def truncate_metrics(path: str | Path, before_round: int) -> None:
    """Keep only lines of rounds < ``before_round`` (a resume redoes the later ones)."""
    rows = [r for r in read_metrics(path) if r.get("round", 0) < before_round]
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
