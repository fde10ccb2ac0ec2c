"""The one rule for run directories: runs never mix.

Every command that writes a run (``train``, ``train --fleet``, ``simulate``, ``fleet run``)
opens its directory through :func:`open_node_dir` (one node) or :func:`open_run_dir`
(a whole fleet) with one of four modes:

``fresh`` (the default)
    the directory must not hold a run yet; one that does is refused, naming the way out.
``resume``
    continue the run from its checkpoint; a directory with no checkpoint is an error.
``resume-or-start``
    resume when there is a checkpoint, else clear whatever a run killed before its first
    checkpoint left and start fresh: what a restart loop (systemd ``Restart=on-failure``) needs.
``overwrite``
    clear the run that is there (only the files a run writes), then start fresh.

In every mode stale temporary files of interrupted atomic writes are removed first.
A resumed run must have been started with the same settings: :func:`check_same_settings`
compares the saved config.json with the new one and names every setting that differs.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.runs.rundir import NodePaths, remove_stale_temps

__all__ = ["RUN_MODES", "run_mode", "holds_run", "clear_run_dir", "open_node_dir", "open_run_dir",
           "check_same_settings", "check_rounds", "RUN_SETTINGS", "upgrade_model_record"]

log = logging.getLogger(__name__)

RUN_MODES = ("fresh", "resume", "resume-or-start", "overwrite")

#: files and folders a run writes (what ``--overwrite`` may delete); node-<i>/ folders too
_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "mask.npz", "summary.json", "summary.md", "exports",
              "resume")
_RUN_GLOBS = ("node-*", "worker-*.json", "worker-*.log", "*.png")

#: setting name -> the config.json entries that make it up (dotted paths)
RUN_SETTINGS: dict[str, tuple[str, ...]] = {
    "dataset": ("extra.dataset",),
    "partition": ("extra.partition", "extra.num_nodes", "extra.partition_seed", "extra.scarce", "extra.test_size"),
    "model": ("model.name", "model.input_shape", "model.num_classes", "model.keep", "model.granularity", "model.weight_init",
              "model.score_init",
              "layers"),
    "profile": ("profile", "extra.for_device", "extra.plan"),  # the profile and the plan made from it
    "algorithm": ("algorithm",),
    "seeds": ("seed", "model.weight_seed", "score_seed", "weights_fingerprint", "weights_file"),
    "topology": ("extra.topology", "neighbours"),
    "fleet": ("fleet",),
    "node id": ("node_id",),
}


def run_mode(resume: bool = False, resume_or_start: bool = False, overwrite: bool = False) -> str:
    """The mode from the three CLI flags (at most one may be given)."""
    given = [name for name, on in (("--resume", resume), ("--resume-or-start", resume_or_start),
                                   ("--overwrite", overwrite)) if on]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other: give one")
    if resume:
        return "resume"
    if resume_or_start:
        return "resume-or-start"
    return "overwrite" if overwrite else "fresh"


def _check_mode(mode: str) -> None:
    if mode not in RUN_MODES:
        raise UsageError(f"unknown run-directory mode {mode!r}; one of {', '.join(RUN_MODES)}")


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` (a run or a node directory) holds anything a run writes."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any((path / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "mask.npz",
                                               "summary.json")):
        return True
    return any(holds_run(p) for p in path.glob("node-*") if p.is_dir())


def clear_run_dir(path: str | Path) -> None:
    """Delete what a run wrote in ``path`` (its node folders, summaries, logs); other files stay."""
    path = Path(path)
    if not path.is_dir():
        return
    doomed = [path / name for name in _RUN_FILES] + [p for g in _RUN_GLOBS for p in path.glob(g)]
    for p in doomed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    remove_stale_temps(path)


def open_node_dir(node_dir: str | Path, mode: str) -> bool:
    """Apply the rule to one node's directory; returns True when the node resumes from its checkpoint."""
    _check_mode(mode)
    paths = NodePaths(Path(node_dir))
    removed = remove_stale_temps(paths.root)
    if removed:
        log.info("removed %d stale temporary file(s) in %s", removed, paths.root)
    has_ckpt = paths.checkpoint.is_file()
    if mode == "resume":
        if not has_ckpt:
            what = "no checkpoint yet (killed before its first one?)" if holds_run(paths.root) else "no run"
            raise CheckpointError(f"nothing to resume in {paths.root}: {what}; start without --resume, "
                                  "or use --resume-or-start")
        return True
    if mode == "resume-or-start":
        if has_ckpt:
            return True
        clear_run_dir(paths.root)
        return False
    if mode == "overwrite":
        clear_run_dir(paths.root)
        return False
    if holds_run(paths.root):
        raise CheckpointError(f"{paths.root} already holds a run; pass --resume to continue it, --overwrite to "
                              "replace it, or choose another --out")
    return False


