"""MQTT transport: one node's connection to the fleet's broker (paho-mqtt 2.x).

Topics (``docs/mqtt.md`` is the reference)::

    dslth/<fleet>/<node>/hello    retained JSON: protocol, profile, keep, fingerprint, codecs
    dslth/<fleet>/<node>/status   retained "online"; the broker publishes "offline" (last will)
    dslth/<fleet>/<node>/mask     QoS 1 wire frames, chunked above max_message_bytes
    dslth/<fleet>/<node>/ctl      QoS 1 control messages (key-frame requests)

A node publishes only under its own id and subscribes only to its neighbours'
topics, so a broker ACL can pin each client to its id. The sender of a payload is the
node id in its topic; the frame inside names its sender too and the exchange refuses a
mismatch. MQTT 5 is used when the broker speaks it (session expiry, clean start only
on the first connection of a fresh run), MQTT 3.1.1 otherwise (amqtt); either way the
session is persistent, paho reconnects with backoff and ``on_connect`` restores the
subscriptions, hello and status. Recent frames are kept and published again after a
reconnect and whenever a neighbour comes (back) online, so a broker restart or a
rejoining node loses no round; receivers drop the copies.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from dslth_edge.errors import TransportError, UsageError
from dslth_edge.wire import CODEC_NAMES, DEFAULT_MAX_MESSAGE_BYTES, VERSION as WIRE_VERSION, Chunker, FrameError, Reassembler
from dslth_edge.transport.base import Envelope

__all__ = [
    "PROTOCOL",
    "ENV_USERNAME",
    "ENV_PASSWORD",
    "BrokerAddress",
    "MqttOptions",
    "Hello",
    "MqttTransport",
    "parse_broker_url",
    "read_secret",
    "topic",
]

log = logging.getLogger(__name__)

#: Version of the topic/hello protocol (the wire format has its own version).
PROTOCOL = 1
ENV_USERNAME = "DSLTH_MQTT_USERNAME"
ENV_PASSWORD = "DSLTH_MQTT_PASSWORD"
_KINDS = ("hello", "status", "mask", "ctl")
_MAX_HELLO_BYTES = 4096
_AUTH_FAILURES = {"Bad user name or password", "Not authorized", "Client identifier not valid", "Banned"}


def topic(fleet: str, node: int | str, kind: str) -> str:
    """``dslth/<fleet>/<node>/<kind>``."""
    return f"dslth/{fleet}/{node}/{kind}"


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged a QoS 1 publish.

    paho's ``is_published()`` raises for a message published while disconnected, though
    it is queued and sent on reconnect; its flag is still set by the PUBACK.
    """
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return bool(getattr(info, "_published", False))


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS)."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://``, ``tcp://``, ``mqtts://``/``ssl://`` URLs (credentials allowed, not advised)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "tcp", "mqtts", "ssl", "tls"):
        raise UsageError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = scheme in ("mqtts", "ssl", "tls")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise UsageError(f"broker URL {url!r}: bad port") from None
    if not parts.hostname:
        raise UsageError(f"broker URL {url!r}: no host")
    return BrokerAddress(parts.hostname, port, tls,
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None)


def read_secret(*, env: str | None = None, file: str | None = None) -> str | None:
    """A secret from a file (first line, trailing newline stripped) or else an environment variable."""
    if file:
        try:
            return Path(file).read_text().splitlines()[0] if Path(file).stat().st_size else ""
        except OSError as exc:
            raise UsageError(f"cannot read secret file {file}: {exc.strerror or exc}") from exc
    if env:
        return os.environ.get(env)
    return None


@dataclass(frozen=True)
class MqttOptions:
    """How to reach the broker. Credentials: explicit, else the URL's, else ``$DSLTH_MQTT_*``."""

    url: str = "mqtt://127.0.0.1:1883"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip host-name verification (self-signed test set-ups only)
    username: str | None = None
    password: str | None = None
    protocol: str = "auto"  # "auto" (5, else 3.1.1), "5" or "3.1.1"
    keepalive_s: int = 10
    session_expiry_s: int = 3600
    connect_timeout_s: float = 20.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    resend_frames: int = 2  # recent frames published again after a reconnect / a peer's return

    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    def credentials(self) -> tuple[str | None, str | None]:
        addr = self.address()
        user = self.username or addr.username or os.environ.get(ENV_USERNAME)
        password = self.password if self.password is not None else addr.password
        if password is None:
            password = os.environ.get(ENV_PASSWORD)
        return user, password


