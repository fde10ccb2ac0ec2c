"""A fleet across two sites: two Mosquitto brokers bridged (``topic dslth/# both 1``), nodes 0-1
on one and 2-3 on the other (``fleet run --only``): the masks equal the simulator's."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from dslth_edge.fleet.device_node import NodeRunOptions
from dslth_edge.fleet.processes import FleetRunOptions, run_fleet
from dslth_edge.runs.rundir import read_metrics

from .brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto, wait_port
from .test_fleet_mqtt import fleet_options, run_masks, same, simulated_masks


def bridged(workdir: Path, remote_port: int) -> Mosquitto:
    """A Mosquitto that bridges every fleet topic, both ways, QoS 1, to the broker on ``remote_port``."""
    b = Mosquitto(workdir)
    b.conf.write_text(b.conf.read_text() + "\n".join([
        "connection site-b-to-a",
        f"address 127.0.0.1:{remote_port}",
        "topic dslth/# both 1",
        "cleansession true",
        "try_private true",
        "restart_timeout 1",
        "notifications false",
    ]) + "\n")
    return b


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING)
def test_fleet_split_across_bridged_brokers(tmp_path: Path) -> None:
    rounds = 3
    sim = simulated_masks(tmp_path, rounds, nodes=4)
    site_a = Mosquitto(tmp_path / "site-a").start()
    site_b = bridged(tmp_path / "site-b", site_a.port).start()
    try:
        assert wait_port(site_b.port)
        opts = fleet_options(tmp_path, "mqtt", rounds, nodes=4)
        results: dict[str, Any] = {}

        def run_slice(name: str, url: str, only: tuple[int, ...]) -> None:
            try:
                results[name] = run_fleet(opts, FleetRunOptions(broker_url=url, workers=1, only=only,
                                                                node=NodeRunOptions()), write_plots=False)
            except Exception as exc:  # noqa: BLE001 - reported below
                results[name] = exc

        slices = [threading.Thread(target=run_slice, args=("a", site_a.url, (0, 1))),
                  threading.Thread(target=run_slice, args=("b", site_b.url, (2, 3)))]
        for t in slices:
            t.start()
        for t in slices:
            t.join(240)
        assert not any(isinstance(r, Exception) for r in results.values()), results
        run_dir = Path(opts.out)
        for i in range(4):
            assert [r["neighbours_heard"] for r in read_metrics(run_dir / f"node-{i}" / "metrics.jsonl")] == [2] * rounds
        assert same(sim, run_masks(run_dir, 4)), "masks across the bridge differ from the simulator's"
        assert (run_dir / "summary.json").is_file()  # the slice that finished last wrote the fleet's summary
    finally:
        site_b.stop()
        site_a.stop()
