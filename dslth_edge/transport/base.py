"""The Transport protocol: what the node's round loop needs from a network."""

from __future__ import annotations

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

    def publish(self, payload: bytes, *, kind: str = "mask") -> int:
        """Send ``payload`` to this node's listeners; returns the bytes put on the wire."""
        ...

    def poll(self, timeout: float) -> list[Envelope]:
        """Payloads received since the last call, waiting up to ``timeout`` s for the first."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
