"""A fleet spread over several launchers: two `fleet run --only` processes against one
real Mosquitto form one fleet whose final masks are the simulator's, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dslth_edge.errors import UsageError
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.processes import FleetRunOptions, parse_node_slice, run_fleet
from dslth_edge.fleet.simulator import simulate
from dslth_edge.runs.rundir import load_mask, read_metrics
from tests.transport.brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto

NODES, ROUNDS = 4, 4
COMMON = ["--nodes", str(NODES), "--topology", "ring", "--dataset", "synthetic", "--model", "mcu-cnn",
          "--keep", "0.5", "--partition", "classes:2", "--rounds", str(ROUNDS), "--eval-every", "0", "--seed", "3"]


def test_parse_node_slice() -> None:
    assert parse_node_slice("0-3,8, 5", 10) == (0, 1, 2, 3, 5, 8)
    for bad in ("4", "1-", "x", "3-1", "-1"):
        with pytest.raises(UsageError):
            parse_node_slice(bad, 4)


def test_only_needs_a_shared_broker(tmp_path: Path) -> None:
    opts = FleetOptions(nodes=2, dataset="synthetic", model="mcu-cnn", keep=0.5, rounds=1, out=str(tmp_path / "r"))
    with pytest.raises(UsageError, match="--broker"):
        run_fleet(opts, FleetRunOptions(only=(0,)))


def test_two_slices_form_one_fleet(tmp_path: Path) -> None:
    if not os.path.exists(MOSQUITTO):
        pytest.skip(MOSQUITTO_MISSING)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the node processes run one thread each: the same sums
    try:
        simulate(FleetOptions(nodes=NODES, topology="ring", dataset="synthetic", model="mcu-cnn", keep=0.5,
                              partition="classes:2", rounds=ROUNDS, eval_every=0, seed=3, out=str(tmp_path / "sim")),
                 write_plots=False)
    finally:
        torch.set_num_threads(before)
    broker = Mosquitto(tmp_path / "mosquitto").start()
    run = tmp_path / "fleet"
    try:
        cmd = [str(Path(sys.executable).parent / "dslth-edge"), "fleet", "run", *COMMON, "--broker", broker.url,
               "--out", str(run), "--workers", "1", "--threads", "1", "--no-plots", "--json",
               "--round-deadline", "60"]
        procs = [subprocess.Popen([*cmd, "--only", only], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for only in ("0-1", "2-3")]
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        broker.stop()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
    answers = [json.loads(out) for out, _ in outs]
    for a, only in zip(answers, ([0, 1], [2, 3])):
        # a slice that sees every node's metrics complete writes the fleet's summary; else its own nodes
        assert a.get("slice") == only or [n["node"] for n in a["nodes"]] == list(range(NODES)), a
    for i in range(NODES):
        rows = read_metrics(run / f"node-{i}" / "metrics.jsonl")
        assert [r["round"] for r in rows] == list(range(ROUNDS))
        assert all(r["neighbours_heard"] == 2 for r in rows)  # ring neighbours across the two slices too
        sim = load_mask(tmp_path / "sim" / f"node-{i}" / "mask.npz").masks
        real = load_mask(run / f"node-{i}" / "mask.npz").masks
        assert all(np.array_equal(a, b) for a, b in zip(sim, real)), f"node {i}: masks differ from the simulator's"
