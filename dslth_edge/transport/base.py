"""The Transport protocol: what the node's round loop needs from a network."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Envelope", "Transport"]


@dataclass(frozen=True)
class Envelope:
    """A payload as received, with the sender the network vouches for (e.g. its topic)."""

    sender: int
    kind: str  # "mask" (a wire frame) or "ctl" (a control message, e.g. key-frame request)
    payload: bytes


@runtime_checkable
class Transport(Protocol):
    """Carries opaque byte payloads from a node to the nodes that listen to it."""

    node_id: int
    #: True when everything of a round is published before anyone polls (in-process,
    #: lock-step): a collection stops at the first empty poll instead of waiting for a deadline
    synchronous: bool

    def publish(self, payload: bytes, *, kind: str = "mask") -> int:
        """Send ``payload`` to this node's listeners; returns the bytes put on the wire."""
        ...

    def poll(self, timeout: float) -> list[Envelope]:
        """Payloads received since the last call, waiting up to ``timeout`` s for the first."""
        ...

    def unavailable(self) -> Iterable[int]:
        """Neighbours known to be offline now (e.g. their last will): not waited for."""
        ...

    def take_dropped(self) -> int:
        """Inputs refused (hostile or malformed) since the last call, for the round's ``rejected`` count."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
