"""The chaos suite, on a real Mosquitto and on the embedded broker: a hostile member, a
malicious outsider, a duplicate node id and a broker restart, all during one small
Ed25519 fleet run.

Pass: the run completes; every node's final masks equal the simulator's bit for bit;
the hostile inputs show up in the nodes' ``rejected`` metric; every node stays connected
(no paho network thread dies). Small on purpose: 4 nodes on a ring, MCU CNN, synthetic
data, a handful of rounds; nodes are threads of this process, each with its own client.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import torch
from paho.mqtt.enums import CallbackAPIVersion

from dslth_edge.errors import TransportError
from dslth_edge.fleet.device_node import NodeRunOptions, run_fleet_node
from dslth_edge.fleet.exchange import Exchange, key_request
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.fleet.simulator import simulate
from dslth_edge.learn.models import masked_layer_shapes
from dslth_edge.runs.rundir import load_mask, read_metrics
from dslth_edge.transport.identity import Identity, generate_keys
from dslth_edge.transport.messages import Hello, topic
from dslth_edge.transport.mqtt import MqttTransport
from dslth_edge.transport.mqtt_options import MqttOptions

BASE = dict(nodes=4, topology="ring", dataset="synthetic", model="mcu-cnn", keep=0.5, partition="classes:2",
            eval_every=0, eval_samples=200, fleet_id="chaos")
ROUNDS = 10
HOSTILE = 3  # the member whose key the attacker holds; its honest thread runs too
EPOCH = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-identical to the simulator


def _masks(run_dir: Path, nodes: int) -> list[list[np.ndarray]]:
    return [load_mask(run_dir / f"node-{i}" / "mask.npz").masks for i in range(nodes)]


def _rounds(run_dir: Path, i: int) -> int:
    return len(read_metrics(run_dir / f"node-{i}" / "metrics.jsonl"))


class Attacker:
    """A raw MQTT client doing what a hostile member and an outsider would."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker", protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0

    def send(self, node: int, kind: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic(BASE["fleet_id"], node, kind), payload, qos=1, retain=retain).wait_for_publish(10)
        self.sent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_chaos_run_equals_clean_run(broker: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(BASE["fleet_id"], BASE["nodes"], keys, epoch=EPOCH)
    roster = keys / "roster.json"

    def ident(i: int, epoch: int = EPOCH) -> Identity:
        return Identity.ed25519(fleet=BASE["fleet_id"], node_id=i, roster_path=roster, key_path=keys / f"node-{i}.key",
                                epoch=epoch)

    sim = FleetOptions(out=str(tmp_path / "sim"), rounds=ROUNDS, **BASE)  # type: ignore[arg-type]
    simulate(sim, write_plots=False)
    clean = _masks(Path(sim.out), BASE["nodes"])

    opts = FleetOptions(out=str(tmp_path / "mqtt"), rounds=ROUNDS, **BASE)  # type: ignore[arg-type]
    plan = plan_fleet(opts)
    # material: node 0's genuine masks, as frames of the previous run (epoch 4), signed by node 0
    n0 = make_node(plan, 0, None, None)
    shapes = masked_layer_shapes(n0.model)
    old_run = Exchange(node_id=0, shapes=shapes, fingerprint=n0.fingerprint, fleet=BASE["fleet_id"],
                       identity=ident(0, EPOCH - 1))
    replays = [old_run.encode([torch.ones_like(m) for m in n0.current_masks()], r) for r in range(ROUNDS)]
    # the hostile member's key signs frames naming node 0, and its own frame at round 2**32-1
    as_member = Exchange(node_id=0, shapes=shapes, fingerprint=n0.fingerprint, fleet=BASE["fleet_id"],
                         identity=ident(HOSTILE))
    forged = [as_member.encode([torch.ones_like(m) for m in n0.current_masks()], r) for r in range(ROUNDS)]
    own = Exchange(node_id=HOSTILE, shapes=shapes, fingerprint=n0.fingerprint, fleet=BASE["fleet_id"],
                   identity=ident(HOSTILE))
    far_future = own.encode(n0.current_masks(), (1 << 32) - 1)
    member = ident(HOSTILE)

    transports: dict[int, MqttTransport] = {}
    errors: list[str] = []
    nopts = NodeRunOptions(mqtt=MqttOptions(url=broker.url), round_deadline_s=30.0, checkpoint_every=1,
                           roster=str(roster))

    def run(i: int) -> None:
        try:
            run_fleet_node(plan, i, opts.out, nopts, on_start=lambda node: transports.__setitem__(i, node.transport))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(f"node {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(BASE["nodes"])]
    for t in threads:
        t.start()
    run_dir = Path(opts.out)
    attacker = None
    try:
        end = time.monotonic() + 120
        while min(_rounds(run_dir, i) for i in range(BASE["nodes"])) < 1 and time.monotonic() < end:
            time.sleep(0.05)
        attacker = Attacker(broker.port)
        # hostile member: frames for node 0 signed with its own key, on 0's topic and its own
        for frame in forged[:3]:
            attacker.send(0, "mask", frame)
            attacker.send(HOSTILE, "mask", frame)
        # a previous run's genuine frames of node 0 (other epoch), replayed
        for frame in replays:
            attacker.send(0, "mask", frame)
        attacker.send(HOSTILE, "mask", far_future)
        # floods: signed key requests for both its neighbours, and "online" statuses
        for r in range(40):
            attacker.send(HOSTILE, "ctl", member.seal("ctl", min(r, ROUNDS - 1), key_request(0, r)))
            attacker.send(HOSTILE, "ctl", member.seal("ctl", min(r, ROUNDS - 1), key_request(2, r)))
            attacker.send(HOSTILE, "status", b"online")
        # outsider: malformed retained hello and status on node 0's and node 1's topics
        for payload in (b'{"node": 1e999, "fleet": "chaos", "fingerprint": "00"}', b"[" * 10_000,
                        b"x" * 1_000_000, b"\xff\xfe invalid utf-8"):
            attacker.send(0, "hello", payload, retain=True)
            attacker.send(1, "status", payload, retain=True)
        # a second process with node 1's id is refused, and node 1 goes on
        with pytest.raises(TransportError, match="already running"):
            MqttTransport(MqttOptions(url=broker.url), fleet=BASE["fleet_id"], node_id=1, neighbours=[0, 2],
                          hello=Hello(node=1, fleet=BASE["fleet_id"], fingerprint=n0.fingerprint.hex()),
                          max_frame_bytes=1 << 20, identity=ident(1)).connect()
        attacker.close()
        attacker = None
        # and the broker goes away and comes back mid-run
        while min(_rounds(run_dir, i) for i in range(BASE["nodes"])) < 3 and time.monotonic() < end:
            time.sleep(0.05)
        alive_before = {i: t.connected for i, t in transports.items()}
        broker.restart(down_s=1.0)
        for t in threads:
            t.join(max(1.0, end + 120 - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "nodes did not finish"
    finally:
        if attacker is not None:
            attacker.close()
    assert not errors, errors
    assert all(alive_before.values()), alive_before
    for i in range(BASE["nodes"]):
        rows = read_metrics(run_dir / f"node-{i}" / "metrics.jsonl")
        assert [r["round"] for r in rows] == list(range(ROUNDS)), f"node {i}"
    assert all(np.array_equal(a, b) for ma, mb in zip(clean, _masks(run_dir, BASE["nodes"])) for a, b in zip(ma, mb)), \
        "a hostile input changed a mask"
    rejected = {i: sum(r["rejected"] for r in read_metrics(run_dir / f"node-{i}" / "metrics.jsonl"))
                for i in range(BASE["nodes"])}
    # node 0's and 2's neighbours heard every forged/replayed frame, the floods and the junk
    assert rejected[1] >= 3 + ROUNDS, rejected  # forged + replays on 0's topic (1 listens to 0)
    assert rejected[0] >= 3 + 1 + 30, rejected  # forged on 3's topic, round 2**32-1, key-request flood
    assert rejected[2] >= 3 + 1 + 30, rejected
    dropped = {i: dict(t.stats.dropped) for i, t in transports.items()}
    assert dropped[3].get("malformed or unverified hello", 0) >= 3 and dropped[0].get("malformed status", 0) >= 3, dropped
    assert not any(k.startswith("handler error") for d in dropped.values() for k in d), dropped
    assert json.dumps(dropped)  # reportable
