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

Hellos carry the proof that every run is its own epoch (:mod:`dslth_edge.transport.identity`):
each lists the neighbours' incarnations its node has heard, and a neighbour's hello is
accepted (:attr:`MqttTransport.peers`, weights compared, its payloads taken under
:meth:`MqttTransport.peer_incarnation`) only once it lists this node's own current
incarnation; a recording of an earlier run never does, and an incarnation a neighbour
has left (a restart) is never taken again.

Every handler survives every input: a hello, status, control or mask message that is
malformed in any way (overflowing numbers, deep nesting, oversized, not UTF-8, a bad
seal) is dropped, counted per cause in :attr:`TransportStats.dropped` (and handed to
the exchange's ``rejected`` count through :meth:`MqttTransport.take_dropped`) and
logged once per cause; no exception reaches paho's network thread. Sizes are checked
on arrival, in paho's network thread, before anything is queued; chunks are reassembled
there too (bounded per sender). The inbox (:mod:`dslth_edge.transport.inbox`) keeps a
small queue per sender under one byte budget, so a neighbour flooding its own topics
evicts only its own messages; paho's outgoing queue is bounded too.

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
from dslth_edge.transport.identity import SEAL_MAGIC, AuthError, Identity, incarnation_hex
from dslth_edge.transport.inbox import FairInbox, InboxLimits
from dslth_edge.transport.messages import (
    KINDS,
    MAX_CTL_BYTES,
    MAX_HELLO_BYTES,
    MAX_STATUS_BYTES,
    MAX_SEEN,
    PROTOCOL,
    Hello,
    check_fleet_name,
    parse_control,
    parse_status,
    pong_payload,
    topic,
)
from dslth_edge.transport.mqtt_client import (
    AUTH_FAILURES,
    refusal,
    connect_properties,
    is_acked,
    make_client,
    probe,
    refuse_duplicate,
)
from dslth_edge.transport.mqtt_options import MqttOptions
from dslth_edge.transport.report import REPORT_KIND
from dslth_edge.wire import MAGIC as FRAME_MAGIC
from dslth_edge.wire import Chunker, FrameError, Reassembler

__all__ = ["MqttTransport", "TransportStats"]

log = logging.getLogger(__name__)

_INBOX_LIMIT = 256  # messages of one sender waiting for the round loop; its oldest is dropped beyond it
_CTL_LIMIT = MAX_CTL_BYTES + 128  # a control message and room for its seal
_RESEND_GAP_S = 2.0  # a neighbour's return triggers a resend (and a key frame) at most this often
_PONG_GAP_S = 1.0
_SEEN_PER_PEER = 4  # incarnations of one neighbour our hello lists (a replayed old one must not evict its live one)
_RETIRED_PER_PEER = 64  # incarnations of one neighbour we left behind and never go back to

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
    #: status flood, oversized, malformed chunk, sender queue full, inbox byte budget, handler error …)
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters (``dropped`` as a plain dict), e.g. for a node's transport.json."""
        return {"messages_out": self.messages_out, "bytes_out": self.bytes_out, "messages_in": self.messages_in,
                "bytes_in": self.bytes_in, "resent": self.resent, "reconnects": self.reconnects,
                "chunk_errors": self.chunk_errors, "out_dropped": self.out_dropped,
                "dropped": dict(sorted(self.dropped.items()))}


class MqttTransport:
    """A node's :class:`~dslth_edge.transport.base.Transport` over MQTT.

    ``connect()`` blocks until the broker accepted the connection (or raises
    :class:`TransportError` with one clear line); afterwards paho's network thread
    keeps it up. ``poll()`` returns mask and ctl payloads as :class:`Envelope` s,
    reassembled from chunks; hello/status messages only update :attr:`peers`,
    :meth:`unavailable` and :meth:`take_returned`.
    """

    #: payloads arrive while others still compute: a collection waits up to its deadline
    synchronous = False

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
        inbox_bytes: int | None = None,
    ) -> None:
        check_fleet_name(fleet)
        self.options = options
        self.fleet = fleet
        self.node_id = node_id
        self.neighbours = tuple(sorted(set(neighbours)))
        #: seals our hello and opens the neighbours' (None: plain JSON hellos)
        self.identity = identity
        # this process's incarnation of the node: the identity's (sealed into every payload), else drawn here
        self.instance = f"{identity.incarnation:016x}" if identity is not None else secrets.token_hex(8)
        self.hello = replace(hello, extra={**hello.extra, "instance": self.instance, "pid": os.getpid(),
                                           "host": socket.gethostname()[:64],
                                           **({"epoch": identity.epoch, "auth": identity.mode} if identity else {})})
        self.fresh = fresh  # a fresh run wipes this client id's old broker session first
        self.stats = TransportStats()
        #: each neighbour's last hello we accepted: verified, and (per-run epochs) proven of this run
        self.peers: dict[int, Hello] = {}
        self.incompatible: set[int] = set()
        self._incarnation: dict[int, int] = {}  # neighbour -> its accepted incarnation (its payloads must carry it)
        self._seen: dict[int, list[int]] = {}  # neighbour -> incarnations heard (verified seal), newest last
        self._retired: dict[int, deque[int]] = {}  # neighbour -> incarnations it left (restarts): never again
        self.online: set[int] = set()
        self._offline: set[int] = set()  # seen online, then its last will
        self._returned: set[int] = set()
        self._lock = threading.Lock()
        # what arrived, per sender, waiting for the round loop (receive path: _receive)
        self._inbox = FairInbox(InboxLimits.for_frames(max_frame_bytes, len(self.neighbours),
                                                       per_sender=max(1, inbox_limit), total_bytes=inbox_bytes))
        self._reassembly_lock = threading.Lock()
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
        # per sender: a few sets and two frames' bytes (a frame and its resend may interleave)
        self._reassembler = Reassembler(max_frame_bytes, timeout_s=120.0, max_pending=4 * max(1, len(self.neighbours)),
                                        max_pending_bytes=2 * max_frame_bytes * max(1, len(self.neighbours)),
                                        max_pending_per_source=4, max_bytes_per_source=2 * max_frame_bytes,
                                        whole_magics=(FRAME_MAGIC, SEAL_MAGIC))
        self._max_message = max(options.max_message_bytes, max_frame_bytes) + 64
        self._max_hello = MAX_HELLO_BYTES + (identity.overhead if identity else 0)
        self._connected = threading.Event()
        self._settled = threading.Event()  # connected, or refused for good (the credentials)
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
        if not self._settled.wait(self.options.connect_timeout_s) or not self._connected.is_set():
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
            self._refused = refusal(self.options, self.node_id, rc)
            if str(rc) in AUTH_FAILURES:  # retrying with the same credentials cannot help: say so now
                client.disconnect()
                self._settled.set()
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
        self._settled.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._connected.clear()
        if not self._closing:
            log.info("node %s lost the broker (%s); paho reconnects with backoff", self.node_id, rc)

    def hello_payload(self) -> bytes:
        """Our retained hello: JSON listing the neighbours' incarnations we heard, sealed when
        the node has an identity."""
        with self._lock:
            seen = sorted(incarnation_hex(j, inc) for j, incs in self._seen.items() for inc in incs)
        data = replace(self.hello, seen=tuple(seen)).to_bytes()
        return self.identity.seal("hello", 0, data) if self.identity is not None else data

    def peer_incarnation(self, sender: int) -> int | None:
        """The incarnation ``sender``'s payloads must carry: the one of its last accepted hello
        (None: none accepted yet, so none of its payloads is taken)."""
        with self._lock:
            return self._incarnation.get(sender)

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
    def _drop(self, cause: str, detail: str = "", *, count: bool = True) -> None:
        """Count a dropped input under ``cause``; log the first of each cause. ``count``: also
        in the exchange's ``rejected`` (False: honest traffic can look the same, e.g. a
        neighbour's hello from before our own restart)."""
        with self._lock:
            self.stats.dropped[cause] += 1
            self._dropped_new += int(count)
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
            self._on_hello(client, sender, payload)
        elif kind == "status":
            self._on_status(client, sender, payload, bool(message.retain))
        else:
            self._receive(sender, kind, payload)

    def _receive(self, sender: int, kind: str, payload: bytes) -> None:
        """A neighbour's mask or ctl message, in paho's network thread: size-checked and
        reassembled here, before anything is queued, then put in the sender's own queue."""
        self.stats.messages_in += 1
        self.stats.bytes_in += len(payload)
        if kind == "ctl":
            if len(payload) > _CTL_LIMIT:
                self._drop("oversized control message", f"{len(payload)} bytes from node {sender}")
                return
            item: bytes | None = payload
        else:
            if len(payload) > self._max_message:
                self._drop("oversized mask message", f"{len(payload)} bytes from node {sender}")
                return
            try:
                with self._reassembly_lock:
                    item = self._reassembler.feed(sender, payload)
            except FrameError as exc:
                self.stats.chunk_errors += 1
                self._drop("malformed chunk", f"from node {sender}: {exc}")
                return
        if item is None:
            return  # a chunk of a frame not yet complete, or a redelivered one
        if self.identity is not None and (not item.startswith(SEAL_MAGIC) or len(item) < self.identity.overhead):
            # cannot be sealed, so the exchange would refuse it: it must not take a place in the
            # sender's queue (and push out that sender's real frame) meanwhile
            self._drop("unsealed message", f"{len(item)} bytes from node {sender}")
            return
        for cause in self._inbox.put(sender, kind, item):
            # the oldest of one sender (its queue full) or of the heaviest one (the budget spent)
            self._drop(cause, f"node {sender} sent more than its share of the inbox")

    def drop_counts(self) -> dict[str, int]:
        """Inputs dropped so far, per cause."""
        with self._lock:
            return dict(self.stats.dropped)

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
        elif kind == "hello" and not retained:
            try:
                hello, incarnation = self._open_hello(self.node_id, payload)
                if (incarnation is not None and incarnation == self.identity_incarnation) or (
                        incarnation is None and hello.extra.get("instance") == self.instance):
                    return  # our own hello (any of its versions: the seen list grows) coming back
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

    @property
    def identity_incarnation(self) -> int | None:
        return self.identity.incarnation if self.identity is not None else None

    def _open_hello(self, sender: int, payload: bytes) -> tuple[Hello, int | None]:
        """Verify (when sealed) and parse a hello: (hello, its sealed incarnation); ValueError on anything wrong."""
        if len(payload) > self._max_hello:
            raise ValueError(f"hello of {len(payload)} bytes")
        incarnation = None
        if self.identity is not None:
            try:
                opened = self.identity.open(payload, sender=sender, kind="hello")
            except AuthError as exc:
                raise ValueError(str(exc)) from None
            payload, incarnation = opened.payload, opened.incarnation
        return Hello.from_bytes(payload), incarnation

    def _on_hello(self, client: mqtt.Client, sender: int, payload: bytes) -> None:
        """A neighbour's hello. Nothing changes until it verifies; then its incarnation joins
        the ones our hello lists (answering the neighbour's proof of freshness), and it is
        *accepted* (its payloads taken, its weights compared) only once it lists our own
        current incarnation (per-run epochs): a recording of an earlier run cannot."""
        if not payload:
            return
        try:
            hello, incarnation = self._open_hello(sender, payload)
        except ValueError as exc:
            # the last good hello stands: a forged retained one must not unplug the neighbour
            self._drop("malformed or unverified hello", f"from node {sender}: {exc}")
            return
        if incarnation is not None:
            with self._lock:
                if incarnation in self._retired.get(sender, ()):
                    stale = True
                else:
                    stale = False
                    seen = self._seen.setdefault(sender, [])
                    grew = incarnation not in seen
                    if grew:
                        seen.append(incarnation)
                        # a few per neighbour, and MAX_SEEN in all, so the hello stays bounded
                        del seen[:-max(1, min(_SEEN_PER_PEER, MAX_SEEN // max(1, len(self.neighbours))))]
            if stale:  # an incarnation the neighbour has left: a replay (or an echo of its past)
                self._drop("stale hello", f"node {sender}'s earlier incarnation {incarnation:016x}", count=False)
                return
            if grew and client is not None:  # the neighbour waits for our hello to list it: answer at once
                client.publish(topic(self.fleet, self.node_id, "hello"), self.hello_payload(), qos=1, retain=True)
            assert self.identity is not None
            mine = incarnation_hex(self.node_id, self.identity.incarnation)
            if self.identity.fresh and mine not in hello.seen:
                if any(e.startswith(f"{self.node_id}:") for e in hello.seen):
                    # it lists another incarnation of ours: a recording of an earlier run (or the
                    # neighbour's hello from before our own restart, superseded in a moment)
                    self._drop("stale hello", f"from node {sender}: lists none of this run's incarnations of ours",
                               count=False)
                return  # not (yet) proven of this run: the neighbour answers our hello with one that is
        with self._lock:
            previous = self._incarnation.get(sender)
            if incarnation is not None and previous != incarnation:
                if previous is not None:  # the neighbour restarted: its old incarnation is gone for good
                    retired = self._retired.setdefault(sender, deque(maxlen=_RETIRED_PER_PEER))
                    retired.append(previous)
                    self._seen[sender] = [i for i in self._seen.get(sender, []) if i != previous]
                    self._returned.add(sender)  # it holds none of our bases: a key frame next
                self._incarnation[sender] = incarnation
            self.peers[sender] = hello
            if (hello.fingerprint != self.hello.fingerprint or hello.node != sender or hello.protocol != PROTOCOL
                    or hello.wire_version != self.hello.wire_version):
                if sender not in self.incompatible:
                    log.warning("node %s: node %s has other fixed weights, protocol or wire version; "
                                "its frames are refused", self.node_id, sender)
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
        return [Envelope(sender, kind, payload) for sender, kind, payload in self._inbox.take(timeout)]

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
