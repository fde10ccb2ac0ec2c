"""Solo training: run directory, exact resume, keep from the profile's plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.runs.rundir import load_mask, read_metrics
from dslth_edge.device.keep import MAX_LEARNING_KEEP
from dslth_edge.fleet.solo import TrainOptions, train


def _opts(out: Path, **kw: object) -> TrainOptions:
    base = dict(profile="raspberry-pi-4", dataset="synthetic", model="mcu-cnn", rounds=12, keep=0.3,
                out=str(out), eval_every=4, checkpoint_every=4, lr=0.5)
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


def test_run_directory_layout(tmp_path: Path) -> None:
    res = train(_opts(tmp_path / "run"))
    node = Path(res.node_dir)
    assert {p.name for p in node.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt", "mask.npz"}
    cfg = json.loads((node / "config.json").read_text())
    assert cfg["profile"] == "raspberry-pi-4" and cfg["model"]["name"] == "mcu-cnn"
    assert len(cfg["weights_fingerprint"]) == 64
    rows = read_metrics(node / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(12))
    assert rows[-1]["acc"] is not None and res.accuracy == rows[-1]["acc"]
    mask = load_mask(node / "mask.npz")
    kept = sum(int(m.sum()) for m in mask.masks) / sum(m.size for m in mask.masks)
    assert kept == pytest.approx(0.3, abs=0.01)


def test_interrupted_and_resumed_run_ends_with_the_same_mask(tmp_path: Path) -> None:
    straight = train(_opts(tmp_path / "a"))
    calls = {"n": 0}

    def stop_after_six() -> bool:
        calls["n"] += 1
        return calls["n"] == 6

    stopped = train(_opts(tmp_path / "b"), stop_requested=stop_after_six)
    assert stopped.stopped and stopped.rounds_done == 6
    resumed = train(_opts(tmp_path / "b", resume=True))
    assert not resumed.stopped and resumed.rounds_done == 12
    a, b = load_mask(Path(straight.node_dir) / "mask.npz"), load_mask(Path(resumed.node_dir) / "mask.npz")
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    rows = read_metrics(Path(resumed.node_dir) / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(12))
    ref = read_metrics(Path(straight.node_dir) / "metrics.jsonl")
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]


def test_resume_after_a_kill_restarts_from_the_last_periodic_checkpoint(tmp_path: Path) -> None:
    straight = train(_opts(tmp_path / "a"))
    calls = {"n": 0}

    def stop_after_six() -> bool:
        calls["n"] += 1
        return calls["n"] == 6

    train(_opts(tmp_path / "b", checkpoint_every=4), stop_requested=stop_after_six)
    # simulate a kill -9 between checkpoints: drop the stop-time checkpoint, keep round 4's
    node = tmp_path / "b" / "node-0"
    train(_opts(tmp_path / "c", rounds=4))
    (node / "checkpoint.pt").write_bytes((tmp_path / "c" / "node-0" / "checkpoint.pt").read_bytes())
    with open(node / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 6, "loss": 1.0')  # a line cut by the kill
    resumed = train(_opts(tmp_path / "b", resume=True))
    a, b = load_mask(Path(straight.node_dir) / "mask.npz"), load_mask(Path(resumed.node_dir) / "mask.npz")
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert [r["round"] for r in read_metrics(node / "metrics.jsonl")] == list(range(12))


def test_resume_refuses_other_settings_and_missing_runs(tmp_path: Path) -> None:
    train(_opts(tmp_path / "a", rounds=4))
    with pytest.raises(CheckpointError, match="settings differ"):
        train(_opts(tmp_path / "a", keep=0.5, resume=True))
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(_opts(tmp_path / "a"))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_opts(tmp_path / "empty", resume=True))


def test_keep_comes_from_the_plan(tmp_path: Path) -> None:
    res = train(_opts(tmp_path / "a", keep=None, rounds=1, profile="jetson-nano"))
    assert res.keep == MAX_LEARNING_KEEP and "capped" in res.keep_source
    # an MCU cannot train: the host trains on its behalf only when asked, and says so
    with pytest.raises(UsageError, match="can_train = false.*--for-device"):
        train(_opts(tmp_path / "b", keep=None, rounds=1, profile="nrf52840", model="paper-cnn", granularity="channel"))
    res = train(_opts(tmp_path / "b", keep=None, rounds=1, profile="nrf52840", model="paper-cnn", granularity="channel",
                      for_device=True))
    assert res.keep < MAX_LEARNING_KEEP and "bound by" in res.keep_source
    assert res.for_device == "nrf52840"
    cfg = json.loads((Path(res.node_dir) / "config.json").read_text())
    assert cfg["extra"]["for_device"] is True and "trained on this host for nrf52840" in cfg["extra"]["trained_by"]


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="rounds"):
        train(_opts(tmp_path / "a", rounds=0))
    with pytest.raises(UsageError, match="keep"):
        train(_opts(tmp_path / "a", keep=1.5))
