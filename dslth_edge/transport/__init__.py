"""Transports that carry mask frames between nodes: in-memory (simulator) and MQTT."""

from __future__ import annotations

from dslth_edge.transport.base import Envelope, Transport
from dslth_edge.transport.memory import MemoryHub, MemoryTransport

__all__ = ["Envelope", "Transport", "MemoryHub", "MemoryTransport"]
