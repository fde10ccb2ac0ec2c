"""Dense baselines (dpsgd, dpsgd-ft): fp32 weights on the wire, checked and counted.

The dense path trains the same architecture with ordinary weights
(``build_model(..., dense=True)``) and averages them with the neighbours each round
(decentralized SGD, adapt-then-combine):

    x_i ← x_i − η ∇f_i(x_i)                 local SGD step (momentum, weight decay)
    x_i ← (x_i + Σ_{j ∈ N(i), heard} x_j) / (1 + |heard|)   uniform neighbour averaging

Payload (little-endian), 32 bits per parameter plus a 28-byte envelope::

    0  4  magic "DSDW"        12  8  weights fingerprint, first 8 bytes
    4  1  version (1)         20  4  element count n (float32)
    5  1  reserved (0)        24 4n  the parameters, float32 LE, model order
    6  2  sender (u16)        end  4  CRC-32C of everything before
    8  4  round (u32)

A payload is length-checked against the expected element count before the CRC runs
and before any array is built; every failure is a :class:`~dslth_edge.errors.FrameError`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import google_crc32c
import numpy as np
import torch

from dslth_edge.errors import FrameError
from dslth_edge.fleet.exchange import ReceivedMasks
from dslth_edge.transport.base import Transport

__all__ = [
    "DENSE_MAGIC",
    "DENSE_VERSION",
    "DENSE_OVERHEAD",
    "encode_dense",
    "decode_dense",
    "DenseExchange",
]

DENSE_MAGIC = b"DSDW"
DENSE_VERSION = 1
_HEADER = struct.Struct("<4sBBHI8sI")  # magic, version, reserved, sender, round, fp prefix, n
DENSE_OVERHEAD = _HEADER.size + 4  # header + CRC-32C trailer = 28 bytes


def encode_dense(vector: torch.Tensor, *, sender: int, round: int, fingerprint: bytes) -> bytes:  # noqa: A002
    """One dense payload: header, float32 LE parameters, CRC-32C trailer."""
    data = vector.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()
    body = _HEADER.pack(DENSE_MAGIC, DENSE_VERSION, 0, sender, round, fingerprint[:8], vector.numel()) + data
    return body + google_crc32c.value(body).to_bytes(4, "little")


def decode_dense(payload: bytes, *, expected_len: int, fingerprint: bytes) -> tuple[int, int, torch.Tensor]:
    """(sender, round, vector) of a dense payload; raises FrameError on any defect."""
    if len(payload) != DENSE_OVERHEAD + 4 * expected_len:
        raise FrameError(f"dense payload of {len(payload)} bytes, expected {DENSE_OVERHEAD + 4 * expected_len}")
    body, crc = payload[:-4], payload[-4:]
    magic, version, _, sender, rnd, fp, n = _HEADER.unpack_from(body)
    if magic != DENSE_MAGIC:
        raise FrameError(f"dense payload has magic {magic!r}")
    if version != DENSE_VERSION:
        raise FrameError(f"dense payload version {version}, this node reads {DENSE_VERSION}")
    if google_crc32c.value(bytes(body)) != int.from_bytes(crc, "little"):
        raise FrameError("dense payload CRC-32C mismatch")
    if fp != fingerprint[:8]:
        raise FrameError("dense payload from a model with another architecture/initialisation")
    if n != expected_len:
        raise FrameError(f"dense payload holds {n} parameters, expected {expected_len}")
    vec = torch.from_numpy(np.frombuffer(body, dtype="<f4", offset=_HEADER.size).astype(np.float32))
    return sender, rnd, vec


class DenseExchange:
    """The dense counterpart of :class:`~dslth_edge.fleet.exchange.Exchange` (same calls).

    ``encode`` takes ``[vector]``; ``collect`` returns a :class:`ReceivedMasks` whose
    frames map each sender to ``[vector]``.
    """

    def __init__(self, *, node_id: int, num_params: int, fingerprint: bytes) -> None:
        self.node_id = node_id
        self.num_params = num_params
        self.fingerprint = fingerprint
        self._future: dict[int, dict[int, list[torch.Tensor]]] = {}
        self.last_kind = "dense"

    def encode(self, state: Sequence[torch.Tensor], round: int) -> bytes:  # noqa: A002
        return encode_dense(state[0], sender=self.node_id, round=round, fingerprint=self.fingerprint)

    def reconnected(self) -> None:
        """Dense payloads are self-contained: nothing to reset."""

    def collect(self, transport: Transport, round: int, expected: set[int], deadline: float) -> ReceivedMasks:  # noqa: A002
        """Neighbours' weights for ``round`` until all of ``expected`` arrived or ``deadline`` passed."""
        out = ReceivedMasks()
        for sender, vec in self._future.pop(round, {}).items():
            if sender in expected:
                out.frames[sender] = vec
        for r in [r for r in self._future if r < round]:
            del self._future[r]
        synchronous = getattr(transport, "synchronous", False)
        while not expected <= out.frames.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            envelopes = transport.poll(min(remaining, 0.5))
            for env in envelopes:
                if env.kind != "mask":
                    continue
                out.bytes += len(env.payload)
                try:
                    sender, rnd, vec = decode_dense(env.payload, expected_len=self.num_params, fingerprint=self.fingerprint)
                except FrameError:
                    out.rejected += 1
                    continue
                if sender != env.sender:
                    out.rejected += 1
                elif rnd == round and sender in expected and sender not in out.frames:
                    out.frames[sender] = [vec]
                elif round < rnd <= round + 4:
                    self._future.setdefault(rnd, {})[sender] = [vec]
                else:
                    out.duplicates += 1
            if synchronous and not envelopes:
                break
        return out
