"""``fleet watch``: a whole fleet's state from its broker alone, without torch.

It subscribes to ``dslth/<fleet>/+/hello``, ``+/status`` and ``+/report`` (all retained)
and keeps one :class:`NodeView` per node id: the profile and security mode from the
hello, online/offline from the status (the broker's last will says offline), and
round, accuracy, bytes sent and deadline misses from the node's progress report
(:mod:`dslth_edge.transport.report`).

Nothing a watcher reads is trusted unverified. Hellos and reports travel sealed
(:mod:`dslth_edge.transport.identity`); with the fleet's roster (Ed25519) or fleet key
(HMAC) the watcher verifies every seal and takes a report's figures only when it
checks out. CRC-sealed fleets authenticate nothing: their figures are shown, marked
``crc``. A report that is not sealed, fails its seal, or is malformed is shown as
such (``trust``) and its figures are left out (JSON: kept apart under ``claimed``).
The status topic is plain ``online``/``offline``: anything else is ``malformed``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from dslth_edge.errors import TransportError
from dslth_edge.transport.identity import MODES, SEAL_HEADER_BYTES, SEAL_MAGIC, AuthError, Identity
from dslth_edge.transport.messages import Hello, parse_status, topic
from dslth_edge.transport.mqtt_client import make_client
from dslth_edge.transport.mqtt_options import MqttOptions
from dslth_edge.transport.report import MAX_REPORT_BYTES, REPORT_KIND, parse_report

__all__ = ["NodeView", "FleetWatch", "render_table", "watch_lines"]

_MODE_BY_ID = {0: "crc", 1: "hmac", 2: "ed25519"}  # the seal header's mode byte (identity's layout)
_MAX_NODES = 100_000  # node ids a watcher keeps (a flood of made-up ids must not grow it without bound)


@dataclass
class NodeView:
    """What the broker says about one node."""

    node: int
    profile: str | None = None
    status: str = "unknown"  # online, offline, unknown, malformed
    security: str = "unknown"  # the hello's seal: ed25519, hmac, crc, plain, malformed
    hello: str = "none"  # verified, crc, unverified (no key given), bad seal, malformed, none
    trust: str = "none"  # the report's: verified, crc, unverified, bad seal, unsigned, malformed, none
    state: str | None = None  # the report's: starting, running, done, stopped
    round: int | None = None
    rounds: int | None = None
    acc: float | None = None
    bytes_sent: int | None = None
    misses: int | None = None
    reported_at: float | None = None  # unix time the node put in its report
    claimed: dict[str, Any] | None = field(default=None, repr=False)  # an untrusted report's fields

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "claimed" or v is not None}, sort_keys=True)


def _seal_mode(payload: bytes) -> str | None:
    """The mode byte of a sealed payload's header, None when it is not sealed."""
    if len(payload) < SEAL_HEADER_BYTES or payload[:4] != SEAL_MAGIC:
        return None
    return _MODE_BY_ID.get(payload[5], "malformed")


