"""Shared test fixtures for the wire tests: constants, mask strategies, frame surgery."""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import google_crc32c
import numpy as np
from hypothesis import strategies as st

FP = hashlib.sha256(b"test weights").digest()
OTHER_FP = hashlib.sha256(b"other weights").digest()
FLEET = "test-fleet"
KEY = b"fleet key 0123456789"

HEADER = 56
ENTRY = 12


def reseal(frame: bytes | bytearray, key: bytes | None = None) -> bytes:
    """Recompute the trailer after editing a frame, so the edit reaches the parsers."""
    if key:
        body = bytes(frame[:-32])
        return body + hmac.new(key, body, hashlib.sha256).digest()
    body = bytes(frame[:-4])
    return body + google_crc32c.value(body).to_bytes(4, "little")


def table_entry(frame: bytes, i: int) -> tuple[int, int, int, int, int]:
    """(index, codec id, reserved, elements, payload length) of layer ``i``."""
    return struct.unpack_from("<HBBII", frame, HEADER + ENTRY * i)


def payload_span(frame: bytes, i: int) -> tuple[int, int]:
    """Start and end offsets of layer ``i``'s payload."""
    n_layers = struct.unpack_from("<H", frame, 52)[0]
    pos = HEADER + ENTRY * n_layers
    for j in range(i):
        pos += table_entry(frame, j)[4]
    return pos, pos + table_entry(frame, i)[4]


def replace_payload(frame: bytes, i: int, payload: bytes, codec_id: int | None = None, key: bytes | None = None) -> bytes:
    """Swap layer ``i``'s payload (and optionally codec id), fix the table and trailer."""
    start, end = payload_span(frame, i)
    index, codec, pad, elements, _ = table_entry(frame, i)
    entry = struct.pack("<HBBII", index, codec if codec_id is None else codec_id, pad, elements, len(payload))
    off = HEADER + ENTRY * i
    out = bytearray(frame[:off]) + entry + frame[off + ENTRY : start] + payload + frame[end:]
    return reseal(out, key)


@st.composite
def shapes_st(draw: st.DrawFn, max_layers: int = 3, max_elems: int = 600) -> list[tuple[int, ...]]:
    """Small layer shapes: 1-4 dims, dim 0 the channels."""
    n_layers = draw(st.integers(1, max_layers))
    shapes = []
    for _ in range(n_layers):
        dims = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
        while math.prod(dims) > max_elems:
            dims[draw(st.integers(0, len(dims) - 1))] = 1
        shapes.append(tuple(dims))
    return shapes


@st.composite
def mask_st(draw: st.DrawFn, shape: tuple[int, ...]) -> np.ndarray:
    """A mask with structure hypothesis can explore: per-channel densities incl. 0 and 1."""
    seed = draw(st.integers(0, 2**32 - 1))
    style = draw(st.sampled_from(["iid", "channels", "constant", "sparse"]))
    rng = np.random.default_rng(seed)
    c = shape[0]
    if style == "iid":
        p = draw(st.floats(0.0, 1.0))
        m = rng.random(shape) < p
    elif style == "channels":
        probs = rng.choice([0.0, 1.0, 0.05, 0.3, 0.7], size=c)
        m = rng.random(shape) < probs.reshape((c,) + (1,) * (len(shape) - 1))
    elif style == "constant":
        m = np.full(shape, draw(st.booleans()))
    else:
        m = rng.random(shape) < 0.01
    return m


@st.composite
def model_and_masks(draw: st.DrawFn, max_layers: int = 3, max_elems: int = 600) -> tuple[list, list]:
    shapes = draw(shapes_st(max_layers, max_elems))
    return shapes, [draw(mask_st(s)) for s in shapes]


def same(a: list[np.ndarray] | tuple, b: list[np.ndarray] | tuple) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))
