"""Dense baselines (dpsgd, dpsgd-ft): fp32 weights on the wire, checked and counted.

The dense path trains the same architecture with ordinary weights
(``build_model(..., dense=True)``) and averages them with the neighbours each round
(decentralized SGD, adapt-then-combine):

    x_i ← x_i − η ∇f_i(x_i)                 local SGD step (momentum, weight decay)
    x_i ← W_ii' x_i + Σ_{j ∈ N(i), heard} W_ij x_j    Metropolis-Hastings averaging

with W_ij = 1/(1 + max(d_i, d_j)) and W_ii' = 1 − Σ_{j heard} W_ij (doubly stochastic
on any graph); ``mixing="uniform"`` (AlgorithmConfig) averages uniformly over self and
the neighbours heard instead. Over MQTT the payload is sealed like a mask frame
(:mod:`dslth_edge.transport.identity`), so dense weights are authenticated too.

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
from collections.abc import Mapping, Sequence
from typing import Any

import google_crc32c
import numpy as np
import torch

from dslth_edge.errors import CheckpointError, FrameError
from dslth_edge.fleet.exchange import Decoded, PayloadExchange
from dslth_edge.transport.identity import AuthError, Identity

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


class DenseExchange(PayloadExchange):
    """The dense counterpart of :class:`~dslth_edge.fleet.exchange.Exchange` (same calls, same loop).

    ``encode`` takes ``[vector]``; ``collect`` returns a :class:`~dslth_edge.fleet.exchange.ReceivedMasks` whose
    frames map each sender to ``[vector]``. Collection is
    :meth:`PayloadExchange.collect <dslth_edge.fleet.exchange.PayloadExchange.collect>`:
    stale neighbours are heard again, the future window is ``window``, and payloads are
    sealed (authenticated) when the node has an identity.
    """

    def __init__(self, *, node_id: int, num_params: int, fingerprint: bytes, window: int = 4,
                 identity: Identity | None = None, max_round: int | None = None) -> None:
        super().__init__(node_id=node_id, window=window, identity=identity, max_round=max_round)
        self.num_params = num_params
        self.fingerprint = fingerprint
        self.last_kind = "dense"

    def encode(self, state: Sequence[torch.Tensor], round: int) -> bytes:  # noqa: A002
        """This round's dense payload (sealed if configured)."""
        return self._seal("mask", round, encode_dense(state[0], sender=self.node_id, round=round,
                                                      fingerprint=self.fingerprint))

    def max_payload_bytes(self) -> int:
        return 4 * self.num_params + 4096  # the parameters, the envelope and room to spare

    def reconnected(self) -> None:
        """Dense payloads are self-contained: nothing to reset."""

    def state(self) -> dict[str, Any]:
        """:meth:`PayloadExchange.state <dslth_edge.fleet.exchange.PayloadExchange.state>` and
        what identifies the payloads (checked on load)."""
        return {**super().state(), "num_params": self.num_params, "fingerprint": self.fingerprint.hex()}

    def _parse_state(self, state: Mapping[str, Any], source: str) -> dict[str, Any]:
        values = super()._parse_state(state, source)
        if (state["num_params"], state["fingerprint"]) != (self.num_params, self.fingerprint.hex()):
            raise CheckpointError(f"{source} holds the exchange state of another model")
        return values

    def _decode(self, payload: bytes, sender: int) -> Decoded:
        who, rnd, vec = decode_dense(payload, expected_len=self.num_params, fingerprint=self.fingerprint)
        if who != sender:
            raise AuthError(f"dense payload on node {sender}'s topic names sender {who}")
        return rnd, [vec], _nothing


def _nothing() -> None:
    """Dense payloads are used once: nothing to store."""
