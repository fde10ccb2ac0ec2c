"""The MQTT fleet protocol's messages: topic names and the strict parsers of every format.

Topics (``docs/mqtt.md`` is the reference)::

    dslth/<fleet>/<node>/hello    retained JSON: protocol, profile, keep, fingerprint, codecs,
                                  the neighbours' incarnations heard (``seen``)
    dslth/<fleet>/<node>/status   retained "online"; the broker publishes "offline" (last will)
    dslth/<fleet>/<node>/mask     QoS 1 wire frames, chunked above max_message_bytes
    dslth/<fleet>/<node>/ctl      QoS 1 control messages (key-frame requests, ping, pong)

Each parser is bounded, typed and total: a payload that is malformed in any way
(overflowing numbers, deep nesting, oversized, not UTF-8, wrong types) is a ValueError
and never another exception, so the transport's handlers can drop it and go on.
The mask frames themselves are the wire format's business (:mod:`dslth_edge.wire`).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from dslth_edge.errors import UsageError
from dslth_edge.wire import CODEC_NAMES
from dslth_edge.wire import VERSION as WIRE_VERSION

__all__ = [
    "check_fleet_name",
    "PROTOCOL",
    "KINDS",
    "MAX_HELLO_BYTES",
    "MAX_CTL_BYTES",
    "MAX_STATUS_BYTES",
    "Hello",
    "parse_control",
    "parse_status",
    "ping_payload",
    "pong_payload",
    "strict_int",
    "topic",
]

#: Version of the topic/hello protocol (the wire format has its own version). 2: sealed
#: payloads carry the sender's incarnation, hellos list the incarnations heard (``seen``).
PROTOCOL = 2
#: The topic kinds under ``dslth/<fleet>/<node>/``.
KINDS = ("hello", "status", "mask", "ctl")
MAX_HELLO_BYTES = 20480  # room for ``seen``: MAX_SEEN entries of up to 30 bytes, and the rest
_MAX_HELLO_BRACKETS = 64  # a hello opens 4; deep nesting would make json.loads recurse
MAX_CTL_BYTES = 256
MAX_STATUS_BYTES = 16
#: entries of a hello's ``seen`` list ("<node>:<16 hex digits>", a few per neighbour)
MAX_SEEN = 512
_SEEN_ENTRY = re.compile(r"[0-9]{1,10}:[0-9a-f]{16}")


_FLEET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_fleet_name(fleet: str) -> str:
    """``fleet`` if it is a safe fleet name, else UsageError: 1-64 letters, digits, '.', '_'
    or '-', starting with a letter or digit. The name becomes an MQTT topic level, a client
    id and part of directory names, so it is checked before any of them is built."""
    if not isinstance(fleet, str) or not _FLEET_NAME.fullmatch(fleet):
        raise UsageError(f"fleet name {fleet!r} must be 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return fleet


def topic(fleet: str, node: int | str, kind: str) -> str:
    """``dslth/<fleet>/<node>/<kind>``."""
    return f"dslth/{fleet}/{node}/{kind}"


def strict_int(value: Any, name: str, lo: int = 0, hi: int = 1 << 32) -> int:
    """``value`` if it is an int (not a bool) in ``[lo, hi)``; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value < hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi})")
    return value


def parse_status(payload: bytes) -> str:
    """``"online"`` or ``"offline"``; ValueError for anything else (never another exception)."""
    if payload == b"online":
        return "online"
    if payload == b"offline":
        return "offline"
    raise ValueError(f"status payload of {len(payload)} bytes is neither online nor offline")


