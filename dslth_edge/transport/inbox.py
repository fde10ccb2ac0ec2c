"""A node's inbox: what its neighbours sent, waiting for the round loop, fair and byte-bounded.

paho's network thread puts (already size-checked, reassembled) payloads in; the round
loop takes them out. Each sender has its own small queue (a count and a byte limit),
and the whole inbox has a byte budget. When a queue is full its *own* oldest item
goes, and when the budget is spent the oldest item of the sender holding the most
bytes goes: a neighbour flooding its own topics only ever evicts its own messages,
never another's frame, and memory stays within the budget whatever it sends.
Every drop is returned to the caller under its cause, to be counted.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["DROP_OVERSIZED", "DROP_SENDER_FULL", "DROP_BUDGET", "FairInbox", "InboxLimits"]

DROP_OVERSIZED = "oversized message"
DROP_SENDER_FULL = "sender queue full"
DROP_BUDGET = "inbox byte budget"


@dataclass(frozen=True)
class InboxLimits:
    """Bounds of a :class:`FairInbox`: per sender (messages, bytes) and bytes in all."""

    per_sender: int = 256
    sender_bytes: int = 4 << 20
    total_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.per_sender < 1 or self.sender_bytes < 1 or self.total_bytes < 1:
            raise ValueError("inbox limits must be positive")
        if self.sender_bytes > self.total_bytes:
            raise ValueError("a sender's byte limit cannot exceed the inbox's budget")

    @classmethod
    def for_frames(cls, max_frame_bytes: int, senders: int, *, per_sender: int = 256,
                   total_bytes: int | None = None) -> "InboxLimits":
        """Room for a few whole frames of each sender (a frame, its resends and the next
        round's), and a budget of one such share per sender, at most 64 MiB unless given."""
        share = 4 * max_frame_bytes + (64 << 10)
        total = total_bytes if total_bytes is not None else max(share, min(max(1, senders) * share, 64 << 20))
        return cls(per_sender=per_sender, sender_bytes=min(share, total), total_bytes=total)


class FairInbox:
    """Per-sender bounded queues under one byte budget; thread-safe."""

    def __init__(self, limits: InboxLimits) -> None:
        self.limits = limits
        self._queues: dict[int, deque[tuple[int, str, bytes]]] = {}
        self._bytes: dict[int, int] = {}
        self._total = 0
        self._seq = itertools.count()  # arrival order across senders
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)

    @property
    def total_bytes(self) -> int:
        """Payload bytes waiting now."""
        with self._lock:
            return self._total

    def waiting(self, sender: int) -> tuple[int, int]:
        """``(messages, bytes)`` of ``sender`` waiting now."""
        with self._lock:
            return len(self._queues.get(sender, ())), self._bytes.get(sender, 0)

    def _pop_oldest(self, sender: int) -> None:
        _, _, payload = self._queues[sender].popleft()
        self._bytes[sender] -= len(payload)
        self._total -= len(payload)

    def put(self, sender: int, kind: str, payload: bytes) -> list[str]:
        """Queue one payload; return the causes of whatever this dropped (it or older ones)."""
        size = len(payload)
        if size > self.limits.sender_bytes:
            return [DROP_OVERSIZED]
        drops: list[str] = []
        with self._lock:
            queue = self._queues.setdefault(sender, deque())
            self._bytes.setdefault(sender, 0)
            while queue and (len(queue) >= self.limits.per_sender or self._bytes[sender] + size > self.limits.sender_bytes):
                self._pop_oldest(sender)
                drops.append(DROP_SENDER_FULL)
            while self._total + size > self.limits.total_bytes:
                # the heaviest sender pays; this sender's own queue counts too
                heaviest = max((s for s in self._queues if self._queues[s]), key=lambda s: self._bytes[s])
                self._pop_oldest(heaviest)
                drops.append(DROP_BUDGET)
            queue.append((next(self._seq), kind, payload))
            self._bytes[sender] += size
            self._total += size
            self._ready.notify()
        return drops

    def take(self, timeout: float = 0.0) -> list[tuple[int, str, bytes]]:
        """Everything waiting, as ``(sender, kind, payload)`` in arrival order; waits up to
        ``timeout`` s for the first item."""
        with self._lock:
            if self._total == 0 and not any(self._queues.values()) and timeout > 0:
                self._ready.wait(timeout)
            items = sorted((seq, sender, kind, payload) for sender, queue in self._queues.items()
                           for seq, kind, payload in queue)
            for sender in self._queues:
                self._queues[sender].clear()
                self._bytes[sender] = 0
            self._total = 0
        return [(sender, kind, payload) for _, sender, kind, payload in items]
