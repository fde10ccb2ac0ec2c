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
Frame ids are drawn at random per frame. The :class:`Reassembler` bounds memory per
source and in all (pending frames and bytes), so one sender cannot evict another's
sets, and expires incomplete sets after a timeout measured on an injectable clock.
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
_DONE_MEMORY = 64  # completed frame ids remembered per source, to drop redeliveries


class Chunker:
    """Splits frames into messages of at most ``max_message_bytes``."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes <= CHUNK_HEADER_BYTES:
            raise ValueError(f"max_message_bytes must exceed the {CHUNK_HEADER_BYTES}-byte chunk header")
        self.max_message_bytes = max_message_bytes

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
        # A fresh random id per frame: nobody can predict the next set's id and plant a
        # chunk under it ahead of the real sender (a restarted sender's ids differ too).
        frame_id = secrets.randbits(32)
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
    ids are only unique per sender. Reassembly runs before a frame can be
    authenticated, so its state is bounded *per source*: at most
    ``max_pending_per_source`` sets and ``max_bytes_per_source`` bytes of one source
    are held (that source's oldest set dropped first), so a sender flooding its own
    topic only ever evicts its own sets. ``max_pending`` / ``max_pending_bytes`` bound
    the whole; beyond them the oldest set of the source holding the most bytes goes.
    Incomplete sets older than ``timeout_s`` expire. Counters: ``completed``,
    ``expired``, ``evicted``. Not thread-safe: one per receiving thread, or guard it
    with a lock.

    ``whole_magics``: the 4-byte magics of messages that are whole frames, returned at
    once (default: the frame magic; the MQTT transport adds its seal's).
    """

    def __init__(
        self,
        max_frame_bytes: int,
        *,
        timeout_s: float = 30.0,
        max_pending: int = 64,
        max_pending_bytes: int | None = None,
        max_pending_per_source: int = 4,
        max_bytes_per_source: int | None = None,
        whole_magics: tuple[bytes, ...] = (FRAME_MAGIC,),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_frame_bytes < 1 or max_pending < 1 or max_pending_per_source < 1 or timeout_s <= 0:
            raise ValueError("max_frame_bytes, max_pending, max_pending_per_source and timeout_s must be positive")
        if CHUNK_MAGIC in whole_magics or any(len(m) != 4 for m in whole_magics):
            raise ValueError("whole_magics must be 4-byte magics other than the chunk magic")
        self.max_frame_bytes = max_frame_bytes
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_pending_bytes = max(max_frame_bytes, max_pending_bytes or 4 * max_frame_bytes)
        self.max_pending_per_source = max_pending_per_source
        self.max_bytes_per_source = min(self.max_pending_bytes,
                                        max(max_frame_bytes, max_bytes_per_source or 2 * max_frame_bytes))
        self.whole_magics = tuple(whole_magics)
        self.clock = clock
        self._pending: OrderedDict[tuple[Hashable, int], _Pending] = OrderedDict()
        # Recently completed sets per source, so a late redelivered chunk does not open a new
        # set; per source, so one sender's many completed sets cannot push out another's.
        self._done: dict[Hashable, OrderedDict[int, None]] = {}
        self._bytes = 0
        self._source_bytes: dict[Hashable, int] = {}
        self._source_sets: dict[Hashable, int] = {}
        self.completed = self.expired = self.evicted = 0

    @property
    def pending(self) -> int:
        """Incomplete chunk sets held now."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def pending_of(self, source: Hashable) -> tuple[int, int]:
        """``(sets, bytes)`` held now for ``source``."""
        return self._source_sets.get(source, 0), self._source_bytes.get(source, 0)

    def _drop(self, key: tuple[Hashable, int]) -> None:
        size = self._pending.pop(key).size
        source = key[0]
        self._bytes -= size
        self._source_bytes[source] -= size
        self._source_sets[source] -= 1
        if not self._source_sets[source]:
            del self._source_sets[source], self._source_bytes[source]

    def _evict_oldest(self, source: Hashable, keep: tuple[Hashable, int] | None = None) -> bool:
        """Drop ``source``'s oldest set other than ``keep``; False when it has none."""
        for key in self._pending:
            if key[0] == source and key != keep:
                self._drop(key)
                self.evicted += 1
                return True
        return False

    def _heaviest(self) -> Hashable:
        return max(self._source_bytes, key=lambda s: (self._source_bytes[s], self._source_sets[s]))

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
        if msg[:4] in self.whole_magics:
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
        done = self._done.setdefault(source, OrderedDict())
        if frame_id in done:
            return None  # a redelivery of a frame already returned
        entry = self._pending.get(key)
        if entry is None:
            entry = _Pending(total, count, self.clock())
            while self._source_sets.get(source, 0) >= self.max_pending_per_source:
                self._evict_oldest(source)
            while len(self._pending) >= self.max_pending:
                self._evict_oldest(self._heaviest())
            self._pending[key] = entry
            self._source_sets[source] = self._source_sets.get(source, 0) + 1
            self._source_bytes.setdefault(source, 0)
        elif (entry.total, entry.count) != (total, count):
            raise ChunkError(f"chunk disagrees with its siblings on frame {frame_id}")
        if index in entry.parts:
            return None  # a redelivery (MQTT QoS 1 may repeat a message)
        # a set never exceeds max_frame_bytes <= either limit, so evicting others always makes room
        while self._source_bytes[source] + len(data) > self.max_bytes_per_source:
            self._evict_oldest(source, keep=key)
        while self._bytes + len(data) > self.max_pending_bytes:
            heaviest = self._heaviest()
            if not self._evict_oldest(heaviest, keep=key):
                self._evict_oldest(next(s for s in self._source_bytes if s != heaviest), keep=key)
        entry.parts[index] = data
        entry.size += len(data)
        self._bytes += len(data)
        self._source_bytes[source] += len(data)
        if len(entry.parts) < count:
            return None
        self._drop(key)
        self.completed += 1
        done[frame_id] = None
        while len(done) > _DONE_MEMORY:
            done.popitem(last=False)
        return b"".join(entry.parts[i] for i in range(count))