class FleetWatch:
    """Follows fleet ``fleet`` on a broker: :meth:`start`, :meth:`snapshot`, :meth:`close`.

    ``roster``: the fleet's roster (verifies Ed25519 seals); ``key``: the fleet's HMAC key.
    """

    def __init__(self, options: MqttOptions, fleet: str, *, roster: str | Path | None = None,
                 key: bytes | None = None) -> None:
        self.options, self.fleet, self.roster, self.key = options, fleet, roster, key
        self.views: dict[int, NodeView] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._last_message = time.monotonic()
        self._verifiers: dict[tuple[str, int], Identity | None] = {}
        self._client: mqtt.Client | None = None

    # ------------------------------------------------------------------ connection
    def start(self) -> "FleetWatch":
        """Connect (MQTT 3.1.1, a clean session under a throwaway id) and subscribe; raises TransportError."""
        addr = self.options.address()
        client = make_client(self.options, addr, client_id=f"dslth-{self.fleet}-watch-{time.time_ns() % 10**9}",
                             v5=False, persistent=False)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda c, u, mid, rcs, props=None: self._subscribed.set()
        client.on_message = self._on_message
        try:
            client.connect(addr.host, addr.port, keepalive=self.options.keepalive_s)
        except OSError as exc:
            raise TransportError(f"cannot reach MQTT broker {addr}: {exc.strerror or exc}") from exc
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(self.options.connect_timeout_s) or self._refused:
            self.close()
            raise TransportError(self._refused or f"MQTT broker {addr} did not accept the watcher within "
                                 f"{self.options.connect_timeout_s:.0f} s")
        return self

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._refused = f"MQTT broker {self.options.address()} refused the watcher: {rc}"
            client.disconnect()
            self._subscribed.set()  # a refusal is final: say so now, not after the connect timeout
            return
        client.subscribe([(topic(self.fleet, "+", kind), 1) for kind in ("hello", "status", REPORT_KIND)])

    def settle(self, quiet_s: float = 0.5, max_s: float = 5.0) -> None:
        """Wait for the retained burst after subscribing: until ``quiet_s`` without a message (at most ``max_s``)."""
        end = time.monotonic() + max_s
        while time.monotonic() < end and time.monotonic() - self._last_message < quiet_s:
            time.sleep(0.05)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def __enter__(self) -> "FleetWatch":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ messages
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._last_message = time.monotonic()
        try:
            parts = message.topic.split("/")
            if len(parts) != 4 or parts[1] != self.fleet or not parts[2].isdigit() or len(parts[2]) > 9:
                return
            node, kind, payload = int(parts[2]), parts[3], bytes(message.payload)
            with self._lock:
                view = self.views.get(node)
                if view is None:
                    if len(self.views) >= _MAX_NODES or not payload:
                        return
                    view = self.views[node] = NodeView(node)
                if kind == "status":
                    self._on_status(view, payload)
                elif kind == "hello":
                    self._on_hello(view, payload)
                elif kind == REPORT_KIND:
                    self._on_report(view, payload)
        except Exception:  # noqa: BLE001 - a hostile message must never stop the watcher's network thread
            return

    @staticmethod
    def _on_status(view: NodeView, payload: bytes) -> None:
        try:
            view.status = parse_status(payload[:32])
        except ValueError:
            view.status = "malformed"

    def _open(self, payload: bytes, sender: int, kind: str) -> tuple[str, bytes | None]:
        """(trust, opened payload or None): verify a seal with what this watcher holds."""
        mode = _seal_mode(payload)
        if mode is None:
            return "unsigned", None
        if mode not in MODES:
            return "malformed", None
        epoch = int.from_bytes(payload[16:24], "little")
        verifier = self._verifier(mode, epoch)
        if verifier is None:
            return "unverified", None
        try:
            opened = verifier.open(payload, sender=sender, kind=kind)
        except AuthError:
            return "bad seal", None
        return ("crc" if mode == "crc" else "verified"), opened.payload

    def _verifier(self, mode: str, epoch: int) -> Identity | None:
        key = (mode, epoch)
        if key not in self._verifiers:
            if mode == "crc":
                ident: Identity | None = Identity.verifier(mode="crc", fleet=self.fleet, epoch=epoch)
            elif mode == "hmac" and self.key:
                ident = Identity.verifier(mode="hmac", fleet=self.fleet, epoch=epoch, key=self.key)
            elif mode == "ed25519" and self.roster is not None:
                ident = Identity.verifier(mode="ed25519", fleet=self.fleet, epoch=epoch, roster_path=self.roster)
            else:
                ident = None
            if len(self._verifiers) < 64:  # epochs are few; a flood of made-up ones is not cached
                self._verifiers[key] = ident
            return ident
        return self._verifiers[key]

    def _on_hello(self, view: NodeView, payload: bytes) -> None:
        view.security = _seal_mode(payload) or "plain"
        trust, body = self._open(payload, view.node, "hello")
        view.hello = trust
        if body is None:
            if trust == "unsigned":  # a node without identity (older release): plain JSON, shown as such
                body, view.hello = payload, "unsigned"
            else:
                return
        try:
            hello = Hello.from_bytes(body)
        except ValueError:
            view.hello = "malformed"
            return
        if hello.node == view.node:
            view.profile = hello.profile[:32] if hello.profile else None

    def _on_report(self, view: NodeView, payload: bytes) -> None:
        if len(payload) > MAX_REPORT_BYTES + 256:
            self._untrusted(view, "malformed", None)
            return
        trust, body = self._open(payload, view.node, REPORT_KIND)
        try:
            report = parse_report(body if body is not None else payload)
        except ValueError:
            self._untrusted(view, "malformed" if trust in ("verified", "crc", "unsigned") else trust, None)
            return
        if body is None or report.node != view.node:
            self._untrusted(view, trust if report.node == view.node else "malformed", asdict(report))
            return
        view.trust, view.claimed = trust, None
        view.state, view.round, view.rounds, view.acc = report.state, report.round, report.rounds, report.acc
        view.bytes_sent, view.misses, view.reported_at = report.bytes_sent, report.misses, report.time
        if report.profile and view.profile is None:
            view.profile = report.profile[:32]

    @staticmethod
    def _untrusted(view: NodeView, trust: str, claimed: dict[str, Any] | None) -> None:
        view.trust, view.claimed = trust, claimed
        view.state = view.round = view.rounds = view.acc = view.bytes_sent = view.misses = view.reported_at = None

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> list[NodeView]:
        """Every node seen so far, by id (copies)."""
        with self._lock:
            return [NodeView(**asdict(v)) for _, v in sorted(self.views.items())]


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return "?"


