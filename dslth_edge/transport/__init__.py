"""Transports that carry mask frames between nodes: in-memory (simulator) and MQTT."""

from __future__ import annotations

from .base import Envelope, Transport
from .memory import MemoryHub, MemoryTransport

__all__ = ["Envelope", "Transport", "MemoryHub", "MemoryTransport"]
