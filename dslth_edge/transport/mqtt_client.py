"""paho clients for the MQTT transport: how one is built from :class:`MqttOptions`, the short
connections a node makes before its session, and the one paho private the transport reads.

Before a node opens its persistent session, :func:`refuse_duplicate` makes sure no live
process already runs its node id: a second process started with that id is refused
before it can take over the first one's MQTT session. It reads the id's retained status,
and if that says "online" it pings the id's ``ctl`` topic; a live owner answers (the
transport answers pings), and each side prints one line. :func:`probe` then finds out
whether the broker speaks MQTT 5 and whether it accepts the node at all, as one clear line.
"""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dslth_edge.errors import TransportError
from dslth_edge.transport.messages import parse_control, ping_payload, topic
from dslth_edge.transport.mqtt_options import BrokerAddress, MqttOptions

__all__ = [
    "AUTH_FAILURES",
    "refusal",
    "OUT_LIMIT",
    "connect_properties",
    "is_acked",
    "make_client",
    "paho_published_flag",
    "probe",
    "refuse_duplicate",
]

OUT_LIMIT = 10_000  # QoS 1 messages paho may hold while the broker is away
_DUPLICATE_WAIT_S = 3.0  # how long a starting node waits for a live owner of its id to answer
#: CONNACK reasons that retrying with the same credentials cannot cure
AUTH_FAILURES = {"Bad user name or password", "Not authorized", "Client identifier not valid", "Banned"}


def paho_published_flag(info: mqtt.MQTTMessageInfo) -> bool:
    """paho's private "PUBACK received" flag of ``info`` (the one use of a paho private).

    Checked against paho-mqtt 2.0–2.2 (``MQTTMessageInfo.__slots__`` holds
    ``_published``, set by ``_set_as_published`` on PUBACK). tests/transport/test_handlers.py
    fails loudly if a paho release renames it; then replace this function.
    """
    return bool(info._published)  # noqa: SLF001 - paho has no public read of it (see above)