def render_table(views: list[NodeView], *, fleet: str, broker: str, width: int = 80,
                 max_rows: int | None = None) -> list[str]:
    """The live table: a headline, then one line per node, every line at most ``width`` (>= 60) columns."""
    online = sum(v.status == "online" for v in views)
    done = sum(v.state == "done" for v in views)
    misses = sum(v.misses or 0 for v in views)
    head = f"fleet {fleet} on {broker}: {len(views)} nodes, {online} online, {done} done, {misses} deadline misses"
    cols = f"{'node':>5} {'profile':<14} {'status':<8} {'round':>9} {'acc %':>6} {'sent':>9} {'miss':>5} security"
    lines = [head, cols]
    shown = views if max_rows is None or len(views) <= max_rows else views[: max(0, max_rows - 1)]
    for v in shown:
        rnd = "?" if v.round is None else f"{v.round}/{v.rounds}"
        acc = "?" if v.acc is None else f"{100 * v.acc:.1f}"
        sec = v.security if v.trust in ("verified", "crc", "none") else f"{v.security} {v.trust}"
        lines.append(f"{v.node:>5} {(v.profile or '?')[:14]:<14} {v.status[:8]:<8} {rnd:>9} {acc:>6} "
                     f"{_fmt_bytes(v.bytes_sent):>9} {'?' if v.misses is None else v.misses:>5} {sec}")
    if len(shown) < len(views):
        lines.append(f"… {len(views) - len(shown)} more nodes (a taller terminal, or --json)")
    return [ln[:width] for ln in lines]


def watch_lines(fw: FleetWatch, out: TextIO, *, as_json: bool, once: bool, interval_s: float = 2.0,
                count: int | None = None, broker: str = "", tty: bool | None = None,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """Print the fleet: JSON Lines (one object per node) or the table; once, or every ``interval_s``
    (``count`` refreshes, None: until interrupted). On a terminal the table redraws in place;
    elsewhere each refresh is printed after the last. Returns the number of refreshes."""
    tty = out.isatty() if tty is None else tty
    n = 0
    while True:
        views = fw.snapshot()
        if as_json:
            for v in views:
                out.write(v.to_json() + "\n")
        else:
            size = shutil.get_terminal_size((80, 24))
            rows = size.lines - 3 if tty else None
            table = render_table(views, fleet=fw.fleet, broker=broker, width=min(size.columns, 80) if tty else 80,
                                 max_rows=rows)
            if tty:
                out.write("\x1b[H\x1b[J")
            elif n:
                out.write("\n")
            out.write("\n".join(table) + "\n")
        out.flush()
        n += 1
        if once or (count is not None and n >= count):
            return n
        sleep(interval_s)

