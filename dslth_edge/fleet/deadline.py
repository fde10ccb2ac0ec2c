"""Round deadlines for a node on a real network: fixed, or adapted to its neighbours.

A node moves on when it holds this round's masks from every live neighbour or when the
deadline passes. A fixed deadline must cover the slowest neighbour's compute plus the
network; too short drops masks (the run is no longer equal to the simulator's), too
long lets a dead neighbour stall the fleet until it is marked stale. The adaptive
policy watches how long complete rounds actually waited and allows a multiple of the
recent worst case, bounded below (scheduler noise) and above (the configured maximum).
A node on MQTT wraps it in :class:`LiveDeadline`: a neighbour that is online is waited
for as long as reason allows (known extra work and its process's load included), and
only an absent one gets the adaptive deadline, so a healthy fleet is never cut.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["AdaptiveDeadline", "DeadlinePolicy", "FixedDeadline", "LiveDeadline", "StartupDeadline", "heavy_round"]


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
            note = getattr(self.inner, "note_wait", None)
            if note is not None:  # not learned from, but the round's own work is still timed
                note(wait_s)
            return
        self.inner.observe(wait_s, complete=complete)

    def settle(self, heard: set[int]) -> list[int]:
        """The inner policy's deadline misses of the last round (none when it does not count them)."""
        settle = getattr(self.inner, "settle", None)
        return settle(heard) if settle is not None else []


def heavy_round(round: int, *, rounds: int, eval_every: int, checkpoint_every: int) -> bool:  # noqa: A002
    """Whether the neighbours' frames of ``round`` follow known extra work.

    Every node of a fleet shares the plan's schedule: after round ``k - 1`` a node
    evaluates when ``k`` is a multiple of ``eval_every`` and checkpoints when it is a
    multiple of ``checkpoint_every``, so its frame of round ``k`` comes late by that
    work. In the last round the nodes that finished first evaluate on their whole test
    split, checkpoint and write their masks, and in a ``fleet run`` worker that work
    shares the CPU with the neighbours still training their last step.
    """
    if round <= 0:
        return False
    return (round == rounds - 1 or (eval_every > 0 and round % eval_every == 0)
            or (checkpoint_every > 0 and round % checkpoint_every == 0))


class LiveDeadline:
    """Wait for live neighbours as long as reason allows; adapt to the recent past only for absent ones.

    A deadline exists to stop a dead or hung neighbour from stalling the fleet, not to
    race a live one: cutting a neighbour that is merely busy (evaluating, checkpointing,
    sharing a ``fleet run`` worker with hundreds of other nodes) silently departs from
    the simulator. So at the start of each round:

    * every neighbour waited for is online (its MQTT session is up, no last will): the
      round may wait the *patience*: ``max_s``, or ``factor`` x the longest complete
      round this node has run recently, or ``factor`` x its longest recent own work (a
      round less its wait, timed from round 0 on: it carries its process's contention,
      which the neighbours' rounds share), or ``factor`` x ``cycle_s()`` (how long this node's
      process takes to give each node it hosts one round: a neighbour in a process like it
      may get its turn last, however early this node's came), whichever is longest; in a
      round after known extra work (:func:`heavy_round`) ``factor`` x the longest wait of
      such rounds too;
    * some neighbour waited for is not online (vanished, or not yet back): the
      ``inner`` policy's deadline (adaptive: a multiple of recent complete waits).

    Only a neighbour slower than that patience, or gone, is missed; :meth:`settle`
    counts the misses per round. With ``patient=False`` (a fixed deadline the operator
    chose) the inner deadline always applies and only the counting remains. ``clock``
    is injectable so that tests need no sleeps.
    """

    def __init__(self, inner: "FixedDeadline | AdaptiveDeadline", *, current_round: Callable[[], int],
                 expected: Callable[[], set[int]], online: Callable[[], set[int]], heavy: Callable[[int], bool],
                 patient: bool = True, max_s: float = 60.0, factor: float = 3.0, window: int = 20,
                 cycle_s: Callable[[], float] = lambda: 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_s <= 0 or factor < 1:
            raise ValueError("need max_s > 0 and factor >= 1")
        self.inner, self.current_round, self.expected, self.online, self.heavy = (
            inner, current_round, expected, online, heavy)
        self.patient, self.max_s, self.factor, self.clock, self.cycle_s = patient, max_s, factor, clock, cycle_s
        self._rounds: deque[float] = deque(maxlen=window)  # this node's recent complete round durations
        self._work: deque[float] = deque(maxlen=window)  # its recent rounds less their waits: its own work
        self._last_wait = 0.0
        self._heavy_waits: deque[float] = deque(maxlen=window)
        self._round = -1  # the round next_s() was last asked about
        self._started: float | None = None
        self._waiting: frozenset[int] = frozenset()
        self._all_online = False
        self._open = False  # a round began and was not settled yet
        self._complete = False  # the current round heard every neighbour it waited for
        self.last_missed: list[int] = []  # the misses of round :attr:`round`, once settled
        self.misses = 0  # neighbour-rounds missed so far (a neighbour waited for, not heard)
        self.last_s = 0.0  # the last deadline handed out

    def patience_s(self, round: int) -> float:  # noqa: A002
        """How long a round may wait for neighbours that are all online."""
        s = max(self.max_s, self.factor * max(self._rounds, default=0.0), self.factor * max(self._work, default=0.0),
                self.factor * self.cycle_s())
        if self.heavy(round) and self._heavy_waits:
            s = max(s, self.factor * max(self._heavy_waits))
        return s

    def begin(self, round: int) -> None:  # noqa: A002
        """Round ``round`` starts its collection: note who it waits for (and time the last round)."""
        now = self.clock()
        if self._started is not None and round == self._round + 1:
            # the node's own work (finishing the last round, computing this one) under its
            # process's load, from round 0 on: the neighbours' rounds take as long
            self._work.append(max(0.0, now - self._started - self._last_wait))
            if self._complete:
                # only complete rounds: a round that waited out a hung neighbour must not raise the
                # patience for the next one (it would grow 3x a round until the neighbour is stale)
                self._rounds.append(now - self._started)
        self._round, self._started, self._complete, self._last_wait = round, now, False, 0.0
        self._waiting = frozenset(self.expected())
        self._all_online = self._waiting <= self.online()
        self._open = True

    def next_s(self) -> float:
        """The deadline of the round the node is about to collect."""
        self.begin(self.current_round())
        inner = self.inner.next_s()
        patient = self.patient and self._all_online
        self.last_s = max(inner, self.patience_s(self._round)) if patient else inner
        return self.last_s

    def observe(self, wait_s: float, *, complete: bool) -> None:
        """Learn from a round's wait (the inner policy from complete ones; heavy rounds apart)."""
        self._complete, self._last_wait = complete, wait_s
        if complete and self.heavy(self._round):
            self._heavy_waits.append(wait_s)
        else:
            self.inner.observe(wait_s, complete=complete)

    def note_wait(self, wait_s: float) -> None:
        """A round's wait that is not learned from (the start-up's): only its own work is timed."""
        self._last_wait = wait_s

    @property
    def round(self) -> int:
        """The round the last deadline was handed out for (-1: none yet)."""
        return self._round

    def settle(self, heard: set[int]) -> list[int]:
        """The neighbours waited for in round :attr:`round` but not ``heard``: its deadline misses,
        counted once (asking again returns the same list)."""
        if not self._open:
            return list(self.last_missed)
        self._open = False
        self.last_missed = sorted(self._waiting - heard)
        self.misses += len(self.last_missed)
        return list(self.last_missed)
