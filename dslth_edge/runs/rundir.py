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
import zipfile
import zlib
from collections.abc import Sequence
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
    "check_checkpoint",
    "MAX_MASK_FILE_BYTES",
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
#: the most a mask.npz may inflate to (its arrays together): 1 bit per weight, so half a
#: billion weights; checked against the zip's declared sizes before anything is inflated
MAX_MASK_FILE_BYTES = 64 << 20
#: whatever can go wrong reading a damaged or hostile file: one CheckpointError line instead
#: (EOFError included: click would turn it into "Aborted!" and exit 130)
_LOAD_ERRORS = (OSError, EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError,
                NotImplementedError, OverflowError, MemoryError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error)


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


def _check_zip_sizes(path: Path, limit: int, what: str) -> None:
    """Refuse a zip whose members would inflate beyond ``limit`` bytes, before inflating any."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except _LOAD_ERRORS as exc:
        raise CheckpointError(f"{what} {path} is malformed: {exc or type(exc).__name__}") from exc
    declared = sum(info.file_size for info in infos)
    if declared > limit:
        raise CheckpointError(f"{what} {path} would inflate to {declared} bytes, more than {limit}: refused")


def load_checkpoint(path: str | Path, *, mask_shapes: Sequence[tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Load a checkpoint without unpickling code (``weights_only=True``) and check its shape
    (:func:`check_checkpoint`): anything wrong is one CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (run without --resume to start fresh)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if zipfile.is_zipfile(path):
        # torch stores its tensors uncompressed: a checkpoint that inflates far beyond its size is hostile
        _check_zip_sizes(path, max(64 << 20, 4 * size), "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    check_checkpoint(state, path, mask_shapes=mask_shapes)
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mask_list(value: Any, shapes: Sequence[tuple[int, ...]] | None, where: str) -> list[tuple[int, ...]]:
    """The shapes of a list of mask tensors; CheckpointError-ready ValueError when it is not one."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, torch.Tensor) for m in value):
        raise ValueError(f"{where} is not a list of tensors")
    got = [tuple(int(d) for d in m.shape) for m in value]
    if shapes is not None and got != [tuple(s) for s in shapes]:
        raise ValueError(f"{where} has layer shapes {got[:4]}, this model's are {[tuple(s) for s in shapes][:4]}")
    return got


def check_checkpoint(state: Any, path: str | Path, *, mask_shapes: Sequence[tuple[int, ...]] | None = None) -> None:
    """CheckpointError (naming ``path``) unless ``state`` has the shape a node's checkpoint has:
    a dict with an int ``round`` >= 0, a ``fingerprint``, ``model``/``optimizer`` dicts, and,
    when present, ``mbar`` and every ``peer_masks`` entry as lists of mask tensors of the same
    shapes (``mask_shapes``, the model's, when given; else those of the saved scores) and ``last_heard``
    as node -> round. A resume never starts on a file that would crash it mid-run."""
    try:
        if not isinstance(state, dict):
            raise ValueError(f"is a {type(state).__name__}, not a checkpoint dict")
        if "round" not in state:
            raise ValueError("has no 'round'")
        if not _is_int(state["round"]) or state["round"] < 0:
            raise ValueError(f"'round' is {str(state['round'])[:40]!r}, not a round number")
        for key in ("model", "optimizer"):
            if key in state and not isinstance(state[key], dict):
                raise ValueError(f"{key!r} is not a dict")
        if "fingerprint" in state and not isinstance(state["fingerprint"], str):
            raise ValueError("'fingerprint' is not a string")
        shapes = list(mask_shapes) if mask_shapes is not None else None
        if shapes is None and isinstance(state.get("model"), dict):
            # every masked layer saves its scores, shaped as its weights, in the model's layer order
            shapes = [tuple(v.shape) for k, v in state["model"].items()
                      if str(k).endswith(".scores") and isinstance(v, torch.Tensor)] or None
        if state.get("mbar") is not None:
            shapes = _mask_list(state["mbar"], shapes, "'mbar'")
        peers = state.get("peer_masks", {})
        if not isinstance(peers, dict):
            raise ValueError("'peer_masks' is not a dict")
        for j, masks in peers.items():
            if not str(j).isdigit():
                raise ValueError(f"'peer_masks' has a non-node key {str(j)[:20]!r}")
            _mask_list(masks, shapes, f"peer_masks[{j}]")
        heard = state.get("last_heard", {})
        if not isinstance(heard, dict) or not all(str(j).isdigit() and _is_int(r) for j, r in heard.items()):
            raise ValueError("'last_heard' is not a map of node -> round")
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} is malformed: it {exc}" if str(exc).startswith(("is ", "has "))
                              else f"checkpoint {path} is malformed: {exc}") from None


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
    """Read a mask.npz written by :func:`save_mask` (no pickles).

    Its declared sizes are checked before anything is inflated (at most
    :data:`MAX_MASK_FILE_BYTES`); a damaged, empty or hostile file is one CheckpointError
    naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no final mask at {path}: the run has not finished (or --node names another node)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"mask file {path} is empty")
    _check_zip_sizes(path, MAX_MASK_FILE_BYTES, "mask file")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in np.atleast_1d(data["names"])]
            masks = []
            for i in range(len(names)):
                shape = tuple(int(s) for s in np.atleast_1d(data[f"shape_{i}"]))
                if any(d < 0 for d in shape) or math.prod(shape) > 8 * MAX_MASK_FILE_BYTES:
                    raise ValueError(f"layer {names[i]!r} has an impossible shape {shape[:8]}")
                n = int(math.prod(shape))
                bits = data[f"bits_{i}"]
                if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != math.ceil(n / 8):
                    raise ValueError(f"layer {names[i]!r} has {bits.size} bytes of mask bits, its shape {shape} "
                                     f"needs {math.ceil(n / 8)}")
                masks.append(np.unpackbits(bits, count=n).astype(bool).reshape(shape))
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("its meta is not a JSON object")
            return MaskFile(masks, names, bytes(data["fingerprint"].tobytes()), meta)
    except _LOAD_ERRORS as exc:
        raise CheckpointError(f"mask file {path} is malformed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


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
