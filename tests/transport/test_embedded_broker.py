"""The embedded broker's amqtt fixes (dslth_edge/transport/broker.py), on raw MQTT 3.1.1.

Each scenario runs amqtt's own ``Broker`` ("amqtt", where the bug must reproduce: the
proof that the test reaches it) and ours (``broker_class()``, where it must not), on one
event loop, with clients that write MQTT packets by hand so that every step is ordered
by what a client has *received*, never by sleeping. Nothing here asserts a duration; the
``asyncio.wait_for`` bounds only turn a hang into a failure.

The race (amqtt 0.12.1 ``Broker._handle_client_session``: ``for topic in
self._subscriptions: await ...``) is forced open, not waited for: a client A connects
with a tiny receive buffer while a 32 MiB retained message matches somebody's filter.
amqtt starts sending it to A (its second bug) and cannot finish until A reads it, so its
walk of the subscription table stays suspended exactly as long as the test wants. Client
C subscribes a new filter in that window; then A reads, and amqtt's walk resumes.
The same walk in ``_run_broadcast`` is held open by a topic-filter plugin that waits for
the test. A third scenario checks when retained messages go out (at SUBSCRIBE, never
unasked on a resumed session), and the last test pins the amqtt internals
``broker_class()`` was written against.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

pytest.importorskip("amqtt", reason="amqtt not installed: pip install 'dslth-edge[broker]'")

from dslth_edge.transport.broker import (
    AMQTT_VERSION,
    amqtt_drift,
    broker_class,
    broker_config,
    free_port,
)

#: A guard against a hang, not a measurement: every step completes in far less.
STEP_S = 60.0
#: Large enough that A's socket buffers (its receive buffer is set tiny) plus the broker's
#: send buffer (autotuned, at most tcp_wmem's maximum: 4 MiB by default) cannot hold it.
BIG = 32 << 20

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP = 1, 2, 3, 4, 8, 9, 12, 13


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class RawClient:
    """A hand-written MQTT 3.1.1 client: it does exactly what the test says, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._mid = 0

    @classmethod
    async def connect(cls, port: int, client_id: str, *, clean: bool = True, tiny_rcvbuf: bool = False,
                      keepalive: int = 0) -> RawClient:
        """Open a TCP connection, send CONNECT, read the CONNACK (which must accept)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if tiny_rcvbuf:  # before connect(): the window the broker sees stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer)
        # protocol "MQTT" level 4, clean-session flag, keep-alive (0: no broker-side timeout)
        body = _str("MQTT") + bytes([4, 0x02 if clean else 0x00]) + struct.pack("!H", keepalive) + _str(client_id)
        await client.send(_packet(CONNECT << 4, body))
        kind, _, payload = await client.read_packet()
        assert kind == CONNACK and payload[1] == 0, f"connection refused: {payload!r}"
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_header(self) -> tuple[int, int, int]:
        """(packet type, flags, remaining length) of the next packet."""
        first = (await asyncio.wait_for(self.reader.readexactly(1), STEP_S))[0]
        length, shift = 0, 0
        while True:
            byte = (await asyncio.wait_for(self.reader.readexactly(1), STEP_S))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return first >> 4, first & 0x0F, length

    async def read_body(self, length: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(length), STEP_S)

    async def read_packet(self) -> tuple[int, int, bytes]:
        kind, flags, length = await self.read_header()
        return kind, flags, await self.read_body(length)

    async def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Send SUBSCRIBE (QoS 0 by default: this client sends no PUBACK); the caller reads
        the SUBACK (and what comes before or after it)."""
        self._mid += 1
        await self.send(_packet(SUBSCRIBE << 4 | 0x02, struct.pack("!H", self._mid) + _str(topic_filter) + bytes([qos])))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 0 PUBLISH."""
        await self.send(_packet(PUBLISH << 4 | int(retain), _str(topic) + payload))

    async def ping(self) -> None:
        await self.send(_packet(PINGREQ << 4, b""))

    async def until_pingresp(self) -> list[tuple[int, int, bytes]]:
        """Send PINGREQ; every packet received before its PINGRESP (a barrier: the broker
        answers in order on this connection)."""
        await self.ping()
        seen: list[tuple[int, int, bytes]] = []
        while True:
            packet = await self.read_packet()
            if packet[0] == PINGRESP:
                return seen
            seen.append(packet)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _publish_topic(body: bytes) -> str:
    (n,) = struct.unpack("!H", body[:2])
    return body[2:2 + n].decode()


def _make(kind: str, port: int) -> Any:
    if kind == "amqtt":
        from amqtt.broker import Broker
    else:
        Broker = broker_class()
    return Broker(broker_config("127.0.0.1", port), loop=asyncio.get_running_loop())


async def _with_broker(kind: str, scenario: Any) -> tuple[Any, list[BaseException]]:
    """Run ``scenario(port)`` against a fresh broker; (its result, exceptions the loop saw
    unhandled: an amqtt connection task that died lands there)."""
    loop = asyncio.get_running_loop()
    unhandled: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx.get("exception") or RuntimeError(ctx["message"])))
    port = free_port()
    broker = _make(kind, port)
    await broker.start()
    try:
        result = await scenario(port)
    finally:
        await asyncio.wait_for(broker.shutdown(), STEP_S)
    return result, unhandled


# ------------------------------------------------------------------------------ the race
async def _race(kind: str, port: int) -> dict[str, Any]:
    """A connects while the subscription table holds s1's filter, with a big retained
    message; C adds a filter while amqtt is sending that message to A; then A subscribes
    and publishes. Returns what A and C saw."""
    s1 = await RawClient.connect(port, "s1")
    await s1.subscribe("r/+")
    assert (await s1.read_packet())[0] == SUBACK
    # p and c connect before anything is retained: amqtt would send them r/big unasked too
    p = await RawClient.connect(port, "p")
    c = await RawClient.connect(port, "c")
    await p.publish("r/big", b"x" * BIG, retain=True)
    # s1 receiving it live means the broker has stored it as retained (amqtt does both in
    # _handle_message_delivery, with no suspension between them)
    first = await s1.read_header()
    assert first[0] == PUBLISH
    await s1.read_body(first[2])

    a = await RawClient.connect(port, "a", tiny_rcvbuf=True)
    await a.ping()
    outcome: dict[str, Any] = {}
    if kind == "amqtt":
        # amqtt sends A the retained r/big unasked (for s1's filter); the PINGRESP may come
        # before or behind it. Once its header is here, amqtt's walk of the subscription
        # table is suspended in that send, which cannot finish until A reads 32 MiB.
        while (header := await a.read_header())[0] != PUBLISH:
            assert header[0] == PINGRESP
        outcome["unasked"] = header
    else:
        # ours sends nothing unasked: the PINGRESP is the first packet after the CONNACK
        header = await a.read_header()
        outcome["first_after_connack"] = header[0]
        outcome["unasked"] = None

    await c.subscribe("c/new")  # a new filter: the table grows inside amqtt's suspended walk
    assert (await c.read_packet())[0] == SUBACK

    if outcome["unasked"] is not None:
        await a.read_body(outcome["unasked"][2])  # amqtt's send completes and its walk resumes
    try:
        await a.subscribe("r/+", qos=0)
        while (packet := await a.read_packet())[0] == PINGRESP:
            pass
        outcome["after_subscribe"] = packet[0]
        if packet[0] == SUBACK:
            # the subscribe-time retained delivery, for A's own filter, retain flag set
            kind3, flags, length = await a.read_header()
            await a.read_body(length)
            outcome["retained"] = (kind3, bool(flags & 1), length)
            # and A's messages are served: its publish reaches C's filter
            await a.publish("c/new", b"hello from a")
            kind4, _, body4 = await c.read_packet()
            outcome["delivered"] = (kind4, _publish_topic(body4))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        outcome["after_subscribe"] = type(exc).__name__
    for client in (a, c, p, s1):
        await client.close()
    return outcome


def test_race_reproduces_on_plain_amqtt() -> None:
    """amqtt 0.12.1 itself: the subscription in the window kills A's connection task."""
    outcome, unhandled = asyncio.run(_with_broker("amqtt", lambda port: _race("amqtt", port)))
    # A's connection was dropped (EOF, or a reset when its SUBSCRIBE met the closed socket)
    assert outcome["after_subscribe"] in ("IncompleteReadError", "ConnectionResetError", "BrokenPipeError"), outcome
    assert any(isinstance(e, RuntimeError) and "dictionary changed size during iteration" in str(e)
               for e in unhandled), unhandled


