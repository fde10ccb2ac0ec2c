"""Which nodes ``dslth-edge export`` exports, and in which format / dtype each.

Without ``--run`` the most recent run under ``runs/`` is exported (the run directory
whose node folders were modified last): every node of a fleet run, the single node of
a solo run. Each node's format and dtype come from its own profile's ``[export]``
table (TFLite Micro for profiles whose runtime is TFLite Micro), unless the command
line says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dslth_edge.errors import CheckpointError, UsageError

__all__ = ["DEFAULT_RUNS_DIR", "FIRST_RUN_HINT", "ExportTarget", "latest_run", "node_dirs", "resolve_targets", "node_defaults"]

DEFAULT_RUNS_DIR = "runs"
_TRAINING_FILES = ("config.json", "mask.npz", "metrics.jsonl", "checkpoint.pt")
FIRST_RUN_HINT = ("train one first, e.g. `dslth-edge train --profile jetson-nano --rounds 20` "
                  "or `dslth-edge simulate --nodes 4 --rounds 20`, or pass --run DIR")


@dataclass(frozen=True)
class ExportTarget:
    """One node to export: its directory, id, and the format / quantization it gets."""

    node_dir: Path
    node_id: int
    profile: str | None
    format: str  # "onnx" | "tflite" | "tflm"
    quantize: str  # "none" | "dynamic" | "int8"


def _is_node_dir(p: Path) -> bool:
    return p.is_dir() and p.name.startswith("node-") and (p / "config.json").is_file()


def node_dirs(run: Path) -> list[Path]:
    """The node-<i> directories of a run, by node id."""
    found = [p for p in run.glob("node-*") if _is_node_dir(p)]

    def key(p: Path) -> tuple[int, str]:
        tail = p.name.split("-", 1)[1]
        return (int(tail), p.name) if tail.isdigit() else (1 << 30, p.name)

    return sorted(found, key=key)


def latest_run(root: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The run under ``root`` trained last (by its nodes' newest training file; exports do not count)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"nothing to export: no --run given and no {root}/ directory here; {FIRST_RUN_HINT}")
    best: tuple[float, Path] | None = None
    for run in root.iterdir():
        nodes = node_dirs(run) if run.is_dir() else []
        if not nodes:
            continue
        stamp = max(f.stat().st_mtime for n in nodes for f in [n / name for name in _TRAINING_FILES] if f.exists())
        if best is None or stamp > best[0]:
            best = (stamp, run)
    if best is None:
        raise UsageError(f"nothing to export: {root}/ holds no run (no node-<i>/config.json); {FIRST_RUN_HINT}")
    return best[1]


def node_defaults(profile_name: str | None, fmt: str | None, quantize: str | None) -> tuple[str, str]:
    """(format, quantize) for a node: the explicit options, else its profile's ``[export]``.

    A profile whose runtime is TFLite Micro defaults to ``tflm``; a node without a
    profile defaults to onnx, fp32.
    """
    if fmt is not None and quantize is not None:
        return fmt, quantize
    prof_fmt, prof_q = "onnx", "none"
    if profile_name:
        from dslth_edge.exporters.tflm import runs_tflm

        from dslth_edge.device.profiles import load_profile

        prof = load_profile(profile_name)
        prof_fmt = "tflm" if runs_tflm(prof) else prof.export.format
        prof_q = "int8" if prof.export.dtype == "int8" else "none"
    return (fmt or prof_fmt), (quantize or prof_q)


def resolve_targets(run: str | Path | None, node: int | None, fmt: str | None, quantize: str | None,
                    *, runs_root: str | Path = DEFAULT_RUNS_DIR) -> list[ExportTarget]:
    """The nodes to export with their format and quantization.

    ``run``: a run directory, a node directory, or None for the latest run under
    ``runs_root``; ``node``: only that node.
    """
    import json

    run_dir = Path(run) if run is not None else latest_run(runs_root)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if _is_node_dir(run_dir):
        dirs = [run_dir]
        if node is not None and run_dir.name != f"node-{node}":
            raise UsageError(f"--run points at {run_dir.name} but --node is {node}")
    else:
        dirs = node_dirs(run_dir)
        if not dirs:
            raise CheckpointError(f"{run_dir} has no node-<i> directories: is it a run directory? ({FIRST_RUN_HINT})")
        if node is not None:
            dirs = [d for d in dirs if d.name == f"node-{node}"]
            if not dirs:
                raise CheckpointError(f"no node {node} in run {run_dir} (it has {', '.join(p.name for p in node_dirs(run_dir))})")
    targets = []
    for d in dirs:
        try:
            config = json.loads((d / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{d / 'config.json'} is unreadable: {exc}") from exc
        profile = config.get("profile") or None
        f, q = node_defaults(profile, fmt, quantize)
        tail = d.name.split("-", 1)[1]
        targets.append(ExportTarget(d, int(tail) if tail.isdigit() else 0, profile, f, q))
    return targets
