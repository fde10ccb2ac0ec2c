"""Small byte-level helpers shared by the codecs: varints, fixed-width bit fields, words.

Everything here is vectorised with numpy where sizes can be large, and every reader
checks its bounds and raises :class:`CodecError` so no ``IndexError`` escapes.
"""

from __future__ import annotations

import numpy as np

from dslth_edge.wire.errors import CodecError

__all__ = [
    "put_varint",
    "get_varint",
    "pack_uints",
    "unpack_uints",
    "words_to_bytes",
    "bytes_to_words",
]

_MAX_VARINT_BYTES = 5  # a u32 needs at most 5 LEB128 bytes


def put_varint(value: int) -> bytes:
    """Encode ``0 <= value < 2**32`` as unsigned LEB128 (7 bits a byte, low group first)."""
    if not 0 <= value < 1 << 32:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def get_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a minimal LEB128 u32 at ``pos``; return ``(value, new_pos)``.

    Non-minimal encodings (a trailing zero group) are refused so every value has exactly
    one encoding: the frame is canonical and a fuzzer cannot find aliases.
    """
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise CodecError("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i > 0 and byte == 0:
                raise CodecError("non-minimal varint")
            if value >= 1 << 32:
                raise CodecError("varint exceeds 32 bits")
            return value, pos + i + 1
    raise CodecError("varint longer than 5 bytes")


def pack_uints(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned ints (each < 2**width, width <= 32) MSB-first into ceil(n*width/8) bytes."""
    if len(values) == 0 or width == 0:
        return b""
    be = np.asarray(values, dtype=">u4").reshape(-1, 1).view(np.uint8)  # (n, 4) big-endian
    bits = np.unpackbits(be, axis=1)[:, 32 - width :]
    return np.packbits(bits.ravel()).tobytes()


def unpack_uints(buf: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uints`; ``buf`` must be exactly ceil(count*width/8) bytes, zero-padded."""
    nbits = count * width
    if len(buf) != (nbits + 7) // 8:
        raise CodecError(f"bit field is {len(buf)} bytes, expected {(nbits + 7) // 8}")
    if nbits == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))
    if bits[nbits:].any():
        raise CodecError("nonzero padding bits")
    full = np.zeros((count, 32), dtype=np.uint8)
    full[:, 32 - width :] = bits[:nbits].reshape(count, width)
    return np.packbits(full, axis=1).view(">u4").ravel().astype(np.int64)


def words_to_bytes(words: np.ndarray) -> bytes:
    """Serialise ANS words (u32): all but the last as 4 LE bytes, the last in its minimal LE bytes.

    The last word is the top of the coder's stack and never zero, so trimming its zero
    high bytes is unambiguous and saves 1-3 bytes a layer.
    """
    if len(words) == 0:
        return b""
    head = np.asarray(words[:-1], dtype="<u4").tobytes()
    last = int(words[-1])
    return head + last.to_bytes((last.bit_length() + 7) // 8, "little")


def bytes_to_words(buf: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`words_to_bytes`; refuses a zero top byte (it would not be canonical)."""
    n = len(buf)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    tail = (n - 1) % 4 + 1  # bytes of the last word: 1..4
    if buf[n - 1] == 0:
        raise CodecError("ANS stream ends in a zero byte")
    words = np.empty((n - tail) // 4 + 1, dtype=np.uint32)
    words[:-1] = np.frombuffer(buf, dtype="<u4", count=(n - tail) // 4)
    words[-1] = int.from_bytes(bytes(buf[n - tail :]), "little")
    return words