def test_race_cannot_happen_on_our_broker() -> None:
    """The same clients, the same steps, on ``broker_class()``: nothing is sent unasked,
    A is served (SUBACK, then the retained message of its own filter, retain flag set)
    and its publish is delivered; no task died."""
    outcome, unhandled = asyncio.run(_with_broker("ours", lambda port: _race("ours", port)))
    assert outcome["first_after_connack"] == PINGRESP, outcome
    assert outcome["after_subscribe"] == SUBACK, outcome
    assert outcome["retained"][:2] == (PUBLISH, True), outcome
    assert outcome["delivered"] == (PUBLISH, "c/new"), outcome
    assert unhandled == []


# ---------------------------------------------------------------- broadcasting while subscribing
class GatedTopicPlugin:
    """A topic-filter plugin (amqtt loads it by its dotted path) that holds the broker's
    first RECEIVE check until the test opens :attr:`gate`: amqtt's ``_run_broadcast``
    awaits it inside its walk of the subscription table, as it would any plugin's."""

    entered: asyncio.Event
    gate: asyncio.Event
    held = False

    @classmethod
    def reset(cls) -> None:
        cls.entered, cls.gate, cls.held = asyncio.Event(), asyncio.Event(), False

    @staticmethod
    def make() -> type:
        from amqtt.contexts import Action
        from amqtt.plugins.base import BaseTopicPlugin

        class Plugin(BaseTopicPlugin):
            async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                                      action: Any = None) -> bool:
                if action == Action.RECEIVE and not GatedTopicPlugin.held:
                    GatedTopicPlugin.held = True
                    GatedTopicPlugin.entered.set()
                    await GatedTopicPlugin.gate.wait()
                return True

        return Plugin


