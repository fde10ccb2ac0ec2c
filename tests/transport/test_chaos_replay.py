"""Chaos, part two: what a recorder on the broker and a node's own restart did to a fleet.

On a real Mosquitto, with the roster of ``dslth-edge keys init`` at its defaults, 3 nodes
on a ring (every node hears the other two) as threads of this process:

* cross-run replay: the frames of a finished run, recorded off the broker, are published
  into the next run (same roster, same fixed weights, another seed) as soon as node 0 is
  online;
* a signed hello of an earlier run (other fixed weights), replayed mid-run;
* a node that crashes and resumes from a checkpoint older than its last frame, so it
  re-does rounds its neighbours already hold, with other masks.

Pass: every honest mask is what its sender computed (bit-identical to ``simulate`` for
the two attacks; for the restart, which changes node 1's own trajectory, every node's view
of each neighbour is exactly the masks that neighbour last sent) and the attack is counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from dslth_edge.cli import cli
from dslth_edge.fleet.device_node import NodeRunOptions, run_fleet_node
from dslth_edge.fleet.plan import FleetOptions, plan_fleet
from dslth_edge.fleet.simulator import simulate
from dslth_edge.runs.rundir import load_mask, read_metrics
from dslth_edge.transport.messages import topic
from dslth_edge.transport.mqtt_options import MqttOptions

from .brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto

pytestmark = [pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING),
              pytest.mark.usefixtures("one_torch_thread")]

FLEET = "replay"
BASE = dict(nodes=3, topology="ring", dataset="synthetic", model="mcu-cnn", keep=0.5, partition="classes:2",
            eval_every=0, eval_samples=100, fleet_id=FLEET, weight_seed=7)




@pytest.fixture
def broker(tmp_path: Path):
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def roster(tmp_path: Path) -> Path:
    """The fleet's keys as `dslth-edge keys init` writes them by default."""
    out = tmp_path / "keys"
    result = CliRunner().invoke(cli, ["keys", "init", "--fleet", FLEET, "--nodes", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / "roster.json"


class Recorder:
    """A raw MQTT client reading (and later publishing) everything under the fleet's topics."""

    def __init__(self, port: int, name: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"dslth/{FLEET}/+/+", qos=1)
        self.client.loop_start()

    def of(self, node: int, kind: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic(FLEET, node, kind)]

    def send(self, node: int, kind: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic(FLEET, node, kind), payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _masks(run_dir: Path) -> list[list[np.ndarray]]:
    return [load_mask(run_dir / f"node-{i}" / "mask.npz").masks for i in range(BASE["nodes"])]


def _rounds_done(run_dir: Path, i: int) -> int:
    path = run_dir / f"node-{i}" / "metrics.jsonl"
    return len(read_metrics(path)) if path.exists() else 0


def _fleet(opts: FleetOptions, nopts: Callable[[int], NodeRunOptions], transports: dict[int, Any],
           nodes: dict[int, Any] | None = None, runner: Callable[..., None] | None = None) -> list[threading.Thread]:
    """Start every node of ``opts`` in its own thread; errors are raised by :func:`_join`."""
    plan = plan_fleet(opts)
    errors: list[str] = []

    def on_start(i: int, node: Any) -> None:
        transports[i] = node.transport
        if nodes is not None:
            nodes.setdefault(i, []).append(node)

    def run(i: int) -> None:
        try:
            if runner is not None:
                runner(plan, i, lambda node: on_start(i, node))
            else:
                run_fleet_node(plan, i, opts.out, nopts(i), on_start=lambda node: on_start(i, node))
        except Exception as exc:  # noqa: BLE001 - reported by _join
            errors.append(f"node {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(opts.nodes)]
    for t in threads:
        t.start()
    threads.append(errors)  # type: ignore[arg-type]
    return threads


def _join(threads: list[Any], timeout: float = 240.0) -> None:
    *workers, errors = threads
    end = time.monotonic() + timeout
    for t in workers:
        t.join(max(1.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in workers), "nodes did not finish"
    assert not errors, errors


def _opts(tmp_path: Path, name: str, rounds: int, seed: int) -> FleetOptions:
    return FleetOptions(out=str(tmp_path / name), rounds=rounds, seed=seed, **BASE)  # type: ignore[arg-type]


def _rejected(run_dir: Path, i: int) -> int:
    return sum(r["rejected"] for r in read_metrics(run_dir / f"node-{i}" / "metrics.jsonl"))


def test_cross_run_replay_with_keys_init_defaults_is_refused(broker: Mosquitto, roster: Path, tmp_path: Path) -> None:
    rounds = 4
    nopts = lambda i: NodeRunOptions(mqtt=MqttOptions(url=broker.url), round_deadline_s=30.0,  # noqa: E731
                                     checkpoint_every=rounds, roster=str(roster))
    # run 1 (seed 0), recorded off the broker by an outsider with read access
    recorder = Recorder(broker.port, "recorder")
    _join(_fleet(_opts(tmp_path, "run1", rounds, seed=0), nopts, {}))
    time.sleep(0.5)
    recorder.close()
    old_frames = recorder.of(1, "mask")
    assert len(old_frames) >= 3

    # run 2 (seed 1, same roster, same fixed weights): node 1's recorded frames of rounds 0..2,
    # published on its topic as soon as node 0 is online (before node 1's own)
    sim = _opts(tmp_path, "sim", rounds, seed=1)
    simulate(sim, write_plots=False)
    opts = _opts(tmp_path, "run2", rounds, seed=1)
    transports: dict[int, Any] = {}
    attacker = Recorder(broker.port, "attacker")
    threads = _fleet(opts, nopts, transports)
    end = time.monotonic() + 60
    while 0 not in transports and time.monotonic() < end:
        time.sleep(0.01)
    for frame in old_frames[:3]:
        attacker.send(1, "mask", frame)
    _join(threads)
    attacker.close()
    run_dir = Path(opts.out)
    assert all(np.array_equal(a, b) for ma, mb in zip(_masks(Path(sim.out)), _masks(run_dir)) for a, b in zip(ma, mb)), \
        "a replayed frame of the previous run changed a mask"
    # node 0 and node 2 both listen to node 1: each refused the three replayed frames
    assert _rejected(run_dir, 0) >= 3 and _rejected(run_dir, 2) >= 3, (_rejected(run_dir, 0), _rejected(run_dir, 2))


def test_replayed_earlier_run_hello_does_not_unplug_a_live_neighbour(broker: Mosquitto, roster: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    rounds = 6
    nopts = lambda i: NodeRunOptions(mqtt=MqttOptions(url=broker.url), round_deadline_s=30.0,  # noqa: E731
                                     checkpoint_every=rounds, roster=str(roster))
    # an earlier run with other fixed weights: its signed hellos, recorded
    recorder = Recorder(broker.port, "recorder")
    earlier = FleetOptions(out=str(tmp_path / "earlier"), rounds=1, **{**BASE, "weight_seed": 8})  # type: ignore[arg-type]
    _join(_fleet(earlier, nopts, {}))
    time.sleep(0.5)
    recorder.close()
    old_hellos = [h for h in recorder.of(1, "hello") if h]
    assert old_hellos

    sim = _opts(tmp_path, "sim", rounds, seed=0)
    simulate(sim, write_plots=False)
    opts = _opts(tmp_path, "run", rounds, seed=0)
    transports: dict[int, Any] = {}
    threads = _fleet(opts, nopts, transports)
    run_dir = Path(opts.out)
    end = time.monotonic() + 120
    while min(_rounds_done(run_dir, i) for i in range(3)) < 1 and time.monotonic() < end:
        time.sleep(0.05)
    attacker = Recorder(broker.port, "attacker")
    with caplog.at_level(logging.WARNING, logger="dslth_edge.transport.mqtt"):
        for _ in range(5):  # node 1's signed hello of the earlier run, as the retained one, again and again
            for hello in old_hellos:
                attacker.send(1, "hello", hello, retain=True)
            time.sleep(0.1)
        _join(threads)
    attacker.close()
    # (node 1 answers each replay with its own hello at once, so a neighbour that took one was
    # unplugged only for a moment: the warning it logs is the witness)
    marked = [r.getMessage() for r in caplog.records if "other fixed weights" in r.getMessage()]
    assert not marked and not any(1 in transports[i].incompatible for i in (0, 2)), \
        f"a replayed hello of an earlier run marked live node 1 incompatible: {marked}"
    assert all(np.array_equal(a, b) for ma, mb in zip(_masks(Path(sim.out)), _masks(run_dir)) for a, b in zip(ma, mb)), \
        "a replayed hello changed a mask"
    for i in (0, 2):
        assert transports[i].stats.dropped.get("stale hello", 0) >= 1, transports[i].stats.dropped


class _Crash(Exception):
    """Node 1 dies after a round, its last checkpoint two rounds older than its last frame."""


def test_sender_restart_replaces_its_old_bases(broker: Mosquitto, roster: Path, tmp_path: Path) -> None:
    rounds, crash_after, every = 9, 5, 4  # checkpoint after round 3; frames of rounds 4 and 5 re-done
    opts = _opts(tmp_path, "run", rounds, seed=0)
    run_dir = Path(opts.out)
    mq = MqttOptions(url=broker.url, resend_frames=1)  # the neighbours' round-4/5 frames are not sent again

    def nopts(i: int, resume: bool = False) -> NodeRunOptions:
        return NodeRunOptions(mqtt=mq, round_deadline_s=20.0, checkpoint_every=every if i == 1 else rounds,
                              roster=str(roster), resume=resume)

    def runner(plan: Any, i: int, on_start: Callable[[Any], None]) -> None:
        if i != 1:
            run_fleet_node(plan, i, opts.out, nopts(i), on_start=on_start)
            return

        def crash(result: Any) -> None:
            if result.round == crash_after:
                raise _Crash()

        with pytest.raises(_Crash):
            run_fleet_node(plan, 1, opts.out, nopts(1), on_start=on_start, on_round=crash)
        run_fleet_node(plan, 1, opts.out, nopts(1, resume=True), on_start=on_start)  # a new process, in effect

    transports: dict[int, Any] = {}
    nodes: dict[int, list[Any]] = {}
    _join(_fleet(opts, nopts, transports, nodes, runner))
    assert len(nodes[1]) == 2, "node 1 did not restart"
    assert [r["round"] for r in read_metrics(run_dir / "node-1" / "metrics.jsonl")] == list(range(rounds))

    def last_sent(node: Any) -> tuple[int, list[np.ndarray]]:
        r, masks = node.exchange.encoder.state()["sent"][-1]
        return r, [np.asarray(m) for m in masks]

    final = {i: nodes[i][-1] for i in range(3)}
    for i in range(3):
        r, sent = last_sent(final[i])
        assert r == rounds - 1
        for j in range(3):
            if j == i:
                continue
            held = [m.numpy() for m in final[j].algorithm.peer_masks[i]]
            assert all(np.array_equal(a, b) for a, b in zip(held, sent)), \
                f"node {j} holds masks of node {i} that node {i} never sent (a delta decoded on a stale base)"
