"""The key-frame interval is a node option that changes traffic only: the masks a fleet
learns, its losses and accuracies are the same at any interval; only the bytes differ,
from the first round where one run sends a key frame and the other a delta. Runs recorded before
the option existed (key frames every 10 rounds) resume as such, and only as such."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from dslth_edge.cli import cli
from dslth_edge.data import make_synthetic
from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.fleet.plan import FleetOptions, recorded_options
from dslth_edge.fleet.simulator import simulate
from dslth_edge.runs.rundir import load_mask, read_metrics
from dslth_edge.wire import KEY_INTERVAL

TINY = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=160, test_size=40, noise=2.0)
NODES, ROUNDS = 4, 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _opts(out: Path, **kw: Any) -> FleetOptions:
    base: dict[str, Any] = {"nodes": NODES, "topology": "ring", "dataset": "synthetic", "partition": "classes:2",
                            "model": "mcu-cnn", "rounds": ROUNDS, "eval_every": 2, "eval_samples": 10, "keep": 0.3,
                            "out": str(out), "profiles": ("jetson-nano",), "overrides": {"batch_size": 8, "lr": 1.0}}
    base.update(kw)
    return FleetOptions(**base)


def test_the_interval_changes_bytes_only(tmp_path: Path) -> None:
    rare = simulate(_opts(tmp_path / "rare", key_interval=100), dataset=TINY, write_plots=False)
    often = simulate(_opts(tmp_path / "often", key_interval=3), dataset=TINY, write_plots=False)
    for i in range(NODES):
        a = read_metrics(tmp_path / "rare" / f"node-{i}" / "metrics.jsonl")
        b = read_metrics(tmp_path / "often" / f"node-{i}" / "metrics.jsonl")
        assert [(r["loss"], r.get("acc"), r["keep_actual"]) for r in a] == [(r["loss"], r.get("acc"), r["keep_actual"]) for r in b]
        for x, y in zip(load_mask(tmp_path / "rare" / f"node-{i}" / "mask.npz").masks,
                        load_mask(tmp_path / "often" / f"node-{i}" / "mask.npz").masks, strict=True):
            assert np.array_equal(x, y)
    sent_rare = [r["bytes_sent"] for r in rare["per_round"]]
    sent_often = [r["bytes_sent"] for r in often["per_round"]]
    # round 0 is a key frame in both, round 3 only in the frequent run (after it, that run's
    # deltas may not reach back past its new key frame, so later sizes differ too)
    assert sent_often[:3] == sent_rare[:3]
    assert sent_often[3] > sent_rare[3]
    assert sum(sent_often) > sum(sent_rare)
    assert rare["options"]["key_interval"] == 100 and often["options"]["key_interval"] == 3


def test_the_default_and_its_bounds() -> None:
    assert FleetOptions().key_interval == KEY_INTERVAL
    with pytest.raises(UsageError, match="key interval"):
        FleetOptions(key_interval=0)


def test_a_run_recorded_before_the_option_resumes_at_10(tmp_path: Path) -> None:
    """Its resume record has no key_interval: it used 10, so it continues at 10 and refuses another."""
    assert recorded_options({"nodes": 3})["key_interval"] == 10
    assert recorded_options({"key_interval": 5})["key_interval"] == 5
    out = tmp_path / "old"
    simulate(_opts(out, rounds=2, key_interval=10), dataset=TINY, write_plots=False, checkpoint_every=1)
    record = next(out.glob("*/options.json"))
    options = json.loads(record.read_text())
    del options["key_interval"]  # as written before the option existed
    record.write_text(json.dumps(options))
    with pytest.raises(CheckpointError, match="key_interval"):
        simulate(_opts(out, rounds=3, key_interval=100), dataset=TINY, write_plots=False, resume=True)
    resumed = simulate(_opts(out, rounds=3, key_interval=10), dataset=TINY, write_plots=False, resume=True)
    assert resumed["rounds"] == 3 and resumed["simulator"]["resumed_from_round"] == 2


def test_every_fleet_command_offers_it() -> None:
    for command in (["simulate"], ["fleet", "run"], ["train"]):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--key-interval" in result.output
