"""A node's small retained progress report on ``dslth/<fleet>/<node>/report``, for ``fleet watch``.

A node publishes, retained and QoS 1, one short JSON object after its rounds: where it
is (round, rounds, state), its last accuracy, the bytes it sent and its deadline misses.
It is bounded (:data:`MAX_REPORT_BYTES`), rate-limited by :class:`ReportThrottle` (at most
one per ``gap_s``, the last round's always) and sealed like every other payload of the
node (kind ``report``) so that a watcher holding the fleet's roster or key can verify
it. Neighbours subscribed to the node's topics ignore it (not a kind they read).

:func:`parse_report` is bounded, flat, typed and total: anything malformed is a
ValueError, never another exception, and never trusted by a watcher. No torch here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from dslth_edge.transport.messages import strict_int

__all__ = ["MAX_REPORT_BYTES", "REPORT_KIND", "NodeReport", "ReportThrottle", "parse_report"]

REPORT_KIND = "report"
MAX_REPORT_BYTES = 512
_STATES = ("starting", "running", "done", "stopped")


@dataclass(frozen=True)
class NodeReport:
    """One node's progress, as it reports it."""

    node: int
    round: int  # rounds done
    rounds: int
    state: str = "running"  # starting, running, done, stopped
    acc: float | None = None  # the last evaluated accuracy
    bytes_sent: int = 0  # cumulative payload bytes put on the wire
    misses: int = 0  # cumulative deadline misses (neighbour-rounds waited for, not heard)
    profile: str | None = None
    time: float = 0.0  # unix time of the report (the watcher's "last seen")

    def to_bytes(self) -> bytes:
        data = json.dumps({"type": "report", **asdict(self)}, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_REPORT_BYTES:
            raise ValueError(f"report of {len(data)} bytes exceeds {MAX_REPORT_BYTES}")
        return data


def parse_report(payload: bytes) -> NodeReport:
    """A report's fields, checked; ValueError on anything malformed (never another exception)."""
    if len(payload) > MAX_REPORT_BYTES:
        raise ValueError(f"report of {len(payload)} bytes")
    if payload.count(b"[") + payload.count(b"{") > 1:
        raise ValueError("report is not a flat object")
    try:
        raw = json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"report is not JSON: {type(exc).__name__}") from None
    if not isinstance(raw, dict) or raw.get("type") != "report":
        raise ValueError("report is not an object of type report")
    acc, profile, when, state = raw.get("acc"), raw.get("profile"), raw.get("time", 0.0), raw.get("state")
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1):
        raise ValueError("report acc must be null or a number in [0, 1]")
    if profile is not None and (not isinstance(profile, str) or len(profile) > 64):
        raise ValueError("report profile must be null or a short string")
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise ValueError("report time must be a finite number")
    if state not in _STATES:
        raise ValueError(f"report state must be one of {', '.join(_STATES)}")
    return NodeReport(node=strict_int(raw.get("node"), "node"), round=strict_int(raw.get("round"), "round"),
                      rounds=strict_int(raw.get("rounds"), "rounds"), state=state,
                      acc=None if acc is None else float(acc),
                      bytes_sent=strict_int(raw.get("bytes_sent"), "bytes_sent", hi=1 << 62),
                      misses=strict_int(raw.get("misses"), "misses"), profile=profile, time=float(when))


class ReportThrottle:
    """At most one report per ``gap_s``; a forced one (the last round, a stop) always goes."""

    def __init__(self, gap_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.gap_s, self.clock = gap_s, clock
        self._last: float | None = None

    def due(self, *, force: bool = False) -> bool:
        now = self.clock()
        if force or self._last is None or now - self._last >= self.gap_s:
            self._last = now
            return True
        return False

