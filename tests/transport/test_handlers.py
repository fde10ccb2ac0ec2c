"""Every handler survives every input: hello/status/ctl parsing (property tests), the paho
callback guard, the fair byte-bounded receive path (per-sender queues, sizes checked on
arrival, reassembly bounded per sender), duplicate node ids, and paho's private PUBACK flag."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

import dslth_edge.transport.mqtt as transport_mqtt
from dslth_edge.errors import TransportError
from dslth_edge.transport.identity import Identity, generate_keys, incarnation_hex
from dslth_edge.transport.messages import Hello, parse_control, parse_status, topic
from dslth_edge.transport.mqtt import MqttTransport
from dslth_edge.transport.mqtt_client import paho_published_flag
from dslth_edge.transport.mqtt_options import MqttOptions

from .brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto

PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
HELLO_KEYS = ["node", "fleet", "fingerprint", "profile", "keep", "codecs", "protocol", "wire_version", "extra"]
hello_like = st.dictionaries(st.sampled_from(HELLO_KEYS) | st.text(max_size=8), json_values, max_size=10)
ctl_like = st.dictionaries(st.sampled_from(["type", "target", "round", "pid", "nonce", "instance"]) | st.text(max_size=8),
                           json_values, max_size=7)


def _payloads(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Raw bytes, JSON of near-valid objects, and those with a byte flipped or cut."""
    encoded = objects.map(lambda o: json.dumps(o, allow_nan=True).encode())
    return st.one_of(
        st.binary(max_size=300),
        encoded,
        st.tuples(encoded, st.integers(0, 400), st.integers(0, 255)).map(
            lambda t: t[0][: t[1] % (len(t[0]) + 1)] + bytes([t[2]]) + t[0][t[1] % (len(t[0]) + 1) + 1:]),
    )


HOSTILE = [
    b'{"node": 1e999, "fleet": "t", "fingerprint": "00"}',
    b'{"node": 1, "fleet": "t", "fingerprint": "00", "keep": [1e999]}',
    b'{"node": NaN, "fleet": "t", "fingerprint": "00"}',
    b'{"node": 99999999999999999999999, "fleet": "t", "fingerprint": "00"}',
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b"\xff\xfe\xfd invalid utf-8 \xc3\x28",
    b'{"node": 1, "fleet": "t", "fingerprint": "\xed\xa0\x80"}',
    b"x" * 1_000_000,
    b'{"node": true, "fleet": "t", "fingerprint": "00"}',
    b'{"type": "key-request", "target": 1e999}',
    b'{"type": "key-request", "target": [[[[1]]]]}',
    b"",
]


@PROPERTY
@given(_payloads(hello_like))
def test_hello_parsing_raises_only_value_error(data: bytes) -> None:
    try:
        hello = Hello.from_bytes(data)
    except ValueError:
        return
    assert isinstance(hello.node, int) and isinstance(hello.fleet, str)
    assert Hello.from_bytes(hello.to_bytes()) == hello


@PROPERTY
@given(_payloads(ctl_like))
def test_control_parsing_raises_only_value_error(data: bytes) -> None:
    try:
        msg = parse_control(data)
    except ValueError:
        return
    assert isinstance(msg["type"], str) and not any(isinstance(v, (dict, list)) for v in msg.values())


@PROPERTY
@given(st.one_of(st.binary(max_size=40), st.sampled_from([b"online", b"offline", b"online\x00", b"ONLINE"])))
def test_status_parsing_raises_only_value_error(data: bytes) -> None:
    try:
        assert parse_status(data) == data.decode()
    except ValueError:
        assert data not in (b"online", b"offline")


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_are_value_errors(payload: bytes) -> None:
    for parse in (Hello.from_bytes, parse_control, parse_status):
        with pytest.raises(ValueError):
            parse(payload)


def _transport(node: int = 0, neighbours: tuple[int, ...] = (1,), max_message: int | None = None,
               **kw: Any) -> MqttTransport:
    options = MqttOptions(url="mqtt://127.0.0.1:9", **({"max_message_bytes": max_message} if max_message else {}))
    return MqttTransport(options, fleet="t", node_id=node, neighbours=neighbours,
                         hello=Hello(node=node, fleet="t", fingerprint="00"), max_frame_bytes=1 << 16, **kw)