@dataclass(frozen=True)
class Hello:
    """What a node announces (retained) before it gossips: who it is and what it can decode."""

    node: int
    fleet: str
    fingerprint: str  # hex SHA-256 of the fixed weights: frames from another one are refused
    profile: str | None = None
    keep: tuple[float, ...] = ()
    codecs: tuple[str, ...] = tuple(CODEC_NAMES)
    protocol: int = PROTOCOL
    wire_version: int = WIRE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Hello":
        """Parse a hello (bounded; raises ValueError on anything malformed)."""
        if len(data) > _MAX_HELLO_BYTES:
            raise ValueError("hello too large")
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("hello is not an object")
        return cls(node=int(raw["node"]), fleet=str(raw["fleet"]), fingerprint=str(raw["fingerprint"]),
                   profile=raw.get("profile"), keep=tuple(float(k) for k in raw.get("keep", ())),
                   codecs=tuple(str(c) for c in raw.get("codecs", ())), protocol=int(raw.get("protocol", 0)),
                   wire_version=int(raw.get("wire_version", 0)), extra=dict(raw.get("extra", {})))


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
    ) -> None:
        if "/" in fleet or "+" in fleet or "#" in fleet or not fleet:
            raise UsageError(f"fleet name {fleet!r} must be non-empty without '/', '+' or '#'")
        self.options = options
        self.fleet = fleet
        self.node_id = node_id
        self.neighbours = tuple(sorted(set(neighbours)))
        self.hello = hello
        self.fresh = fresh  # a fresh run wipes this client id's old broker session first
        self.stats = TransportStats()
        self.peers: dict[int, Hello] = {}
        self.incompatible: set[int] = set()
        self.online: set[int] = set()
        self._offline: set[int] = set()  # seen online, then its last will
        self._returned: set[int] = set()
        self._lock = threading.Lock()
        self._inbox: queue.Queue[tuple[int, str, bytes]] = queue.Queue()
        self._recent: deque[list[bytes]] = deque(maxlen=max(1, options.resend_frames))
        self._chunker = Chunker(options.max_message_bytes)
        self._reassembler = Reassembler(max_frame_bytes, timeout_s=120.0)
        self._max_message = max(options.max_message_bytes, max_frame_bytes) + 64
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client: mqtt.Client | None = None
        self._v5 = False
        self._closing = False
        self._first_connect = True
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
        use_v5 = proto in ("auto", "5")
        # A probe is a clean connection: under our own client id it wipes the broker's session
        # (subscriptions, frames queued while we were away). That is wanted for a fresh run
        # only; a resumed node probes under another id and keeps its session.
        probe_id = self.client_id if self.fresh else f"{self.client_id}-probe"
        wiped = False
        if use_v5:
            verdict = self._probe(addr, v5=True, client_id=probe_id)
            if verdict == "unsupported" and proto == "auto":
                use_v5 = False
            elif verdict != "ok":
                raise TransportError(verdict)
            else:
                wiped = self.fresh
        if not use_v5 or (self.fresh and not wiped):
            # 3.1.1 has no clean-start-then-persist: a clean connection clears the old session
            verdict = self._probe(addr, v5=use_v5, client_id=probe_id)
            if verdict != "ok":
                raise TransportError(verdict)
        self._v5 = use_v5
        self._client = self._make_client(addr, v5=use_v5, persistent=True)
        try:
            self._client.connect_async(addr.host, addr.port, keepalive=self.options.keepalive_s,
                                       clean_start=False if use_v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                                       properties=self._connect_properties() if use_v5 else None)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot reach MQTT broker {addr}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(self.options.connect_timeout_s):
            self._client.loop_stop()
            raise TransportError(self._refused or f"MQTT broker {addr} did not accept node {self.node_id} "
                                 f"within {self.options.connect_timeout_s:.0f} s")
        return self

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.options.session_expiry_s
        return props

    def _make_client(self, addr: BrokerAddress, *, v5: bool, persistent: bool, client_id: str | None = None) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        user, password = self.options.credentials()
        if user is not None:
            client.username_pw_set(user, password)
        if addr.tls:
            try:
                client.tls_set(ca_certs=self.options.ca_file, certfile=self.options.cert_file,
                               keyfile=self.options.key_file, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise TransportError(f"TLS set-up for {addr} failed: {exc}") from exc
            if self.options.insecure:
                client.tls_insecure_set(True)
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.max_queued_messages_set(0)  # QoS 1 frames published while offline wait, unbounded
        if persistent:
            client.will_set(topic(self.fleet, self.node_id, "status"), b"offline", qos=1, retain=True)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
        return client

    def _probe(self, addr: BrokerAddress, *, v5: bool, client_id: str | None = None) -> str:
        """One short clean connection: "ok", "unsupported" (no MQTT 5) or an error line."""
        result: dict[str, Any] = {}
        done = threading.Event()
        client = self._make_client(addr, v5=v5, persistent=False, client_id=client_id)

        def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
            result["rc"] = rc
            done.set()

        def on_disconnect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
            result.setdefault("rc", rc)
            done.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        try:
            client.connect(addr.host, addr.port, keepalive=self.options.keepalive_s,
                           clean_start=True if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        except ssl.SSLError as exc:
            return f"TLS handshake with MQTT broker {addr} failed: {exc}"
        except OSError as exc:
            return f"cannot reach MQTT broker {addr}: {exc.strerror or exc}"
        deadline = time.monotonic() + self.options.connect_timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            client.loop(0.1)
        rc = result.get("rc")
        try:
            client.disconnect()
            client.loop(0.05)
        except Exception:  # noqa: BLE001 - best effort on a throwaway connection
            pass
        if rc is None:
            return f"MQTT broker {addr} did not answer node {self.node_id} within {self.options.connect_timeout_s:.0f} s"
        if not rc.is_failure:
            return "ok"
        if str(rc) == "Unsupported protocol version":
            return "unsupported"
        user, _ = self.options.credentials()
        who = f"user {user!r}" if user else "anonymous"
        if str(rc) in _AUTH_FAILURES:
            return f"MQTT broker {addr} refused node {self.node_id} ({who}): {rc}"
        return f"MQTT broker {addr} refused node {self.node_id}: {rc}"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._refused = f"MQTT broker {self.options.address()} refused node {self.node_id}: {rc}"
            if str(rc) in _AUTH_FAILURES:  # retrying with the same credentials cannot help
                client.disconnect()
            return
        # subscriptions first: a persistent session keeps them, but a restarted broker without
        # persistence (amqtt) does not
        subs = [(topic(self.fleet, j, "+"), 1) for j in self.neighbours]
        if subs:
            client.subscribe(subs)
        client.publish(topic(self.fleet, self.node_id, "hello"), self.hello.to_bytes(), qos=1, retain=True)
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

    def _resend(self, client: mqtt.Client) -> None:
        with self._lock:
            recent = list(self._recent)
        for messages in recent:
            for msg in messages:
                client.publish(topic(self.fleet, self.node_id, "mask"), msg, qos=1)
                self.stats.resent += 1

    # ------------------------------------------------------------------ receiving
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 4 or parts[0] != "dslth" or parts[1] != self.fleet or parts[3] not in _KINDS:
            return
        try:
            sender = int(parts[2])
        except ValueError:
            return
        if sender not in self.neighbours:
            return
        kind, payload = parts[3], bytes(message.payload)
        if kind == "hello":
            self._on_hello(sender, payload)
        elif kind == "status":
            self._on_status(client, sender, payload)
        else:
            self._inbox.put((sender, kind, payload))

    def _on_hello(self, sender: int, payload: bytes) -> None:
        if not payload:
            return
        try:
            hello = Hello.from_bytes(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("node %s: malformed hello from node %s ignored", self.node_id, sender)
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

    def _on_status(self, client: mqtt.Client, sender: int, payload: bytes) -> None:
        with self._lock:
            if payload == b"online":
                if sender in self._offline:
                    self._returned.add(sender)
                self._offline.discard(sender)
                self.online.add(sender)
            elif payload == b"offline":
                self.online.discard(sender)
                self._offline.add(sender)
                return
            else:
                return
        # a neighbour came (back) online: it may have missed our last frames
        self._resend(client)

    def poll(self, timeout: float) -> list[Envelope]:
        """Mask/ctl payloads received since the last call, waiting up to ``timeout`` s for the first."""
        out: list[Envelope] = []
        try:
            item = self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return out
        while True:
            self._deliver(item, out)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return out

    def _deliver(self, item: tuple[int, str, bytes], out: list[Envelope]) -> None:
        sender, kind, payload = item
        self.stats.messages_in += 1
        self.stats.bytes_in += len(payload)
        if kind == "ctl":
            out.append(Envelope(sender, kind, payload[:256]))
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
            with self._lock:
                self._recent.append(messages)
        sent = 0
        for msg in messages:
            info = self._client.publish(topic(self.fleet, self.node_id, kind), msg, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued for the reconnect
                raise TransportError(f"node {self.node_id}: MQTT publish failed: {mqtt.error_string(info.rc)}")
            sent += len(msg)
            self._unacked.append(info)
        while self._unacked and _acked(self._unacked[0]):
            self._unacked.popleft()
        self.stats.messages_out += len(messages)
        self.stats.bytes_out += sent
        return sent

    # ------------------------------------------------------------------ fleet state
    def unavailable(self) -> set[int]:
        """Neighbours not worth waiting for: those with other fixed weights or protocol.

        A last-will "offline" is deliberately not enough: Mosquitto publishes the wills of
        all its clients when it shuts down, so after a broker restart every neighbour would
        look dead. A dead neighbour costs its deadline until it is stale instead.
        """
        with self._lock:
            return set(self.incompatible)

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
        while True:
            with self._lock:
                missing = {j for j in self.neighbours if j not in self.online or j not in self.peers}
            if not missing or time.monotonic() >= end:
                return missing
            time.sleep(0.05)

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
            if _acked(self._unacked[0]):
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