#: the class amqtt loads (by this dotted name) in the broadcast scenarios
GatedPlugin = GatedTopicPlugin.make()


async def _broadcast_while_subscribing(kind: str) -> tuple[tuple[int, str], list[BaseException]]:
    """g/1 is being broadcast (held in the plugin, inside the walk) when C subscribes a
    new filter; then g/2 follows. Returns the first message s2 (the second filter) gets."""
    loop = asyncio.get_running_loop()
    unhandled: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx.get("exception") or RuntimeError(ctx["message"])))
    GatedTopicPlugin.reset()
    port = free_port()
    config = broker_config("127.0.0.1", port)
    config["plugins"][f"{__name__}.GatedPlugin"] = {}
    if kind == "amqtt":
        from amqtt.broker import Broker
    else:
        Broker = broker_class()
    broker = Broker(config, loop=loop)
    await broker.start()
    try:
        s1, s2, c, p = [await RawClient.connect(port, name) for name in ("s1", "s2", "c", "p")]
        for client, topic_filter in ((s1, "g/+"), (s2, "g/#")):  # two filters: the walk has a next step
            await client.subscribe(topic_filter, qos=0)
            assert (await client.read_packet())[0] == SUBACK
        await p.publish("g/1", b"one")
        await asyncio.wait_for(GatedTopicPlugin.entered.wait(), STEP_S)  # the walk is suspended
        await c.subscribe("c/new", qos=0)
        assert (await c.read_packet())[0] == SUBACK  # the table grew meanwhile
        GatedTopicPlugin.gate.set()
        await p.publish("g/2", b"two")  # the broadcast queue is FIFO: g/1 is settled before g/2
        kind2, _, body = await s2.read_packet()
        first = (kind2, _publish_topic(body))
        for client in (s1, s2, c, p):
            await client.close()
    finally:
        GatedTopicPlugin.gate.set()
        await asyncio.wait_for(broker.shutdown(), STEP_S)
    return first, unhandled


