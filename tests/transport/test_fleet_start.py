"""Start-up and deadlines over a real Mosquitto: a slow evaluation is waited for, MQTT 5 refused
falls back to 3.1.1, a node whose neighbours never come says it starts alone, and what the
nodes report is what `fleet watch` shows."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dslth_edge.errors import TransportError
from dslth_edge.fleet.device_node import NodeRunOptions, read_misses
from dslth_edge.fleet.watch import FleetWatch
from dslth_edge.runs.rundir import read_metrics
from dslth_edge.transport.broker import free_port
from dslth_edge.transport.messages import Hello
from dslth_edge.transport.mqtt import MqttTransport
from dslth_edge.transport.mqtt_options import MqttOptions

from .brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto
from .test_fleet_mqtt import fleet_options, run_masks, same, simulated_masks, start_threads

needs_mosquitto = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-identical to the simulator


@pytest.fixture
def mosquitto(tmp_path: Path):
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@needs_mosquitto
def test_slow_evaluation_before_the_last_round_is_waited_for(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Node 1's periodic evaluation before the last round takes 3 s (injected), as it does when its
    process is busy with hundreds of other nodes. The adaptive deadline learned from the cheap
    rounds allows 2 s; its neighbours are online, so they wait: no miss, masks as simulated."""
    rounds = 5  # the adaptive deadline learns from rounds 1-3 (round 0 is the start-up's): 2 s from round 4
    kw = dict(nodes=3, eval_every=rounds - 1)  # evaluate after round 3: node 1's last frame comes late
    sim = simulated_masks(tmp_path, rounds, **kw)
    opts = fleet_options(tmp_path, "mqtt", rounds, **kw)
    slowed: list[int] = []

    def on_start(node: Any) -> None:
        if node.config.node_id != 1:
            return
        evaluate = node.evaluate

        def slow_evaluate(*a: Any, **k: Any) -> Any:
            if node.round == rounds - 1:  # the evaluation between the last two rounds
                slowed.append(node.round)
                time.sleep(3.0)
            return evaluate(*a, **k)

        node.evaluate = slow_evaluate

    threads, errors = start_threads(opts, mosquitto.url, [0, 1, 2], NodeRunOptions(), on_start=on_start)
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert slowed == [rounds - 1]
    run_dir = Path(opts.out)
    for i in range(3):
        rows = read_metrics(run_dir / f"node-{i}" / "metrics.jsonl")
        assert [r["neighbours_heard"] for r in rows] == [2] * rounds, f"node {i} missed a neighbour"
        assert read_misses(run_dir / f"node-{i}") == {}
    assert same(sim, run_masks(run_dir, 3))
    # what the nodes reported is what a watcher sees from the broker alone
    with FleetWatch(MqttOptions(url=mosquitto.url), "t") as fw:
        fw.settle()
        views = fw.snapshot()
    assert [v.node for v in views] == [0, 1, 2]
    for v in views:
        assert (v.round, v.rounds, v.state, v.misses, v.status, v.trust) == (rounds, rounds, "done", 0, "offline", "crc")
        assert v.bytes_sent and v.bytes_sent > 0 and v.acc is not None and v.security == "crc"


class RefuseMqtt5:
    """A TCP proxy in front of a broker that answers an MQTT 5 CONNECT with "Unspecified error"
    (as RabbitMQ 3.10's MQTT plugin does) and passes MQTT 3.1.1 through."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        head = b""
        while len(head) < 9:  # fixed header (2+), "\x00\x04MQTT", protocol level
            chunk = conn.recv(64)
            if not chunk:
                conn.close()
                return
            head += chunk
        level = head[head.index(b"MQTT") + 4]
        if level == 5:
            conn.sendall(b"\x20\x03\x00\x80\x00")  # CONNACK, reason 0x80 Unspecified error, no properties
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.target))
        up.sendall(head)

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _transport(url: str, protocol: str, node: int = 0) -> MqttTransport:
    return MqttTransport(MqttOptions(url=url, protocol=protocol, connect_timeout_s=5.0), fleet="p", node_id=node,
                         neighbours=[1], hello=Hello(node=node, fleet="p", fingerprint="00"), max_frame_bytes=4096)


@needs_mosquitto
def test_auto_falls_back_to_311_when_mqtt5_is_refused(mosquitto: Mosquitto) -> None:
    proxy = RefuseMqtt5(mosquitto.port)
    try:
        with pytest.raises(TransportError, match="Unspecified error"):
            _transport(f"mqtt://127.0.0.1:{proxy.port}", "5").connect()
        t = _transport(f"mqtt://127.0.0.1:{proxy.port}", "auto").connect()
        try:
            assert t.connected and t.protocol_name == "3.1.1"
        finally:
            t.close()
    finally:
        proxy.close()


@needs_mosquitto
def test_node_without_neighbours_says_it_starts_alone(mosquitto: Mosquitto, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    opts = fleet_options(tmp_path, "alone", 1, nodes=2, topology="ring")
    nopts = NodeRunOptions(start_timeout_s=1.0, deadline_max_s=1.0, allow_solo=True)
    with caplog.at_level(logging.WARNING, logger="dslth_edge"):
        threads, errors = start_threads(opts, mosquitto.url, [0], nopts)  # node 1 never starts
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert any("node 0 starts alone" in r.getMessage() and "1" in r.getMessage() for r in caplog.records)
    assert read_misses(Path(opts.out) / "node-0") == {0: [1]}  # the round waited for node 1 and missed it