def _message(t: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=t.encode())
    msg.payload = payload
    msg.retain = retain
    return msg


def test_every_handler_survives_every_hostile_input() -> None:
    """Each hostile payload on each topic kind: no exception out of the paho callback, drops counted."""
    tr = _transport()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unconnected")  # publish() just queues
    for kind in ("hello", "status", "ctl", "mask"):
        for payload in HOSTILE:
            tr._on_message(client, None, _message(topic("t", 1, kind), payload))
            tr._on_message(client, None, _message(topic("t", 0, kind), payload))  # our own topics too
    assert tr.stats.dropped["malformed or unverified hello"] == len(HOSTILE) - 1  # an empty hello clears, not counted
    assert tr.stats.dropped["malformed status"] == len(HOSTILE)
    assert 1 not in tr.peers and tr.online == set()
    got = tr.poll(0)
    assert {e.kind for e in got} <= {"ctl", "mask"}
    assert tr.take_dropped() >= 2 * len(HOSTILE) - 1 and tr.take_dropped() == 0


def test_handler_error_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a handler raises stays in the handler: counted per cause, logged once."""
    tr = _transport()

    def boom(self: MqttTransport, client: object, sender: int, payload: bytes) -> None:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(MqttTransport, "_on_hello", boom)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            tr._on_message(None, None, _message(topic("t", 1, "hello"), b"{}"))  # type: ignore[arg-type]
    assert tr.stats.dropped["handler error (OverflowError)"] == 3
    assert sum("OverflowError" in r.getMessage() for r in caplog.records) == 1


def test_inbox_is_bounded_oldest_dropped() -> None:
    tr = _transport(inbox_limit=10)
    for i in range(50):
        tr._on_message(None, None, _message(topic("t", 1, "ctl"), str(i).encode()))  # type: ignore[arg-type]
    got = tr.poll(0)
    assert [e.payload for e in got] == [str(i).encode() for i in range(40, 50)]
    assert tr.stats.dropped["sender queue full"] == 40


def test_a_flooding_member_cannot_evict_a_neighbours_frame() -> None:
    """5,000 tiny messages on member 3's own mask topic, after node 1's frame arrived and
    before the round loop polls: node 1's frame is still there (the old shared inbox of
    4,096 messages dropped it), the flood costs only member 3's own queue, counted."""
    tr = _transport(neighbours=(1, 3))
    honest = b"DSLM honest frame of node 1"
    tr._on_message(None, None, _message(topic("t", 1, "mask"), honest))  # type: ignore[arg-type]
    for i in range(5000):
        tr._on_message(None, None, _message(topic("t", 3, "mask"), b"DSLM" + i.to_bytes(2, "little")))  # type: ignore[arg-type]
    got = tr.poll(0)
    assert [e.payload for e in got if e.sender == 1] == [honest]
    assert len([e for e in got if e.sender == 3]) <= 256
    assert tr.stats.dropped["sender queue full"] >= 5000 - 256 and tr.take_dropped() >= 5000 - 256


def test_sizes_are_checked_on_arrival_and_the_inbox_stays_within_its_budget() -> None:
    """2 MiB messages on a member's ctl and mask topics are dropped in the network thread,
    before anything is queued; big-but-legal frames cost their sender's share only."""
    tr = _transport(neighbours=(1, 3))
    for _ in range(50):
        tr._on_message(None, None, _message(topic("t", 3, "ctl"), b"x" * (2 << 20)))  # type: ignore[arg-type]
        tr._on_message(None, None, _message(topic("t", 3, "mask"), b"DSLM" + bytes(2 << 20)))  # type: ignore[arg-type]
    assert tr._inbox.total_bytes == 0  # nothing waits: no poll ran, yet nothing was kept
    assert tr.stats.dropped["oversized control message"] == 50 and tr.stats.dropped["oversized mask message"] == 50
    # frames of the largest legal size: member 3 fills its own share, never more
    big = b"DSLM" + bytes((1 << 16) - 4)
    tr._on_message(None, None, _message(topic("t", 1, "mask"), b"DSLM one"))  # type: ignore[arg-type]
    for _ in range(200):
        tr._on_message(None, None, _message(topic("t", 3, "mask"), big))  # type: ignore[arg-type]
        assert tr._inbox.waiting(3)[1] <= tr._inbox.limits.sender_bytes
        assert tr._inbox.total_bytes <= tr._inbox.limits.total_bytes
    assert tr.stats.dropped["sender queue full"] > 0
    assert [e.payload for e in tr.poll(0) if e.sender == 1] == [b"DSLM one"]


