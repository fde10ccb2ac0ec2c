"""An independent decoder written from docs/wire-format.md alone (no dslth_edge imports).

It exists to prove the document is complete: tests decode the golden hex dump and
random frames with it and compare with the package's decoder. It is deliberately
plain (Python ints, loops) like a C port would be, and only fit for small frames.
Roaring and zstd payloads use their reference libraries, as a C port would.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import google_crc32c
import pyroaring
import zstandard

ONE = 1 << 24


class SpecError(Exception):
    """The frame violates the document."""


def _bits_from_packed(data: bytes, n: int) -> list[int]:
    if len(data) != (n + 7) // 8:
        raise SpecError("packed length")
    bits = [(data[i // 8] >> (7 - i % 8)) & 1 for i in range(len(data) * 8)]
    if any(bits[n:]):
        raise SpecError("padding")
    return bits[:n]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(5):
        if pos + i >= len(buf):
            raise SpecError("varint truncated")
        b = buf[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i and b == 0:
                raise SpecError("varint not minimal")
            if value >= 1 << 32:
                raise SpecError("varint range")
            return value, pos + i + 1
    raise SpecError("varint too long")


def model(ones: int, n: int) -> int:
    return min(max((ones * ONE + n // 2) // n, 1), ONE - 1)


def byte_table(k: int) -> list[int]:
    """Section 3.1: frequencies of the 256 byte values under bit model k."""
    f = [ONE - k, k]
    for _ in range(3):
        g = [max(1, (a * b) >> 24) for a in f for b in f]
        g[g.index(max(g))] += ONE - sum(g)
        f = g
    return f


def _letters(count: int, k: int) -> list[tuple[list[int], int]]:
    """Section 3.2: a segment is count // 8 byte letters, then count % 8 bit letters."""
    return [(byte_table(k), 8)] * (count // 8) + [([ONE - k, k], 1)] * (count % 8)


def ans_decode(section: bytes, segments: list[tuple[int, int]]) -> list[int]:
    """Section 3.2 verbatim: bytes to words, init, decode, finish."""
    b = len(section)
    if b == 0:
        w: list[int] = []
    else:
        r = (b - 1) % 4 + 1
        m = (b - r) // 4 + 1
        w = [int.from_bytes(section[4 * i : 4 * i + 4], "little") for i in range(m - 1)]
        w.append(int.from_bytes(section[b - r :], "little"))
        if section[-1] == 0:
            raise SpecError("zero last byte")
    if not w:
        state, j = 0, 0
    else:
        j = len(w) - 1
        state = w[j]
        while j > 0 and state < 1 << 32:
            j -= 1
            state = (state << 32) | w[j]
    out = []
    for count, k in segments:
        for freqs, width in _letters(count, k):
            q = state & (ONE - 1)
            c, v = 0, 0
            while q >= c + freqs[v]:
                c += freqs[v]
                v += 1
            state = (state >> 24) * freqs[v] + (q - c)
            if state < 1 << 32 and j > 0:
                j -= 1
                state = (state << 32) | w[j]
            out += [(v >> (width - 1 - i)) & 1 for i in range(width)]
    if state != 0 or j != 0:
        raise SpecError("ANS stream not consumed exactly")
    return out


def decode_layer(codec: int, p: bytes, shape: tuple[int, ...]) -> list[int]:
    n = math.prod(shape)
    chans = shape[0]
    inner = n // chans
    if codec == 0:
        return _bits_from_packed(p, n)
    if codec == 1:
        positions = list(pyroaring.BitMap.deserialize(p))
        if positions and max(positions) >= n:
            raise SpecError("roaring range")
        bits = [0] * n
        for i in positions:
            bits[i] = 1
        return bits
    if codec == 2:
        if zstandard.get_frame_parameters(p).content_size != (n + 7) // 8:
            raise SpecError("zstd size")
        raw = zstandard.ZstdDecompressor().decompress(p, max_output_size=(n + 7) // 8, allow_extra_data=False)
        return _bits_from_packed(raw, n)
    if codec == 3:
        ones, pos = _varint(p, 0)
        if ones > n:
            raise SpecError("count")
        if ones in (0, n):
            if pos != len(p):
                raise SpecError("extra bytes")
            return [1 if ones == n else 0] * n
        bits = ans_decode(p[pos:], [(n, model(ones, n))])
        if sum(bits) != ones:
            raise SpecError("count mismatch")
        return bits
    if codec == 4:
        width = inner.bit_length()
        table_len = (chans * width + 7) // 8
        field = _bits_from_packed(p[:table_len], table_len * 8)
        if any(field[chans * width :]):
            raise SpecError("padding")
        counts = [int("".join(map(str, field[c * width : (c + 1) * width])) or "0", 2) for c in range(chans)]
        if any(c > inner for c in counts):
            raise SpecError("count")
        mixed = sorted((model(counts[c], inner), c) for c in range(chans) if 0 < counts[c] < inner)
        segments: list[tuple[int, int]] = []
        for k, _ in mixed:
            if segments and segments[-1][1] == k:
                segments[-1] = (segments[-1][0] + inner, k)
            else:
                segments.append((inner, k))
        coded = ans_decode(p[table_len:], segments)
        rows = {c: [1 if counts[c] == inner else 0] * inner for c in range(chans)}
        for i, (_, c) in enumerate(mixed):
            rows[c] = coded[i * inner : (i + 1) * inner]
            if sum(rows[c]) != counts[c]:
                raise SpecError("channel count mismatch")
        return [b for c in range(chans) for b in rows[c]]
    if codec == 5:
        map_len = (chans + 7) // 8
        kept = _bits_from_packed(p[:map_len], chans)
        n_kept = sum(kept)
        ones, pos = _varint(p, map_len)
        if not n_kept <= ones <= n_kept * inner:
            raise SpecError("count")
        if ones == n_kept * inner:
            if pos != len(p):
                raise SpecError("extra bytes")
            coded = [1] * ones
        else:
            coded = ans_decode(p[pos:], [(n_kept * inner, model(ones, n_kept * inner))])
        if sum(coded) != ones:
            raise SpecError("count mismatch")
        out, i = [], 0
        for c in range(chans):
            if kept[c]:
                row = coded[i * inner : (i + 1) * inner]
                if not any(row):
                    raise SpecError("kept channel empty")
                out += row
                i += 1
            else:
                out += [0] * inner
        return out
    raise SpecError(f"codec {codec}")


def base_digest(layers: list[list[int]]) -> bytes:
    """Section 2: the first 8 bytes of SHA-256 over each layer's packed bits, layers in order."""
    h = hashlib.sha256()
    for bits in layers:
        padded = list(bits) + [0] * (-len(bits) % 8)
        h.update(bytes(int("".join(map(str, padded[i : i + 8])), 2) for i in range(0, len(padded), 8)))
    return h.digest()[:8]


def decode(frame: bytes, *, shapes: list[tuple[int, ...]], fleet: str, fingerprint: bytes, key: bytes | None = None,
           base: list[list[int]] | None = None) -> dict:
    """Decode a frame per the document; returns header fields and flat bit lists per layer
    (for a delta: the masks, XORed onto ``base``, the flat bit lists of the base round)."""
    trailer = 32 if key else 4
    if len(frame) < 56 + trailer:
        raise SpecError("short")
    magic, version, flags, kind, res, fleet_id, sender, rnd, base_round, fp, digest, n_layers, res2 = (
        struct.unpack_from("<4sBBBB8sIII16s8sHH", frame, 0))
    if magic != b"DSLM" or version != 2:
        raise SpecError("magic/version")
    body = frame[:-trailer]
    if key:
        if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), frame[-32:]) or not flags & 1:
            raise SpecError("hmac")
    elif flags & 1 or google_crc32c.value(body) != int.from_bytes(frame[-4:], "little"):
        raise SpecError("crc")
    if flags & 0xFE or res or res2 or kind not in (0, 1):
        raise SpecError("header")
    if kind == 0 and (base_round or digest != bytes(8)):
        raise SpecError("key frame with a base")
    if kind == 1 and (base is None or base_digest(base) != digest):
        raise SpecError("delta base missing or not the one the frame names")
    if fleet_id != hashlib.sha256(fleet.encode()).digest()[:8] or fp != fingerprint[:16]:
        raise SpecError("fleet/fingerprint")
    if n_layers != len(shapes):
        raise SpecError("layers")
    pos = 56 + 12 * n_layers
    layers = []
    for i, shape in enumerate(shapes):
        index, codec, pad, count, length = struct.unpack_from("<HBBII", frame, 56 + 12 * i)
        if index != i or pad or count != math.prod(shape):
            raise SpecError("table")
        layers.append(decode_layer(codec, body[pos : pos + length], shape))
        pos += length
    if pos != len(body):
        raise SpecError("lengths")
    if kind == 1:
        assert base is not None
        layers = [[a ^ b for a, b in zip(d, m)] for d, m in zip(layers, base)]
    return {"sender": sender, "round": rnd, "kind": kind, "base_round": base_round, "layers": layers}
