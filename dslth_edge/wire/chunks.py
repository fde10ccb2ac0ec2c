"""Splitting frames into bounded messages and putting them back together.

A frame that fits in ``max_message_bytes`` (default 256 KiB, well under EMQX's 1 MB
default packet limit) travels as is. A larger one becomes ``count`` chunks, each a
20-byte header plus an equal share of the frame (the last one shorter)::

    0  4  magic "DSLC"      8  2  chunk count (>= 1)    16  4  total frame length
    4  1  version (1)      10  2  reserved (0)          20  ..  data
    5  1  reserved (0)     12  4  frame id
    6  2  chunk index

Chunk ``i`` carries frame bytes ``[i*S, min((i+1)*S, total))`` with
``S = ceil(total / count)``, so every chunk's length is checkable on its own. Chunks
carry no checksum of their own: the reassembled frame's CRC or HMAC covers them.
The :class:`Reassembler` bounds memory (pending frames and bytes) and expires
incomplete sets after a timeout measured on an injectable clock.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from dslth_edge.wire.errors import ChunkError, LengthError, MagicError, VersionError
from dslth_edge.wire.frame import MAGIC as FRAME_MAGIC

__all__ = ["CHUNK_MAGIC", "DEFAULT_MAX_MESSAGE_BYTES", "Chunker", "Reassembler"]

CHUNK_MAGIC = b"DSLC"
CHUNK_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
_HEAD = struct.Struct("<4sBBHHHII")
CHUNK_HEADER_BYTES = _HEAD.size  # 20
_DONE_MEMORY = 256  # completed (source, frame id) pairs remembered to drop redeliveries


class Chunker:
    """Splits frames into messages of at most ``max_message_bytes``."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes <= CHUNK_HEADER_BYTES:
            raise ValueError(f"max_message_bytes must exceed the {CHUNK_HEADER_BYTES}-byte chunk header")
        self.max_message_bytes = max_message_bytes
        # A random start keeps ids from a restarted sender apart from its old ones.
        self._next_id = secrets.randbits(32)

    def split(self, frame: bytes) -> list[bytes]:
        """``[frame]`` if it fits, else its chunks in index order."""
        total = len(frame)
        if total <= self.max_message_bytes:
            return [bytes(frame)]
        per_chunk = self.max_message_bytes - CHUNK_HEADER_BYTES
        count = -(-total // per_chunk)
        if count > 0xFFFF or total >= 1 << 32:
            raise LengthError(f"frame of {total} bytes needs more than 65535 chunks")
        share = -(-total // count)
        frame_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        heads = [_HEAD.pack(CHUNK_MAGIC, CHUNK_VERSION, 0, i, count, 0, frame_id, total) for i in range(count)]
        return [head + frame[i * share : (i + 1) * share] for i, head in enumerate(heads)]


@dataclass
class _Pending:
    total: int
    count: int
    created: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects chunks per ``(source, frame id)`` and returns whole frames.

    ``source`` is whatever identifies the sender on the transport (topic, node id):
    ids are only unique per sender. Incomplete sets older than ``timeout_s`` expire;
    at most ``max_pending`` sets and ``max_pending_bytes`` bytes are held (oldest
    dropped first). Counters: ``completed``, ``expired``, ``evicted``. Not
    thread-safe: one per receiving thread, or guard it with a lock.
    """

    def __init__(
        self,
        max_frame_bytes: int,
        *,
        timeout_s: float = 30.0,
        max_pending: int = 64,
        max_pending_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_frame_bytes < 1 or max_pending < 1 or timeout_s <= 0:
            raise ValueError("max_frame_bytes, max_pending and timeout_s must be positive")
        self.max_frame_bytes = max_frame_bytes
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_pending_bytes = max(max_frame_bytes, max_pending_bytes or 4 * max_frame_bytes)
        self.clock = clock
        self._pending: OrderedDict[tuple[Hashable, int], _Pending] = OrderedDict()
        # Recently completed sets, so a late redelivered chunk does not open a new set.
        self._done: OrderedDict[tuple[Hashable, int], None] = OrderedDict()
        self._bytes = 0
        self.completed = self.expired = self.evicted = 0

    @property
    def pending(self) -> int:
        """Incomplete chunk sets held now."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def _drop(self, key: tuple[Hashable, int]) -> None:
        self._bytes -= self._pending.pop(key).size

    def expire(self) -> int:
        """Drop sets older than the timeout; return how many."""
        now = self.clock()
        stale = [k for k, p in self._pending.items() if now - p.created > self.timeout_s]
        for key in stale:
            self._drop(key)
        self.expired += len(stale)
        return len(stale)

    def feed(self, source: Hashable, message: bytes | bytearray | memoryview) -> bytes | None:
        """Take one message; return a complete frame when one is ready, else None.

        An unchunked frame is returned at once. Malformed chunks raise
        :class:`ChunkError` (or Magic/Version/LengthError) and leave the state intact.
        """
        msg = bytes(message)
        if msg[:4] == FRAME_MAGIC:
            if len(msg) > self.max_frame_bytes:
                raise LengthError(f"frame of {len(msg)} bytes exceeds {self.max_frame_bytes}")
            return msg
        if len(msg) < CHUNK_HEADER_BYTES:
            raise ChunkError(f"message of {len(msg)} bytes is neither a frame nor a chunk")
        magic, version, res1, index, count, res2, frame_id, total = _HEAD.unpack_from(msg, 0)
        if magic != CHUNK_MAGIC:
            raise MagicError(f"bad chunk magic {magic!r}")
        if version != CHUNK_VERSION:
            raise VersionError(f"chunk version {version}, this reassembler speaks {CHUNK_VERSION}")
        if res1 or res2:
            raise ChunkError("reserved chunk header bytes are set")
        if total > self.max_frame_bytes:
            raise LengthError(f"chunked frame of {total} bytes exceeds {self.max_frame_bytes}")
        if count < 1 or index >= count or total < count:
            raise ChunkError(f"chunk {index} of {count} for a {total}-byte frame")
        share = -(-total // count)
        if share * (count - 1) >= total:
            raise ChunkError(f"{count} chunks do not partition {total} bytes")
        data = msg[CHUNK_HEADER_BYTES:]
        expected = min(share, total - index * share)
        if len(data) != expected:
            raise ChunkError(f"chunk {index} carries {len(data)} bytes, expected {expected}")
        self.expire()
        key = (source, frame_id)
        if key in self._done:
            return None  # a redelivery of a frame already returned
        entry = self._pending.get(key)
        if entry is None:
            entry = _Pending(total, count, self.clock())
            while len(self._pending) >= self.max_pending:
                self._drop(next(iter(self._pending)))
                self.evicted += 1
            self._pending[key] = entry
        elif (entry.total, entry.count) != (total, count):
            raise ChunkError(f"chunk disagrees with its siblings on frame {frame_id}")
        if index in entry.parts:
            return None  # a redelivery (MQTT QoS 1 may repeat a message)
        while self._bytes + len(data) > self.max_pending_bytes:
            oldest = next(k for k in self._pending if k != key)
            self._drop(oldest)
            self.evicted += 1
        entry.parts[index] = data
        entry.size += len(data)
        self._bytes += len(data)
        if len(entry.parts) < count:
            return None
        self._drop(key)
        self.completed += 1
        self._done[key] = None
        while len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        return b"".join(entry.parts[i] for i in range(count))