def open_run_dir(run_dir: str | Path, mode: str, node_ids: Iterable[int]) -> dict[int, bool]:
    """Apply the rule to a fleet's run directory; returns, per node, whether it resumes.

    ``fresh`` refuses a directory holding any run (summary or node folders); ``resume``
    needs every node's checkpoint and names the nodes without one.
    """
    _check_mode(mode)
    root = Path(run_dir)
    ids = list(node_ids)
    if mode == "fresh" and holds_run(root):
        raise CheckpointError(f"{root} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --out")
    if mode == "overwrite":
        clear_run_dir(root)
    if mode == "resume":
        missing = [i for i in ids if not NodePaths.of(root, i).checkpoint.is_file()]
        if missing:
            raise CheckpointError(f"nothing to resume for node(s) {missing[:10]} in {root}: no checkpoint; "
                                  "start without --resume, or use --resume-or-start")
    if mode in ("resume", "resume-or-start"):
        for name in ("summary.json", "summary.md"):  # the summary of an earlier end is rewritten at the end
            (root / name).unlink(missing_ok=True)
    remove_stale_temps(root)
    per_node_mode = "fresh" if mode == "overwrite" else mode
    return {i: open_node_dir(NodePaths.of(root, i).root, per_node_mode) for i in ids}


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def upgrade_model_record(model: dict[str, Any]) -> dict[str, Any]:
    """A config.json ``model`` entry in today's form: runs written before the score init
    was selectable name their weight scheme ``init`` and drew kaiming-uniform scores."""
    if "init" not in model:
        return model
    out = {k: v for k, v in model.items() if k != "init"}
    out.setdefault("weight_init", model["init"])
    out.setdefault("score_init", "kaiming-uniform")
    return out


def check_same_settings(saved: dict[str, Any], now: dict[str, Any], where: str | Path) -> None:
    """Refuse to resume when any setting that shapes the run differs; every one is named.

    ``saved`` is the run's config.json, ``now`` what the new command would write
    (JSON-normalised here). Rounds may differ (see :func:`check_rounds`); so may paths
    such as the data directory.
    """
    if not isinstance(saved, dict):
        raise CheckpointError(f"cannot resume {where}: its config.json is malformed "
                              f"(a {type(saved).__name__}, not a JSON object)")
    now = json.loads(json.dumps(now))
    saved, now = ({**c, "model": upgrade_model_record(c["model"])} if isinstance(c.get("model"), dict) else c
                  for c in (saved, now))
    diffs = []
    for setting, keys in RUN_SETTINGS.items():
        changed = [k for k in keys if _get(saved, k) != _get(now, k)]
        if changed:
            k = changed[0]
            diffs.append(f"{setting} ({k}: saved {_short(_get(saved, k))}, now {_short(_get(now, k))})")
    if diffs:
        raise CheckpointError(f"cannot resume {where}: settings differ from the saved run in {'; '.join(diffs)}")


def check_rounds(done: int, rounds: int, where: str | Path) -> None:
    """``--rounds`` may grow a resumed run but not shrink it below the rounds already done."""
    if rounds < done:
        raise CheckpointError(f"cannot resume {where} with --rounds {rounds}: it has already done {done} rounds "
                              f"(give --rounds {done} or more)")
