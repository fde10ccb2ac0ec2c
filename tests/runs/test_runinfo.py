"""runinfo: node directories, the node's data rebuilt from config.json, consistency checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dslth_edge.data import load_dataset, partition
from dslth_edge.errors import CheckpointError
from dslth_edge.runs.runinfo import load_run, node_data, resolve_node_dir


def test_fleet_split_is_rebuilt_exactly() -> None:
    config = {"seed": 0, "extra": {"dataset": "synthetic", "partition": "classes:2", "num_nodes": 4,
                                   "partition_seed": 7, "scarce": 100, "test_size": None}}
    ds, split = node_data(config, 2)
    want = partition(load_dataset("synthetic"), 4, "classes:2", seed=7, max_train_per_node=100)[2]
    assert np.array_equal(split.train_indices, want.train_indices)
    assert np.array_equal(split.test_indices, want.test_indices)
    with pytest.raises(CheckpointError, match="no node 4"):
        node_data(config, 4)


def test_node_dir_forms(trained_run) -> None:
    assert resolve_node_dir(trained_run) == (trained_run / "node-0", 0)
    assert resolve_node_dir(trained_run / "node-0") == (trained_run / "node-0", 0)


def test_loaded_model_matches_the_run(trained_run) -> None:
    info = load_run(trained_run)
    assert info.profile == "x86-host" and info.node_id == 0
    x, y = info.test_arrays()
    from dslth_edge.runs.runinfo import accuracy

    assert accuracy(info.model, x, y) == pytest.approx(info.recorded_accuracy)  # the run's own final evaluation
    xs, ys = info.test_arrays(50)
    assert len(xs) == 50 and len(set(ys.tolist())) == len(set(y.tolist()))  # spread over every class


def test_inconsistent_files_are_refused(trained_run, tmp_path) -> None:
    node = tmp_path / "run" / "node-0"
    shutil.copytree(trained_run / "node-0", node, ignore=shutil.ignore_patterns("exports"))
    cfg = json.loads((node / "config.json").read_text())
    cfg["weights_fingerprint"] = "00" * 32
    (node / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_run(node, load_data=False)
    shutil.copy(trained_run / "node-0" / "config.json", node / "config.json")
    (node / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="BatchNorm statistics"):
        load_run(node, load_data=False)
