"""Round deadlines for a node on a real network: fixed, or adapted to its neighbours.

A node moves on when it holds this round's masks from every live neighbour or when the
deadline passes. A fixed deadline must cover the slowest neighbour's compute plus the
network; too short drops masks (the run is no longer equal to the simulator's), too
long lets a dead neighbour stall the fleet until it is marked stale. The adaptive
policy watches how long complete rounds actually waited and allows a multiple of the
recent worst case, bounded below (scheduler noise) and above (the configured maximum).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

__all__ = ["AdaptiveDeadline", "DeadlinePolicy", "FixedDeadline", "StartupDeadline"]


class DeadlinePolicy(Protocol):
    """What a node asks of its round deadline: how long to wait, and how the last wait went."""

    def next_s(self) -> float:
        """Seconds this round may wait for the neighbours' payloads."""
        ...

    def observe(self, wait_s: float, *, complete: bool) -> None:
        """The round waited ``wait_s`` s; ``complete``: every live neighbour's payload came."""
        ...


class FixedDeadline:
    """The same deadline every round."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a round deadline must be positive")
        self.seconds = seconds

    def next_s(self) -> float:
        return self.seconds

    def observe(self, wait_s: float, *, complete: bool) -> None:
        """Nothing to learn."""


class AdaptiveDeadline:
    """``factor`` x the longest wait of the last ``window`` complete rounds + ``slack_s``.

    Until ``warmup`` complete rounds were seen (start-up: processes load data and
    compile at different speeds) the maximum applies. Rounds that hit the deadline are
    not learned from: their wait says nothing about the neighbours that did arrive.
    """

    def __init__(self, *, max_s: float = 60.0, min_s: float = 2.0, factor: float = 3.0, slack_s: float = 1.0,
                 window: int = 20, warmup: int = 3) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("need 0 < min_s <= max_s")
        self.max_s, self.min_s, self.factor, self.slack_s, self.warmup = max_s, min_s, factor, slack_s, warmup
        self._waits: deque[float] = deque(maxlen=window)

    def next_s(self) -> float:
        if len(self._waits) < self.warmup:
            return self.max_s
        return min(self.max_s, max(self.min_s, self.factor * max(self._waits) + self.slack_s))

    def observe(self, wait_s: float, *, complete: bool) -> None:
        if complete:
            self._waits.append(wait_s)


class StartupDeadline:
    """``inner``, except that the first round after a (re)start may wait up to ``first_s``.

    A node's neighbours start their round 0 only after *their* neighbours said hello, so
    a node whose own neighbours are up can still wait a whole start-up (another device
    loading torch and its data) for their first frames. Without this, a short fixed
    deadline lets it run round 0 alone, mark the neighbours stale and race ahead
    without ever hearing them. That first wait is not learned from.
    """

    def __init__(self, inner: DeadlinePolicy, first_s: float) -> None:
        self.inner = inner
        self.first_s = first_s
        self._first = True

    def next_s(self) -> float:
        s = self.inner.next_s()
        return max(s, self.first_s) if self._first else s

    def observe(self, wait_s: float, *, complete: bool) -> None:
        if self._first:
            self._first = False
            return
        self.inner.observe(wait_s, complete=complete)