def test_chunk_floods_are_bounded_per_sender() -> None:
    """A member opening chunk sets on its own topic cannot push out a neighbour's half-received frame."""
    from dslth_edge.wire import Chunker

    tr = _transport(neighbours=(1, 3), max_message=1000)
    frame = b"DSLM" + bytes(range(256)) * 10
    parts = Chunker(1000).split(frame)
    assert len(parts) >= 3
    tr._on_message(None, None, _message(topic("t", 1, "mask"), parts[0]))  # type: ignore[arg-type]
    junk = Chunker(1000)
    for i in range(300):  # first chunks of 300 frames that never complete
        tr._on_message(None, None, _message(topic("t", 3, "mask"), junk.split(bytes([i % 256]) * 2600)[0]))  # type: ignore[arg-type]
    for part in parts[1:]:
        tr._on_message(None, None, _message(topic("t", 1, "mask"), part))  # type: ignore[arg-type]
    assert [e.payload for e in tr.poll(0) if e.sender == 1] == [frame]
    assert tr._reassembler.pending_of(3)[0] <= 4 and tr._reassembler.pending_of(1) == (0, 0)


def test_sealed_frames_pass_reassembly_whole(tmp_path: Path) -> None:
    """A sealed frame small enough for one message is a whole frame, not a malformed chunk."""
    tr = _transport()
    sealed = Identity.crc(fleet="t", node_id=1).seal("mask", 0, b"DSLM payload")
    tr._on_message(None, None, _message(topic("t", 1, "mask"), sealed))  # type: ignore[arg-type]
    assert [e.payload for e in tr.poll(0)] == [sealed]
    assert tr.stats.chunk_errors == 0 and not tr.stats.dropped


def test_status_flood_resends_at_most_once_per_gap() -> None:
    tr = _transport()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unconnected")
    tr._recent.append([b"frame"])
    for _ in range(100):
        tr._on_message(client, None, _message(topic("t", 1, "status"), b"online"))
    assert tr.stats.resent == 1 and tr.stats.dropped["status flood"] == 97  # two repeats tolerated (retained + live)
    assert tr.online == {1}
    # the flood left one deferred resend: served once, before our next frame, not per frame
    tr._client = client
    for _ in range(5):
        tr.publish(b"frame")
    assert tr.stats.resent == 2


