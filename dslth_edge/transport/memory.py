"""In-memory transport: the simulator's network, lossless and instantaneous."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable

from dslth_edge.transport.base import Envelope

__all__ = ["MemoryHub", "MemoryTransport"]


class MemoryHub:
    """Delivers each published payload to the publisher's subscribers, in order."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[int]] = defaultdict(set)
        self._inboxes: dict[int, deque[Envelope]] = defaultdict(deque)
        self.bytes_delivered = 0

    def connect(self, node_id: int, listens_to: Iterable[int]) -> "MemoryTransport":
        """A transport for ``node_id`` that receives what the nodes in ``listens_to`` publish."""
        for j in listens_to:
            self._subscribers[j].add(node_id)
        return MemoryTransport(self, node_id)

    def _publish(self, sender: int, kind: str, payload: bytes) -> None:
        for j in sorted(self._subscribers[sender]):
            self._inboxes[j].append(Envelope(sender, kind, payload))
            self.bytes_delivered += len(payload)

    def _drain(self, node_id: int) -> list[Envelope]:
        box = self._inboxes[node_id]
        out = list(box)
        box.clear()
        return out


class MemoryTransport:
    """One node's end of a :class:`MemoryHub`."""

    #: everything of a round is published before anyone polls: Exchange.collect stops
    #: at the first empty poll instead of waiting for the deadline
    synchronous = True

    def __init__(self, hub: MemoryHub, node_id: int) -> None:
        self._hub = hub
        self.node_id = node_id

    def publish(self, payload: bytes, *, kind: str = "mask") -> int:
        self._hub._publish(self.node_id, kind, payload)
        return len(payload)

    def poll(self, timeout: float) -> list[Envelope]:
        # lock-step simulation: everything of this round was published before anyone polls
        return self._hub._drain(self.node_id)

    def unavailable(self) -> set[int]:
        """Nobody: an in-process neighbour is never offline."""
        return set()

    def take_dropped(self) -> int:
        """Nothing: in-process payloads are never refused before the exchange sees them."""
        return 0

    def close(self) -> None:
        pass