def is_acked(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged a QoS 1 publish.

    paho's ``is_published()`` raises for a message published while disconnected, though
    it is queued and sent on reconnect; its flag is still set by the PUBACK.
    """
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return paho_published_flag(info)


def connect_properties(options: MqttOptions) -> Properties:
    """MQTT 5 CONNECT properties of a node's persistent session (its expiry)."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = options.session_expiry_s
    return props


def make_client(options: MqttOptions, addr: BrokerAddress, *, client_id: str, v5: bool, persistent: bool,
                will_topic: str | None = None) -> mqtt.Client:
    """A paho client for ``addr``: credentials, TLS, reconnect backoff, a bounded outgoing queue.

    ``persistent``: a session kept across reconnects (else a clean one); ``will_topic``:
    where the broker publishes a retained "offline" when the client vanishes. TLS set-up
    problems are a :class:`TransportError`.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
    )
    user, password = options.credentials()
    if user is not None:
        client.username_pw_set(user, password)
    if addr.tls:
        try:
            client.tls_set(ca_certs=options.ca_file, certfile=options.cert_file,
                           keyfile=options.key_file, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(f"TLS set-up for {addr} failed: {exc}") from exc
        if options.insecure:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(min_delay=1, max_delay=8)
    client.max_queued_messages_set(OUT_LIMIT)  # bounded: a full queue drops (counted), never blocks
    if will_topic is not None:
        client.will_set(will_topic, b"offline", qos=1, retain=True)
    return client


def refuse_duplicate(options: MqttOptions, addr: BrokerAddress, *, fleet: str, node_id: int, client_id: str,
                     instance: str) -> None:
    """Raise TransportError when another live process already runs node ``node_id``.

    Under a throwaway client id (so that nobody's session is taken over): read the
    id's retained status; only if it says "online" ping the id's ctl topic and wait
    briefly for the owner's pong (a garbled status is pinged too). A node killed before
    its last will fired stays silent, so a restart after a crash goes ahead after the wait.
    ``client_id`` is the node's own client id; ``instance`` names the asking process.
    """
    nonce = secrets.token_hex(8)
    status_topic, ctl_topic = topic(fleet, node_id, "status"), topic(fleet, node_id, "ctl")
    seen: dict[str, Any] = {}
    subscribed, answered = threading.Event(), threading.Event()
    try:
        # MQTT 3.1.1: every broker speaks it, and the protocol probe must come after this check
        # (a fresh run's probe uses our client id, which would take over a live owner's session)
        client = make_client(options, addr, v5=False, persistent=False, client_id=f"{client_id}-check-{nonce}")
    except TransportError:
        return  # the probe that follows reports TLS problems

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:  # refused (credentials, ACL): nothing to check; the connection that follows says why
            seen["refused"] = True
            subscribed.set()
            return
        c.subscribe(status_topic, 1)

    def on_subscribe(c: mqtt.Client, u: Any, mid: Any, rcs: Any, props: Any = None) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == status_topic:
                seen["status"] = bytes(msg.payload)
            else:
                ctl = parse_control(bytes(msg.payload))
                if ctl["type"] == "pong" and ctl.get("nonce") == nonce:
                    seen["pong"] = ctl
                    answered.set()
        except ValueError:
            pass

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(addr.host, addr.port, keepalive=options.keepalive_s)
    except (OSError, ssl.SSLError, ValueError):
        return  # the probe that follows reports it
    client.loop_start()
    try:
        if not subscribed.wait(options.connect_timeout_s) or seen.get("refused"):
            return
        time.sleep(0.3)  # retained messages follow the SUBACK
        if seen.get("status") in (None, b"offline"):  # no owner, or it left (or its will fired)
            return
        subscribed.clear()
        client.subscribe(ctl_topic, 1)  # only now: a fresh fleet's start costs one subscription
        if not subscribed.wait(options.connect_timeout_s):
            return
        client.publish(ctl_topic, ping_payload(nonce, instance), qos=1)
        if answered.wait(_DUPLICATE_WAIT_S):
            pong = seen["pong"]
            raise TransportError(
                f"node {node_id} of fleet {fleet!r} is already running (pid {pong.get('pid', '?')} on "
                f"{str(pong.get('host', '?'))[:64]}): was --id {node_id} given to two processes?")
    finally:
        client.disconnect()
        client.loop_stop()


def probe(options: MqttOptions, addr: BrokerAddress, *, v5: bool, client_id: str, node_id: int) -> str:
    """One short clean connection under ``client_id``: "ok", "unsupported" (no MQTT 5) or an
    error line naming node ``node_id``."""
    result: dict[str, Any] = {}
    done = threading.Event()
    client = make_client(options, addr, v5=v5, persistent=False, client_id=client_id)

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        result["rc"] = rc
        done.set()

    def on_disconnect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        result.setdefault("rc", rc)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(addr.host, addr.port, keepalive=options.keepalive_s,
                       clean_start=True if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
    except ssl.SSLError as exc:
        return f"TLS handshake with MQTT broker {addr} failed: {exc}"
    except OSError as exc:
        return f"cannot reach MQTT broker {addr}: {exc.strerror or exc}"
    deadline = time.monotonic() + options.connect_timeout_s
    while not done.is_set() and time.monotonic() < deadline:
        client.loop(0.1)
    rc = result.get("rc")
    try:
        client.disconnect()
        client.loop(0.05)
    except Exception:  # noqa: BLE001 - best effort on a throwaway connection
        pass
    if rc is None:
        return f"MQTT broker {addr} did not answer node {node_id} within {options.connect_timeout_s:.0f} s"
    if not rc.is_failure:
        return "ok"
    if str(rc) == "Unsupported protocol version":
        return "unsupported"
    return refusal(options, node_id, rc)


def refusal(options: MqttOptions, node_id: int, rc: Any) -> str:
    """The one line for a broker's refusal of node ``node_id`` (with the user, for credentials)."""
    addr = options.address()
    if str(rc) in AUTH_FAILURES:
        user, _ = options.credentials()
        who = f"user {user!r}" if user else "anonymous"
        return f"MQTT broker {addr} refused node {node_id} ({who}): {rc}"
    return f"MQTT broker {addr} refused node {node_id}: {rc}"