def _recording(client: mqtt.Client, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """What ``client`` is asked to publish, in order (it still queues it)."""
    sent: list[tuple[str, bytes]] = []
    real = client.publish

    def publish(t: str, payload: Any = None, qos: int = 0, retain: bool = False, properties: Any = None) -> Any:
        sent.append((t, bytes(payload)))
        return real(t, payload, qos, retain, properties)

    monkeypatch.setattr(client, "publish", publish)
    return sent


def _drop_and_return(tr: MqttTransport, client: mqtt.Client, sender: int = 1) -> None:
    """A neighbour seen online, then its last will, then online again at once."""
    status = topic("t", sender, "status")
    for payload in (b"online", b"offline", b"online"):
        tr._on_message(client, None, _message(status, payload))  # type: ignore[arg-type]


def test_a_return_within_the_gap_is_resent_before_our_next_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A neighbour that drops and returns within the resend gap (a connection amqtt dropped
    at start-up, a broker restart) still gets our recent frames, and before our next one:
    otherwise that frame shows it we are past the round it lacks, and it moves on without
    our frame of that round (the chaos test's rare failure on the embedded broker)."""
    tr = _transport()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unconnected")
    sent = _recording(client, monkeypatch)
    tr._client = client
    tr.publish(b"frame of round 0")
    _drop_and_return(tr, client)
    tr.publish(b"frame of round 1")
    masks = [p for t, p in sent if t == topic("t", 0, "mask")]
    assert len(masks) == 4 and len(set(masks[:3])) == 1 and masks[3] != masks[0], masks  # r0, r0, r0 again, r1
    assert tr.stats.resent == 2


def test_a_deferred_resend_is_served_by_poll_once_the_gap_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node waiting in its round (not publishing) serves the deferred resend from poll()."""
    tr = _transport()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unconnected")
    tr._client = client
    tr._recent.append([b"frame"])
    _drop_and_return(tr, client)
    tr.poll(0)
    monkeypatch.setattr(transport_mqtt, "_RESEND_GAP_S", 0.0)  # the gap has passed
    tr.poll(0)
    assert tr.stats.resent == 2


def test_sealed_hello_of_another_epoch_is_refused(tmp_path: Path) -> None:
    generate_keys("t", 2, tmp_path, epoch=3)
    ids = [Identity.ed25519(fleet="t", node_id=i, roster_path=tmp_path / "roster.json",
                            key_path=tmp_path / f"node-{i}.key") for i in (0, 1)]
    old = Identity.ed25519(fleet="t", node_id=1, roster_path=tmp_path / "roster.json",
                           key_path=tmp_path / "node-1.key", epoch=2)
    tr = _transport(identity=ids[0])
    hello = Hello(node=1, fleet="t", fingerprint="00").to_bytes()
    tr._on_message(None, None, _message(topic("t", 1, "hello"), old.seal("hello", 0, hello)))  # type: ignore[arg-type]
    tr._on_message(None, None, _message(topic("t", 1, "hello"), hello))  # type: ignore[arg-type]
    assert 1 not in tr.peers and tr.stats.dropped["malformed or unverified hello"] == 2
    fresh = Hello(node=1, fleet="t", fingerprint="00", seen=(incarnation_hex(0, ids[0].incarnation),)).to_bytes()
    tr._on_message(None, None, _message(topic("t", 1, "hello"), ids[1].seal("hello", 0, fresh)))  # type: ignore[arg-type]
    assert tr.peers[1].node == 1


def _hello_of(identity: Identity, *seen: Identity) -> bytes:
    """Node ``identity``'s sealed hello, listing the incarnations of ``seen``."""
    listed = tuple(incarnation_hex(s.node_id, s.incarnation) for s in seen)
    return identity.seal("hello", 0, Hello(node=identity.node_id, fleet="t", fingerprint="00", seen=listed).to_bytes())


def test_a_hello_is_taken_only_once_it_proves_it_is_of_this_run(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake: a neighbour's hello counts once it lists our current incarnation; a
    recording of an earlier run (or of the neighbour before its restart) never does."""
    generate_keys("t", 2, tmp_path)  # keys init's defaults: per-run
    mine = Identity.ed25519(fleet="t", node_id=0, roster_path=tmp_path / "roster.json", key_path=tmp_path / "node-0.key")
    ours_before = Identity.ed25519(fleet="t", node_id=0, roster_path=tmp_path / "roster.json",
                                   key_path=tmp_path / "node-0.key")  # node 0 in an earlier run
    one = [Identity.ed25519(fleet="t", node_id=1, roster_path=tmp_path / "roster.json",
                            key_path=tmp_path / "node-1.key") for _ in range(3)]  # node 1: three processes
    tr = _transport(identity=mine)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unconnected")
    sent = _recording(client, monkeypatch)

    def hello(payload: bytes) -> None:
        tr._on_message(client, None, _message(topic("t", 1, "hello"), payload))  # type: ignore[arg-type]

    hello(_hello_of(one[0], ours_before))  # an earlier run's hello: it knows node 0's old incarnation only
    assert 1 not in tr.peers and tr.peer_incarnation(1) is None and tr.stats.dropped["stale hello"] == 1
    hello(_hello_of(one[1]))  # node 1's first hello of this run: it has not heard us yet
    assert 1 not in tr.peers
    ours = [Hello.from_bytes(mine.open(p, sender=0, kind="hello").payload) for t, p in sent
            if t == topic("t", 0, "hello")]
    assert incarnation_hex(1, one[1].incarnation) in ours[-1].seen  # answered at once: "I heard you"
    hello(_hello_of(one[1], mine))  # node 1 heard our answer
    assert tr.peers[1].node == 1 and tr.peer_incarnation(1) == one[1].incarnation
    hello(_hello_of(one[2], mine))  # node 1 restarted: a new incarnation, proven fresh
    assert tr.peer_incarnation(1) == one[2].incarnation and tr.take_returned() == {1}
    hello(_hello_of(one[1], mine))  # its previous process's hello, replayed: never again
    assert tr.peer_incarnation(1) == one[2].incarnation and tr.stats.dropped["stale hello"] == 2
    assert tr.take_dropped() == 0  # honest traffic looks like this too: not in the rejected count


def test_fixed_epoch_takes_hellos_without_the_proof(tmp_path: Path) -> None:
    generate_keys("t", 2, tmp_path, epoch_policy="fixed")
    ids = [Identity.ed25519(fleet="t", node_id=i, roster_path=tmp_path / "roster.json",
                            key_path=tmp_path / f"node-{i}.key") for i in (0, 1)]
    assert not ids[0].fresh
    tr = _transport(identity=ids[0])
    tr._on_message(None, None, _message(topic("t", 1, "hello"), _hello_of(ids[1])))  # type: ignore[arg-type]
    assert tr.peer_incarnation(1) == ids[1].incarnation


def test_paho_published_flag_still_exists() -> None:
    """transport.mqtt_client.paho_published_flag reads paho's private MQTTMessageInfo._published:
    this fails loudly when a paho release renames or drops it."""
    assert "_published" in mqtt.MQTTMessageInfo.__slots__, (
        f"paho-mqtt {getattr(mqtt, '__version__', '?')} has no MQTTMessageInfo._published: "
        "update dslth_edge.transport.mqtt_client.paho_published_flag")
    info = mqtt.MQTTMessageInfo(1)
    assert paho_published_flag(info) is False


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING)
def test_paho_flag_set_by_puback_and_duplicate_id_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On a real Mosquitto: the flag turns True on PUBACK; a second process with node 1's id
    is refused with one line, and node 1 logs one line; node 1 stays connected."""
    broker = Mosquitto(tmp_path / "mq").start()
    try:
        def make(i: int, nb: list[int]) -> MqttTransport:
            return MqttTransport(MqttOptions(url=broker.url), fleet="t", node_id=i, neighbours=nb,
                                 hello=Hello(node=i, fleet="t", fingerprint="00"), max_frame_bytes=1 << 16)

        t1, t2 = make(1, [2]).connect(), make(2, [1]).connect()
        assert t2.wait_for_peers(5) == set()
        t1.publish(b"DSLM one")
        assert t1.flush(5) and paho_published_flag(_published_info(t1))
        # set, not list: t1 republishes its recent frames when it sees t2 come online, and that
        # "online" may reach t1 after this publish (receivers drop the copies, docs/mqtt.md)
        assert set(_masks_within(t2, 3)) == {b"DSLM one"}
        with caplog.at_level(logging.WARNING), pytest.raises(TransportError, match="node 1 of fleet 't' is already running .*--id 1"):
            make(1, [2]).connect()
        lines = [r.getMessage() for r in caplog.records if "is --id 1 used twice" in r.getMessage()]
        assert len(lines) == 1, lines
        assert t1.connected
        t1.publish(b"DSLM two")
        assert set(_masks_within(t2, 3)) == {b"DSLM two"}
        t1.close()
        t2.close()
    finally:
        broker.stop()


def _masks_within(t: MqttTransport, seconds: float) -> list[bytes]:
    """Mask payloads received within ``seconds`` (control messages, e.g. ping/pong, skipped)."""
    end, out = time.monotonic() + seconds, []
    while time.monotonic() < end and not out:
        out += [e.payload for e in t.poll(0.2) if e.kind == "mask"]
    return out


def _published_info(t: MqttTransport) -> mqtt.MQTTMessageInfo:
    """A fresh QoS 1 publish, waited for: its PUBACK sets the flag."""
    assert t._client is not None
    info = t._client.publish(topic("t", t.node_id, "ctl"), b"x", qos=1)
    info.wait_for_publish(5)
    return info


def test_hello_seen_is_strictly_typed_and_bounded() -> None:
    good = Hello(node=1, fleet="t", fingerprint="00", seen=("0:00000000000000ff", "7:0123456789abcdef"))
    assert Hello.from_bytes(good.to_bytes()).seen == good.seen
    for seen in (["0:ff"], ["x:00000000000000ff"], [1], "0:00000000000000ff", [["0:00000000000000ff"]],
                 ["0:00000000000000ff"] * 513):
        raw = json.loads(good.to_bytes())
        raw["seen"] = seen
        with pytest.raises(ValueError):
            Hello.from_bytes(json.dumps(raw).encode())