def parse_control(payload: bytes) -> dict[str, Any]:
    """A control message (key request, ping, pong) as a flat dict; ValueError on anything malformed.

    Bounded (256 bytes), flat (no nested containers), typed: ``type`` is a string and
    ``target``/``round``/``pid`` integers where present. Raises only ValueError.
    """
    if len(payload) > MAX_CTL_BYTES:
        raise ValueError("control message too large")
    try:
        msg = json.loads(bytes(payload).decode("utf-8"))  # strict UTF-8 (no lone surrogates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"control message is not JSON: {type(exc).__name__}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError("control message is not an object with a type")
    for k, v in msg.items():
        if isinstance(v, (dict, list)):
            raise ValueError(f"control field {k!r} is nested")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"control field {k!r} is not finite")
    for k in ("target", "round", "pid"):
        if k in msg:
            strict_int(msg[k], k)
    return msg


def ping_payload(nonce: str, instance: str) -> bytes:
    """A ping on a node id's ``ctl`` topic: is a live process running this id? (``instance``: the asker's)"""
    return json.dumps({"type": "ping", "nonce": nonce, "pid": os.getpid(), "instance": instance}).encode()


def pong_payload(nonce: Any) -> bytes:
    """The owner's answer to a ping carrying ``nonce``: its pid and host name (bounded)."""
    return json.dumps({"type": "pong", "nonce": str(nonce)[:32], "pid": os.getpid(),
                       "host": socket.gethostname()[:64]}).encode()


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
    #: the neighbours' incarnations this node has heard, as "<node>:<hex>": a receiver takes
    #: this node's payloads only once its own current incarnation is listed (proof that the
    #: hello is of this run, not a recording: see :mod:`dslth_edge.transport.identity`)
    seen: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Hello":
        """Parse a hello: bounded, typed, never another exception than ValueError.

        Overflowing or non-finite numbers, deep nesting, invalid UTF-8, wrong types and
        missing fields are all a ValueError.
        """
        if len(data) > MAX_HELLO_BYTES:
            raise ValueError("hello too large")
        data = bytes(data)
        if data.count(b"[") + data.count(b"{") > _MAX_HELLO_BRACKETS:  # never let json recurse deeply
            raise ValueError("hello too deeply nested")
        try:
            raw = json.loads(data.decode("utf-8"))  # strict: json.loads(bytes) would pass surrogates
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ValueError(f"hello is not JSON: {type(exc).__name__}") from None
        if not isinstance(raw, dict):
            raise ValueError("hello is not an object")
        try:
            node = strict_int(raw["node"], "node")
            fleet, fingerprint, profile = raw["fleet"], raw["fingerprint"], raw.get("profile")
            keep, codecs, extra = raw.get("keep", []), raw.get("codecs", []), raw.get("extra", {})
            seen = raw.get("seen", [])
        except KeyError as exc:
            raise ValueError(f"hello lacks {exc.args[0]!r}") from None
        if not isinstance(fleet, str) or not isinstance(fingerprint, str) or not (profile is None or isinstance(profile, str)):
            raise ValueError("hello fleet, fingerprint and profile must be strings")
        if not isinstance(keep, list) or not all(isinstance(k, (int, float)) and not isinstance(k, bool)
                                                 and math.isfinite(k) for k in keep):
            raise ValueError("hello keep must be a list of finite numbers")
        if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
            raise ValueError("hello codecs must be a list of strings")
        if not isinstance(extra, dict) or any(isinstance(v, (dict, list)) for v in extra.values()):
            raise ValueError("hello extra must be a flat object")
        if any(isinstance(v, float) and not math.isfinite(v) for v in extra.values()):
            raise ValueError("hello extra holds a non-finite number")
        if (not isinstance(seen, list) or len(seen) > MAX_SEEN
                or not all(isinstance(e, str) and _SEEN_ENTRY.fullmatch(e) for e in seen)):
            raise ValueError(f"hello seen must be a list of at most {MAX_SEEN} \"<node>:<16 hex>\" strings")
        return cls(node=node, fleet=fleet, fingerprint=fingerprint, profile=profile,
                   keep=tuple(float(k) for k in keep), codecs=tuple(codecs),
                   protocol=strict_int(raw.get("protocol", 0), "protocol"),
                   wire_version=strict_int(raw.get("wire_version", 0), "wire_version"), extra=dict(extra),
                   seen=tuple(seen))
