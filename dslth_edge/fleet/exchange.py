"""A node's mask traffic: frames out (key/delta policy), frames in (verified, decoded, deduplicated).

Received payloads go through :mod:`dslth_edge.wire` before anything touches them: a
frame that fails any check is counted as rejected and dropped. Frames are accepted
once per (sender, round); frames from the future (within ``window`` rounds) wait in a
buffer; late frames of finished rounds are ignored. A delta on a base this node lacks
becomes a key-frame request to its sender.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dslth_edge.errors import FrameError
from dslth_edge.transport.base import Transport
from dslth_edge.wire import MaskEncoderState, MissingBaseError, PeerMaskStore

__all__ = ["Exchange", "ReceivedMasks", "key_request", "parse_key_request"]


@dataclass
class ReceivedMasks:
    """What one round's collection produced."""

    frames: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # sender -> masks
    bytes: int = 0  # every payload byte received, accepted or not
    rejected: int = 0  # frames that failed a check (malformed, forged, wrong fleet/weights …)
    duplicates: int = 0  # redeliveries, replays and frames older than one already taken, ignored
    key_requests_sent: int = 0
    # sender -> masks of a frame out of step with this round (late, or far ahead after a
    # restart) but newer than any taken from that sender: its latest mask, still usable
    latest: dict[int, list[torch.Tensor]] = field(default_factory=dict)


def key_request(target: int, round: int) -> bytes:  # noqa: A002
    """A control payload asking ``target`` for a key frame."""
    return json.dumps({"type": "key-request", "target": target, "round": round}).encode()


def parse_key_request(payload: bytes) -> int | None:
    """The target of a key request, or None for anything else (bounded, never raises)."""
    if len(payload) > 256:
        return None
    try:
        msg = json.loads(payload)
        if isinstance(msg, dict) and msg.get("type") == "key-request" and isinstance(msg.get("target"), int):
            return int(msg["target"])
    except (ValueError, UnicodeDecodeError):
        return None
    return None


class Exchange:
    """Encodes this node's masks and collects its neighbours' for a round."""

    def __init__(
        self,
        *,
        node_id: int,
        shapes: Sequence[tuple[int, ...]],
        fingerprint: bytes,
        fleet: str,
        key: bytes | None = None,
        key_interval: int = 10,
        window: int = 4,
    ) -> None:
        self.node_id = node_id
        self.shapes = [tuple(s) for s in shapes]
        self.fingerprint = fingerprint
        self.fleet = fleet
        self.key = key
        self.window = window
        # one broadcast frame per round; reliable delivery is assumed and losses come
        # back as key requests
        self.encoder = MaskEncoderState(key_interval=key_interval, optimistic=True)
        self.store = PeerMaskStore(rounds_per_sender=window + 2)
        self._future: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(dict)
        self.last_codecs: tuple[str, ...] = ()
        self.last_kind = "key"
        # the newest round taken from each sender: a frame at or below it is a duplicate
        self.newest: dict[int, int] = {}
        # frames of these senders are taken even when not waited for (None: expected only),
        # so a neighbour left out as stale is heard again when it returns
        self.neighbours: set[int] | None = None

    def encode(self, masks: Sequence[torch.Tensor], round: int) -> bytes:  # noqa: A002
        """This round's frame: a key frame or a delta against the last one sent."""
        arrays = [m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=bool) for m in masks]
        enc = self.encoder.encode(arrays, round=round, shapes=self.shapes, sender=self.node_id,
                                  fingerprint=self.fingerprint, fleet=self.fleet, key=self.key)
        self.last_codecs = tuple(s.codec for s in enc.layers)
        self.last_kind = enc.kind
        return enc.data

    def reconnected(self) -> None:
        """After a reconnect or a resume: the next frame is a key frame."""
        self.encoder.reconnect()

    def out_of_step(self, round: int, lag: int = 2) -> set[int]:  # noqa: A002
        """Senders not worth waiting for in ``round``: already past it without a frame of it
        buffered (a restart put us behind them), or ``lag`` or more rounds behind it."""
        return {s for s, r in self.newest.items()
                if (r > round and s not in self._future.get(round, {})) or r < round - lag}

    def collect(self, transport: Transport, round: int, expected: set[int], deadline: float) -> ReceivedMasks:  # noqa: A002
        """Neighbours' masks for ``round`` until all of ``expected`` arrived or ``deadline`` (monotonic) passed."""
        out = ReceivedMasks()
        accept = expected | (self.neighbours or set())
        for sender, masks in self._future.pop(round, {}).items():
            if sender in accept:
                out.frames[sender] = masks
        for r in [r for r in self._future if r < round]:
            del self._future[r]
        synchronous = getattr(transport, "synchronous", False)
        # take what already arrived even when nobody is waited for: that is how a neighbour
        # out of step (or one we run ahead of, after our restart) is heard again
        for env in transport.poll(0):
            self._accept(transport, env.sender, env.kind, env.payload, round, accept, out)
        while not self._all_in(expected, round, out):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            envelopes = transport.poll(min(remaining, 0.5))
            for env in envelopes:
                self._accept(transport, env.sender, env.kind, env.payload, round, accept, out)
            if synchronous and not envelopes:
                break
        return out

    def _all_in(self, expected: set[int], round: int, out: ReceivedMasks) -> bool:  # noqa: A002
        """True once every expected sender is in, or has shown it is past this round."""
        return all(s in out.frames or self.newest.get(s, -1) > round for s in expected)

    def _accept(self, transport: Transport, sender: int, kind: str, payload: bytes, round: int,  # noqa: A002
                expected: set[int], out: ReceivedMasks) -> None:
        if kind == "ctl":
            if parse_key_request(payload) == self.node_id:
                self.encoder.request_key(None)
            return
        out.bytes += len(payload)
        try:
            frame = self.store.decode(payload, shapes=self.shapes, fingerprint=self.fingerprint, fleet=self.fleet, key=self.key)
        except MissingBaseError as exc:
            transport.publish(key_request(sender, round), kind="ctl")
            out.key_requests_sent += 1
            if exc.sender == sender and exc.base_round >= round:  # a verified frame: it is past this round
                self.newest[sender] = max(self.newest.get(sender, -1), exc.base_round)
            return
        except FrameError:
            out.rejected += 1
            return
        if frame.sender != sender:  # a valid frame replayed on another node's topic
            out.rejected += 1
            return
        masks = [torch.from_numpy(np.array(m, dtype=bool)) for m in frame.masks]
        newest = self.newest.get(sender, -1)
        if frame.round == round and sender in expected and sender not in out.frames:
            out.frames[sender] = masks
        elif round < frame.round <= round + self.window and sender not in self._future[frame.round]:
            self._future[frame.round][sender] = masks
        elif frame.round > newest and frame.round != round:
            out.latest[sender] = masks  # out of step but new: late, or from far ahead
        else:
            out.duplicates += 1
            return
        self.newest[sender] = max(newest, frame.round)
