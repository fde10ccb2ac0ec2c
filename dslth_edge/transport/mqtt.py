"""MQTT transport: one node's connection to the fleet's broker (paho-mqtt 2.x).

The topics and the formats on them are :mod:`dslth_edge.transport.messages`
(``docs/mqtt.md`` is the reference); how to reach the broker is
:mod:`dslth_edge.transport.mqtt_options`; building paho clients, the protocol probe and
the duplicate-id check are :mod:`dslth_edge.transport.mqtt_client`.

A node publishes only under its own id and subscribes only to its neighbours'
topics, so a broker ACL can pin each client to its id. The sender of a payload is the
node id in its topic; the frame inside names its sender too and the exchange refuses a
mismatch. MQTT 5 is used when the broker speaks it (session expiry, clean start only
on the first connection of a fresh run), MQTT 3.1.1 otherwise (amqtt); either way the
session is persistent, paho reconnects with backoff and ``on_connect`` restores the
subscriptions, hello and status. Recent frames are kept and published again after a
reconnect and whenever a neighbour comes (back) online, so a broker restart or a
rejoining node loses no round; receivers drop the copies.

Every handler survives every input: a hello, status, control or mask message that is
malformed in any way (overflowing numbers, deep nesting, oversized, not UTF-8, a bad
seal) is dropped, counted per cause in :attr:`TransportStats.dropped` (and handed to
the exchange's ``rejected`` count through :meth:`MqttTransport.take_dropped`) and
logged once per cause; no exception reaches paho's network thread. The inbox is
bounded (oldest dropped first, counted), and so is paho's outgoing queue.

A second process started with a node id that is already running is refused before it
can take over the first one's MQTT session (:func:`~dslth_edge.transport.mqtt_client.refuse_duplicate`);
the running one answers its ping and logs one line.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import paho.mqtt.client as mqtt

from dslth_edge.errors import TransportError, UsageError
from dslth_edge.transport.base import Envelope
from dslth_edge.transport.identity import AuthError, Identity
from dslth_edge.transport.messages import (
    KINDS,
    MAX_CTL_BYTES,
    MAX_HELLO_BYTES,
    MAX_STATUS_BYTES,
    PROTOCOL,
    Hello,
    parse_control,
    parse_status,
    pong_payload,
    topic,
)
from dslth_edge.transport.mqtt_client import (
    AUTH_FAILURES,
    connect_properties,
    is_acked,
    make_client,
    probe,
    refuse_duplicate,
)
from dslth_edge.transport.mqtt_options import MqttOptions
from dslth_edge.transport.report import REPORT_KIND
from dslth_edge.wire import Chunker, FrameError, Reassembler

__all__ = ["MqttTransport", "TransportStats"]

log = logging.getLogger(__name__)

_INBOX_LIMIT = 4096  # messages waiting for the round loop; the oldest is dropped beyond it
_RESEND_GAP_S = 2.0  # a neighbour's return triggers a resend (and a key frame) at most this often
_PONG_GAP_S = 1.0
#: broker URL -> whether it speaks MQTT 5, learned by this process's first probe
_PROTOCOLS: dict[str, bool] = {}
_PROTOCOLS_LOCK = threading.Lock()


def _protocol_refusal(verdict: str) -> bool:
    """Whether a failed MQTT 5 probe may be the broker refusing the protocol (worth a 3.1.1 try):
    not when the broker is unreachable, the TLS handshake failed or the credentials were refused."""
    if verdict == "unsupported":
        return True
    return not (verdict.startswith(("cannot reach", "TLS handshake")) or any(f in verdict for f in AUTH_FAILURES))


@dataclass
class TransportStats:
    """Counters of one connection (for metrics and the benchmark)."""

    messages_out: int = 0
    bytes_out: int = 0  # payload bytes handed to the broker, resends included
    messages_in: int = 0
    bytes_in: int = 0
    resent: int = 0
    reconnects: int = 0
    chunk_errors: int = 0
    out_dropped: int = 0  # publishes refused because paho's outgoing queue was full
    #: inputs dropped before the round loop saw them, per cause (malformed hello, bad seal,
    #: status flood, inbox overflow, handler error …)
    dropped: Counter[str] = field(default_factory=Counter)


class MqttTransport:
    """A node's :class:`~dslth_edge.transport.base.Transport` over MQTT.

    ``connect()`` blocks until the broker accepted the connection (or raises
    :class:`TransportError` with one clear line); afterwards paho's network thread
    keeps it up. ``poll()`` returns mask and ctl payloads as :class:`Envelope` s,
    reassembled from chunks; hello/status messages only update :attr:`peers`,
    :meth:`unavailable` and :meth:`take_returned`.
    """

    def __init__(
        self,
        options: MqttOptions,
        *,
        fleet: str,
        node_id: int,
        neighbours: Iterable[int],
        hello: Hello,
        max_frame_bytes: int,
        fresh: bool = True,
        identity: Identity | None = None,
        inbox_limit: int = _INBOX_LIMIT,
    ) -> None:
        if "/" in fleet or "+" in fleet or "#" in fleet or not fleet:
            raise UsageError(f"fleet name {fleet!r} must be non-empty without '/', '+' or '#'")
        self.options = options
        self.fleet = fleet
        self.node_id = node_id
        self.neighbours = tuple(sorted(set(neighbours)))
        #: seals our hello and opens the neighbours' (None: plain JSON hellos)
        self.identity = identity
        self.instance = secrets.token_hex(8)  # this process's incarnation of the node
        self.hello = replace(hello, extra={**hello.extra, "instance": self.instance, "pid": os.getpid(),
                                           "host": socket.gethostname()[:64],
                                           **({"epoch": identity.epoch, "auth": identity.mode} if identity else {})})
        self.fresh = fresh  # a fresh run wipes this client id's old broker session first
        self.stats = TransportStats()
        self.peers: dict[int, Hello] = {}
        self.incompatible: set[int] = set()
        self.online: set[int] = set()
        self._offline: set[int] = set()  # seen online, then its last will
        self._returned: set[int] = set()
        self._lock = threading.Lock()
        self._inbox: deque[tuple[int, str, bytes]] = deque()
        self._inbox_limit = max(1, inbox_limit)
        self._inbox_ready = threading.Condition(self._lock)
        self._dropped_new = 0  # dropped since the last take_dropped()
        self._logged: set[str] = set()
        self._last_resend: dict[int, float] = {}  # per neighbour: its return last answered with a resend
        self._resent_at = -_RESEND_GAP_S  # monotonic time of our last resend, for any cause
        self._resend_due = False  # a return fell within the gap: resend before our next frame
        self._repeats: dict[int, int] = {}  # "online" repeats since the last resend, per neighbour
        self._last_pong = 0.0
        self._duplicates_seen: set[str] = set()
        self._recent: deque[list[bytes]] = deque(maxlen=max(1, options.resend_frames))
        self._chunker = Chunker(options.max_message_bytes)
        self._reassembler = Reassembler(max_frame_bytes, timeout_s=120.0)
        self._max_message = max(options.max_message_bytes, max_frame_bytes) + 64
        self._max_hello = MAX_HELLO_BYTES + (identity.overhead if identity else 0)
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client: mqtt.Client | None = None
        self._v5 = False
        self._closing = False
        self._first_connect = True
        self._sub_mid: int | None = None  # our SUBSCRIBE of the current connection
        self._unacked: deque[mqtt.MQTTMessageInfo] = deque()  # our QoS 1 publishes, oldest first

    # ------------------------------------------------------------------ connection
    @property
    def client_id(self) -> str:
        return f"dslth-{self.fleet}-{self.node_id}"

    def connect(self) -> "MqttTransport":
        """Connect (probing MQTT 5, falling back to 3.1.1), subscribe, announce; start paho's thread."""
        addr = self.options.address()
        proto = self.options.protocol
        if proto not in ("auto", "5", "3.1.1"):
            raise UsageError(f"MQTT protocol must be auto, 5 or 3.1.1, got {proto!r}")
        refuse_duplicate(self.options, addr, fleet=self.fleet, node_id=self.node_id, client_id=self.client_id,
                         instance=self.instance)
        use_v5, wiped = self._choose_protocol(addr, proto)
        self._v5 = use_v5
        client = make_client(self.options, addr, client_id=self.client_id, v5=use_v5, persistent=True,
                             will_topic=topic(self.fleet, self.node_id, "status"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        try:
            self._client.connect_async(addr.host, addr.port, keepalive=self.options.keepalive_s,
                                       clean_start=(mqtt.MQTT_CLEAN_START_FIRST_ONLY
                                                    if not use_v5 or (self.fresh and not wiped) else False),
                                       properties=connect_properties(self.options) if use_v5 else None)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot reach MQTT broker {addr}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(self.options.connect_timeout_s):
            self._client.loop_stop()
            raise TransportError(self._refused or f"MQTT broker {addr} did not accept node {self.node_id} "
                                 f"within {self.options.connect_timeout_s:.0f} s")
        return self

    def _choose_protocol(self, addr: Any, proto: str) -> tuple[bool, bool]:
        """(MQTT 5?, old session wiped?) for this broker, from short probe connections.

        A probe is a clean connection: under our own client id it wipes the broker's
        session (subscriptions, frames queued while we were away). That is wanted for a
        fresh run only; a resumed node probes under another id and keeps its session.
        ``auto`` falls back to 3.1.1 not only on "unsupported protocol version" but on any
        refusal of the MQTT 5 CONNECT that 3.1.1 then passes: RabbitMQ's MQTT plugin (3.10)
        answers an MQTT 5 CONNECT with "Unspecified error". What a broker speaks is
        remembered per process (a ``fleet run`` worker hosts hundreds of nodes): a fresh
        MQTT 5 node then starts its session clean instead of probing.
        """
        probe_id = self.client_id if self.fresh else f"{self.client_id}-probe"
        url = str(addr)
        with _PROTOCOLS_LOCK:
            known = _PROTOCOLS.get(url)
        if proto == "5" or (proto == "auto" and known is not False):
            if known is True:
                return True, False  # the session's first CONNECT starts clean (fresh) or resumes
            verdict = probe(self.options, addr, v5=True, client_id=probe_id, node_id=self.node_id)
            if verdict == "ok":
                with _PROTOCOLS_LOCK:
                    _PROTOCOLS[url] = True
                return True, self.fresh
            if proto == "5" or not _protocol_refusal(verdict):
                raise TransportError(verdict)
            v311 = probe(self.options, addr, v5=False, client_id=probe_id, node_id=self.node_id)
            if v311 != "ok":
                raise TransportError(verdict if verdict != "unsupported" else v311)
            if verdict != "unsupported":
                log.info("node %s: broker %s refused MQTT 5 (%s); using MQTT 3.1.1", self.node_id, addr, verdict)
            with _PROTOCOLS_LOCK:
                _PROTOCOLS[url] = False
            return False, True
        # 3.1.1 has no clean-start-then-persist: a clean connection clears the old session
        verdict = probe(self.options, addr, v5=False, client_id=probe_id, node_id=self.node_id)
        if verdict != "ok":
            raise TransportError(verdict)
        return False, True

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._refused = f"MQTT broker {self.options.address()} refused node {self.node_id}: {rc}"
            if str(rc) in AUTH_FAILURES:  # retrying with the same credentials cannot help
                client.disconnect()
            return
        # subscriptions first: a persistent session keeps them, but a restarted broker without
        # persistence (amqtt) does not
        # one exact filter per kind, no wildcard: RabbitMQ's MQTT plugin (3.10) delivers retained
        # messages (the hello and status a start-up waits for) only to exact subscriptions, and
        # the neighbours' `report` topics (for `fleet watch`) are not ours to receive
        subs = [(topic(self.fleet, j, kind), 1) for j in self.neighbours for kind in KINDS]
        # our own hello and ctl: another process announcing itself under our id
        subs += [(topic(self.fleet, self.node_id, "hello"), 1), (topic(self.fleet, self.node_id, "ctl"), 1)]
        _, self._sub_mid = client.subscribe(subs)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any = None) -> None:
        """Announce (hello, "online") only once the broker confirmed our subscriptions: a
        neighbour that sees us online publishes at once, and its frame must not find none."""
        if mid != self._sub_mid:
            return
        client.publish(topic(self.fleet, self.node_id, "hello"), self.hello_payload(), qos=1, retain=True)
        client.publish(topic(self.fleet, self.node_id, "status"), b"online", qos=1, retain=True)
        if not self._first_connect:
            self.stats.reconnects += 1
            self._resend(client)
        self._first_connect = False
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._connected.clear()
        if not self._closing:
            log.info("node %s lost the broker (%s); paho reconnects with backoff", self.node_id, rc)

    def hello_payload(self) -> bytes:
        """Our retained hello: JSON, sealed when the node has an identity."""
        data = self.hello.to_bytes()
        return self.identity.seal("hello", 0, data) if self.identity is not None else data

    def _resend(self, client: mqtt.Client) -> None:
        with self._lock:
            recent = list(self._recent)
            self._resend_due = False
            self._resent_at = time.monotonic()
        for messages in recent:
            for msg in messages:
                client.publish(topic(self.fleet, self.node_id, "mask"), msg, qos=1)
                self.stats.resent += 1

    # ------------------------------------------------------------------ receiving
    def _drop(self, cause: str, detail: str = "") -> None:
        """Count a dropped input under ``cause``; log the first of each cause."""
        with self._lock:
            self.stats.dropped[cause] += 1
            self._dropped_new += 1
            first = cause not in self._logged
            self._logged.add(cause)
        if first:
            log.warning("node %s: dropped %s%s (further ones counted, not logged)", self.node_id, cause,
                        f": {detail}" if detail else "")

    def take_dropped(self) -> int:
        """Inputs dropped (malformed, forged, flooding, overflow) since the last call."""
        with self._lock:
            n, self._dropped_new = self._dropped_new, 0
            return n

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's callback: never lets an exception reach paho's network thread."""
        try:
            self._handle(client, message)
        except Exception as exc:  # noqa: BLE001 - one bad message must not unplug the node
            self._drop(f"handler error ({type(exc).__name__})", str(exc)[:200])

    def _handle(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 4 or parts[0] != "dslth" or parts[1] != self.fleet or parts[3] not in KINDS:
            return
        try:
            sender = int(parts[2])
        except ValueError:
            return
        kind, payload = parts[3], bytes(message.payload)
        if sender == self.node_id:
            self._on_own(client, kind, payload, bool(message.retain))
            return
        if sender not in self.neighbours:
            return
        if kind == "hello":
            self._on_hello(sender, payload)
        elif kind == "status":
            self._on_status(client, sender, payload, bool(message.retain))
        else:
            self._enqueue((sender, kind, payload))

    def _enqueue(self, item: tuple[int, str, bytes]) -> None:
        overflow = False
        with self._lock:
            if len(self._inbox) >= self._inbox_limit:
                self._inbox.popleft()  # oldest first: the newest frames are the ones still useful
                overflow = True
            self._inbox.append(item)
            self._inbox_ready.notify()
        if overflow:
            self._drop("inbox overflow", f"more than {self._inbox_limit} messages waiting")

    def _on_own(self, client: mqtt.Client, kind: str, payload: bytes, retained: bool) -> None:
        """A message on our own topics: our echo, or another process claiming our node id."""
        if kind == "ctl":
            try:
                msg = parse_control(payload)
            except ValueError:
                return  # our own (possibly sealed) key requests come back here
            if msg["type"] != "ping" or msg.get("instance") == self.instance:
                return
            now = time.monotonic()
            if now - self._last_pong >= _PONG_GAP_S:
                self._last_pong = now
                client.publish(topic(self.fleet, self.node_id, "ctl"), pong_payload(msg.get("nonce", "")), qos=1)
            self._duplicate(str(msg.get("instance", "?"))[:32], f"pid {msg.get('pid', '?')}",
                            "tried to start and was told to stop")
        elif kind == "hello" and not retained and payload != self.hello_payload():
            try:
                hello = self._open_hello(self.node_id, payload)
                who, what = str(hello.extra.get("instance", "?"))[:32], f"pid {hello.extra.get('pid', '?')}"
            except ValueError:
                who, what = "unverified", "with another key, run epoch or security mode"
            self._duplicate(who, what, "announced itself")
            client.publish(topic(self.fleet, self.node_id, "hello"), self.hello_payload(), qos=1, retain=True)

    def _duplicate(self, instance: str, who: str, what: str) -> None:
        with self._lock:
            first = instance not in self._duplicates_seen
            self._duplicates_seen.add(instance)
        if first:
            log.warning("node %s: another process (%s) %s as node %s of fleet %r: is --id %s used twice?",
                        self.node_id, who, what, self.node_id, self.fleet, self.node_id)

    def _open_hello(self, sender: int, payload: bytes) -> Hello:
        """Verify (when sealed) and parse a hello; ValueError on anything wrong."""
        if len(payload) > self._max_hello:
            raise ValueError(f"hello of {len(payload)} bytes")
        if self.identity is not None:
            try:
                payload = self.identity.open(payload, sender=sender, kind="hello").payload
            except AuthError as exc:
                raise ValueError(str(exc)) from None
        return Hello.from_bytes(payload)

    def _on_hello(self, sender: int, payload: bytes) -> None:
        if not payload:
            return
        try:
            hello = self._open_hello(sender, payload)
        except ValueError as exc:
            # the last good hello stands: a forged retained one must not unplug the neighbour
            self._drop("malformed or unverified hello", f"from node {sender}: {exc}")
            return
        with self._lock:
            self.peers[sender] = hello
            if hello.fingerprint != self.hello.fingerprint or hello.node != sender or hello.protocol != PROTOCOL:
                if sender not in self.incompatible:
                    log.warning("node %s: node %s has other fixed weights or protocol; its frames are refused",
                                self.node_id, sender)
                self.incompatible.add(sender)
            else:
                self.incompatible.discard(sender)

    def _on_status(self, client: mqtt.Client, sender: int, payload: bytes, retained: bool = False) -> None:
        try:
            status = parse_status(payload[:MAX_STATUS_BYTES + 1])
        except ValueError as exc:
            self._drop("malformed status", f"from node {sender}: {exc}")
            return
        now = time.monotonic()
        with self._lock:
            if status == "offline":
                self.online.discard(sender)
                self._offline.add(sender)
                return
            transition = sender in self._offline or sender not in self.online
            if retained and not transition:  # a broker's extra copy of a retained status (a re-subscription's)
                return
            if sender in self._offline:
                self._returned.add(sender)  # the exchange limits the key frames this forces
            self._offline.discard(sender)
            self.online.add(sender)
            recent = now - self._last_resend.get(sender, -_RESEND_GAP_S) < _RESEND_GAP_S
            if not recent:
                self._last_resend[sender] = now
                self._repeats[sender] = 0
            elif not transition:
                self._repeats[sender] = self._repeats.get(sender, 0) + 1
            # a retained and a live "online" may cross on (re)subscription: only a third
            # repeat within the gap is a flood
            flood = recent and not transition and self._repeats[sender] > 2
        if flood:
            self._drop("status flood", f"node {sender} said online again and again within {_RESEND_GAP_S:.0f} s")
        if recent:
            # Deferred, never dropped: a neighbour that drops and returns within the gap (a
            # connection the embedded broker dropped at start-up, a broker restart) missed
            # our frames too, and a later frame of ours reaching it first would tell it we
            # are past the round it lacks. Served before our next frame or once the gap has
            # passed, so a flood costs at most one resend per round of ours or per gap.
            with self._lock:
                self._resend_due = True
            return
        # a neighbour came (back) online: it may have missed our last frames
        self._resend(client)

    def _serve_resend(self, *, due_now: bool) -> None:
        """Run a deferred resend: now (before our next frame) or once the gap since the last has passed."""
        with self._lock:
            due = self._resend_due and (due_now or time.monotonic() - self._resent_at >= _RESEND_GAP_S)
        if due and self._client is not None:
            self._resend(self._client)

    def poll(self, timeout: float) -> list[Envelope]:
        """Mask/ctl payloads received since the last call, waiting up to ``timeout`` s for the first."""
        self._serve_resend(due_now=False)
        with self._lock:
            if not self._inbox and timeout > 0:
                self._inbox_ready.wait(timeout)
            items = list(self._inbox)
            self._inbox.clear()
        out: list[Envelope] = []
        for item in items:
            self._deliver(item, out)
        return out

    def _deliver(self, item: tuple[int, str, bytes], out: list[Envelope]) -> None:
        sender, kind, payload = item
        self.stats.messages_in += 1
        self.stats.bytes_in += len(payload)
        if kind == "ctl":
            if len(payload) > MAX_CTL_BYTES + 128:  # room for a seal
                self._drop("oversized control message", f"{len(payload)} bytes from node {sender}")
            else:
                out.append(Envelope(sender, kind, payload))
            return
        try:
            frame = self._reassembler.feed(sender, payload)
        except FrameError:
            # pass it on so the exchange counts it as rejected (its decoder refuses it too)
            self.stats.chunk_errors += 1
            out.append(Envelope(sender, kind, payload[: self._max_message]))
            return
        if frame is not None:
            out.append(Envelope(sender, kind, frame))

    # ------------------------------------------------------------------ sending
    def publish(self, payload: bytes, *, kind: str = "mask") -> int:
        """QoS 1 on this node's own topic; a frame is chunked if larger than one message."""
        if self._client is None:
            raise TransportError("publish before connect()")
        if kind not in ("mask", "ctl"):
            raise ValueError(f"unknown payload kind {kind!r}")
        messages = self._chunker.split(payload) if kind == "mask" else [payload]
        if kind == "mask":
            self._serve_resend(due_now=True)  # a returned neighbour gets what it missed before this frame
            with self._lock:
                self._recent.append(messages)
        sent = 0
        for msg in messages:
            info = self._client.publish(topic(self.fleet, self.node_id, kind), msg, qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # broker away too long: drop, counted; resent/keyed later
                self.stats.out_dropped += 1
                continue
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued for the reconnect
                raise TransportError(f"node {self.node_id}: MQTT publish failed: {mqtt.error_string(info.rc)}")
            sent += len(msg)
            self._unacked.append(info)
        while self._unacked and is_acked(self._unacked[0]):
            self._unacked.popleft()
        self.stats.messages_out += len(messages)
        self.stats.bytes_out += sent
        return sent

    def publish_report(self, payload: bytes) -> None:
        """Our progress report for ``fleet watch`` (:mod:`~dslth_edge.transport.report`): retained,
        QoS 1, best effort (a full outgoing queue drops it; the next one replaces it)."""
        if self._client is None:
            raise TransportError("publish before connect()")
        self._client.publish(topic(self.fleet, self.node_id, REPORT_KIND), payload, qos=1, retain=True)

    # ------------------------------------------------------------------ fleet state
    def unavailable(self) -> set[int]:
        """Neighbours not worth waiting for: those with other fixed weights or protocol.

        A last-will "offline" is deliberately not enough: Mosquitto publishes the wills of
        all its clients when it shuts down, so after a broker restart every neighbour would
        look dead. A dead neighbour costs its deadline until it is stale instead.
        """
        with self._lock:
            return set(self.incompatible)

    def online_neighbours(self) -> set[int]:
        """Neighbours whose last status is "online" (their MQTT session is up)."""
        with self._lock:
            return set(self.online)

    def offline(self) -> set[int]:
        """Neighbours whose last status is "offline" (informational)."""
        with self._lock:
            return set(self._offline)

    def take_returned(self) -> set[int]:
        """Neighbours that came back online since the last call."""
        with self._lock:
            out, self._returned = self._returned, set()
            return out

    def wait_for_peers(self, timeout: float) -> set[int]:
        """Wait until every neighbour said hello and is online (or ``timeout``); return the missing ones."""
        end = time.monotonic() + timeout
        pause = 0.05
        while True:
            with self._lock:
                missing = {j for j in self.neighbours if j not in self.online or j not in self.peers}
            if not missing or time.monotonic() >= end:
                return missing
            time.sleep(min(pause, max(0.0, end - time.monotonic())))
            # backing off: 500 nodes of a worker polling 20 times a second each starve the
            # network threads that must deliver those very hellos (and answer keep-alives)
            pause = min(0.5, pause * 1.5)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def protocol_name(self) -> str:
        return "5" if self._v5 else "3.1.1"

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the broker acknowledged everything published (the last round's frame must
        reach the broker before the process exits); False on timeout."""
        end = time.monotonic() + timeout
        while self._unacked:
            if is_acked(self._unacked[0]):
                self._unacked.popleft()
            elif time.monotonic() >= end:
                return False
            else:
                time.sleep(0.01)
        return True

    def close(self, *, graceful: bool = True) -> None:
        """Flush, say "offline" (retained), disconnect."""
        client = self._client
        if client is None:
            return
        if graceful:
            self.flush()
        self._closing = True
        if graceful and self._connected.is_set():
            info = client.publish(topic(self.fleet, self.node_id, "status"), b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=5.0)
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        client.loop_stop()
        self._client = None
