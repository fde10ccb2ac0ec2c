"""The one rule for run directories, and the files in them: modes, settings check, temp files,
file modes, corrupt metrics lines, truncated masks."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest

from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.runs.guard import (RUN_SETTINGS, check_rounds, check_same_settings, clear_run_dir, holds_run,
                                   open_node_dir, open_run_dir, run_mode)
from dslth_edge.runs.rundir import atomic_write_bytes, load_mask, read_metrics, remove_stale_temps, save_mask

SAVED = {
    "node_id": 2, "fleet": "lab", "seed": 0, "score_seed": 123, "weights_fingerprint": "ab" * 32, "weights_file": None,
    "profile": "raspberry-pi-4", "neighbours": [1, 3], "layers": [{"name": "conv1", "shape": [8, 1, 3, 3], "keep": 0.5}],
    "model": {"name": "mcu-cnn", "input_shape": [1, 28, 28], "num_classes": 10, "keep": 0.5,
              "granularity": "unstructured", "init": "kaiming-normal", "weight_seed": 0},
    "algorithm": {"name": "mce-pl", "preset": "default", "lr": 0.1},
    "rounds": 10,
    "extra": {"dataset": "synthetic", "partition": "classes:2", "num_nodes": 4, "partition_seed": 0, "scarce": None,
              "test_size": None, "topology": "ring"},
}


@pytest.mark.parametrize("path, value, setting", [
    ("extra.dataset", "fashion-mnist", "dataset"),
    ("extra.partition", "iid", "partition"),
    ("extra.num_nodes", 5, "partition"),
    ("model.name", "paper-cnn", "model"),
    ("model.keep", 0.3, "model"),
    ("model.granularity", "channel", "model"),
    ("model.weight_init", "pytorch-default", "model"),
    ("model.score_init", "pytorch-default", "model"),
    ("profile", "jetson-nano", "profile"),
    ("algorithm.name", "consensus", "algorithm"),
    ("algorithm.preset", "paper", "algorithm"),
    ("seed", 1, "seeds"),
    ("model.weight_seed", 1, "seeds"),
    ("extra.topology", "full", "topology"),
    ("fleet", "other", "fleet"),
    ("node_id", 1, "node id"),
])
def test_every_setting_that_shapes_the_run_is_named(path: str, value: object, setting: str) -> None:
    now = copy.deepcopy(SAVED)
    cur = now
    *parents, last = path.split(".")
    for part in parents:
        cur = cur[part]
    cur[last] = value
    with pytest.raises(CheckpointError, match=f"settings differ from the saved run in {setting} \\("):
        check_same_settings(SAVED, now, "run/node-2")
    assert setting in RUN_SETTINGS


def test_a_run_from_before_the_score_init_resumes_as_what_it_drew() -> None:
    """config.json written before issue 26 names the weight scheme "init" and drew kaiming-uniform scores."""
    now = copy.deepcopy(SAVED)
    del now["model"]["init"]
    now["model"].update(weight_init="kaiming-normal", score_init="kaiming-uniform")
    check_same_settings(SAVED, now, "r")
    now["model"]["score_init"] = "pytorch-default"
    with pytest.raises(CheckpointError, match=r'model \(model.score_init: saved "kaiming-uniform", now "pytorch-default"'):
        check_same_settings(SAVED, now, "r")


def test_rounds_may_grow_but_not_shrink() -> None:
    now = copy.deepcopy(SAVED)
    now["rounds"] = 50
    now["extra"]["data_dir"] = "/elsewhere"  # paths are not settings
    check_same_settings(SAVED, now, "r")
    check_rounds(10, 50, "r")
    with pytest.raises(CheckpointError, match="already done 10 rounds"):
        check_rounds(10, 5, "r")


def test_modes(tmp_path: Path) -> None:
    assert run_mode() == "fresh" and run_mode(resume=True) == "resume"
    assert run_mode(resume_or_start=True) == "resume-or-start" and run_mode(overwrite=True) == "overwrite"
    with pytest.raises(UsageError, match="exclude each other"):
        run_mode(resume=True, overwrite=True)
    node = tmp_path / "run" / "node-0"
    assert open_node_dir(node, "fresh") is False
    with pytest.raises(CheckpointError, match="nothing to resume"):
        open_node_dir(node, "resume")
    node.mkdir(parents=True)
    (node / "config.json").write_text("{}")
    (node / "metrics.jsonl").write_text('{"round": 0}\n')
    assert holds_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="already holds a run"):
        open_node_dir(node, "fresh")
    with pytest.raises(CheckpointError, match="killed before its first one"):
        open_node_dir(node, "resume")
    assert open_node_dir(node, "resume-or-start") is False  # no checkpoint: starts over
    assert not (node / "metrics.jsonl").exists()
    (node / "config.json").write_text("{}")
    (node / "checkpoint.pt").write_bytes(b"x")
    assert open_node_dir(node, "resume-or-start") is True
    assert open_node_dir(node, "resume") is True
    assert open_node_dir(node, "overwrite") is False and not holds_run(node)


def test_fleet_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "fleet"
    for i in range(3):
        (run / f"node-{i}").mkdir(parents=True)
        (run / f"node-{i}" / "config.json").write_text("{}")
    (run / "node-0" / "checkpoint.pt").write_bytes(b"x")
    (run / "summary.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already holds a run"):
        open_run_dir(run, "fresh", range(3))
    with pytest.raises(CheckpointError, match=r"node\(s\) \[1, 2\]"):
        open_run_dir(run, "resume", range(3))
    assert open_run_dir(run, "resume-or-start", range(3)) == {0: True, 1: False, 2: False}
    clear_run_dir(run)
    assert not holds_run(run) and (run / "notes.txt").read_text() == "mine"  # only what a run writes goes


def test_atomic_files_are_0644_and_stale_temps_go(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    assert remove_stale_temps(tmp_path) == 1
    assert (tmp_path / "keep.tmp").exists() and not list(tmp_path.glob(".*.tmp"))


def test_corrupt_metrics_lines_are_reported_not_hiding_later_rounds(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0}\n{"round": 1, "lo\n[1, 2]\n{"round": 2}\n{"round": 3')
    bad: list[str] = []
    with caplog.at_level(logging.WARNING):
        rows = read_metrics(path, bad=bad)
    assert [r["round"] for r in rows] == [0, 2]  # the unfinished last line (a kill) is dropped silently
    assert len(bad) == 2 and ":2: not JSON" in bad[0]
    assert ":3: not a JSON object" in bad[1]
    assert "corrupt metrics line" in caplog.text


def test_load_mask_checks_the_bit_array_length(tmp_path: Path) -> None:
    masks = [np.ones((4, 3), dtype=bool), np.zeros((20,), dtype=bool)]
    save_mask(tmp_path / "m.npz", masks, ["a", "b"], b"\x01" * 32, {"round": 3})
    ok = load_mask(tmp_path / "m.npz")
    assert all(np.array_equal(x, y) for x, y in zip(ok.masks, masks))
    with np.load(tmp_path / "m.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["bits_1"] = arrays["bits_1"][:1]  # 20 bits need 3 bytes
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(CheckpointError, match="'b' has 1 bytes of mask bits.*needs 3"):
        load_mask(tmp_path / "cut.npz")