def test_broadcast_loses_a_message_on_plain_amqtt() -> None:
    """amqtt 0.12.1's ``_run_broadcast``: the walk breaks, g/1 never reaches the second filter."""
    first, _ = asyncio.run(_broadcast_while_subscribing("amqtt"))
    assert first == (PUBLISH, "g/2")


def test_broadcast_walks_a_snapshot_on_our_broker() -> None:
    """Ours: g/1 reaches every subscription that existed when it was taken off the queue."""
    first, unhandled = asyncio.run(_broadcast_while_subscribing("ours"))
    assert first == (PUBLISH, "g/1")
    assert unhandled == []


# ---------------------------------------------------------------- sessions and retained messages
async def _resume(port: int) -> dict[str, Any]:
    """A persistent client subscribes, leaves, comes back (clean session 0), subscribes again."""
    p = await RawClient.connect(port, "p")
    await p.publish("s/1", b"state", retain=True)
    await p.until_pingresp()  # p's PUBLISH was read before its PINGREQ
    r = await RawClient.connect(port, "r", clean=False)
    out: dict[str, Any] = {}
    await r.subscribe("s/+", qos=0)
    out["subscribe"] = [(k, f & 1, _publish_topic(b) if k == PUBLISH else "") for k, f, b in await r.until_pingresp()]
    await r.send(_packet(0xE0, b""))  # DISCONNECT: the broker closes the connection
    with pytest.raises(asyncio.IncompleteReadError):
        await r.read_header()
    await r.close()

    r = await RawClient.connect(port, "r", clean=False)
    out["reconnect"] = await r.until_pingresp()  # nothing unasked on a resumed session
    await r.subscribe("s/+", qos=0)
    out["resubscribe"] = [(k, f & 1, _publish_topic(b) if k == PUBLISH else "") for k, f, b in await r.until_pingresp()]
    for client in (p, r):
        await client.close()
    return out


def test_retained_only_at_subscribe_time_on_our_broker() -> None:
    """MQTT 3.1.1 [MQTT-3.3.1-6], [MQTT-3.8.4-3]: the retained message goes out when the
    client subscribes (retain flag 1), again when it repeats the SUBSCRIBE after coming
    back, and never unasked on connect (Mosquitto does the same)."""
    out, unhandled = asyncio.run(_with_broker("ours", _resume))
    assert out["subscribe"] == [(SUBACK, 0, ""), (PUBLISH, 1, "s/1")]
    assert out["reconnect"] == []
    assert out["resubscribe"] == [(SUBACK, 0, ""), (PUBLISH, 1, "s/1")]
    assert unhandled == []


def test_amqtt_is_the_version_our_broker_was_checked_against() -> None:
    """``broker_class()`` copies two private methods of amqtt 0.12.1's Broker and relies on
    six more: any change there (a new release, a patched copy) fails here, loudly, until
    someone re-reads amqtt and updates dslth_edge/transport/broker.py and this pin."""
    drift = amqtt_drift()
    assert drift == [], (f"amqtt differs from the {AMQTT_VERSION} that dslth_edge/transport/broker.py was written "
                         f"against: {drift}. Re-check broker_class()'s overrides, then update AMQTT_SOURCES.")


def test_a_silent_client_gets_one_and_a_half_keep_alives() -> None:
    """[MQTT-3.1.2-24]: the broker may drop a client only after 1.5 x its keep-alive of
    silence; amqtt 0.12.1 alone allows exactly 1 x (what the session's timeout is set to
    is read off amqtt's session table, the figure its keep-alive watchdog uses)."""

    async def scenario(kind: str) -> list[int]:
        port = free_port()
        broker = _make(kind, port)
        await broker.start()
        try:
            seen = []
            for i, keepalive in enumerate((10, 7)):
                client = await RawClient.connect(port, f"ka-{i}", keepalive=keepalive)
                await client.until_pingresp()
                seen.append(broker._sessions[f"ka-{i}"][0].keep_alive)
                await client.close()
            return seen
        finally:
            await asyncio.wait_for(broker.shutdown(), STEP_S)

    assert asyncio.run(scenario("amqtt")) == [10, 7]
    assert asyncio.run(scenario("ours")) == [15, 11]
