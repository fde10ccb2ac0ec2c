"""A node's traffic: payloads out (key/delta policy), payloads in (verified, decoded, deduplicated).

One collection loop (:class:`PayloadExchange`) serves every payload kind; a subclass
supplies the decode hook: :class:`Exchange` for mask frames (:mod:`dslth_edge.wire`),
:class:`~dslth_edge.fleet.dense_exchange.DenseExchange` for dense weights.

Verify, then store. A received payload is, in this order: opened (when the node has an
:class:`~dslth_edge.transport.identity.Identity`: fleet, run epoch, sender = topic owner,
signature or tag, and the sender's incarnation = the one the transport verified fresh),
decoded against what is already held (a delta's base digest must match the stored base),
and checked again (the frame's sender is the topic owner, its round is the sealed round
and within the run) — and only then stored as a base for later deltas or taken. A
payload that fails any check is counted as rejected and changes nothing.

A sender that restarts is a new incarnation: once the transport has verified it, what
this exchange held of the old one (newest round, bases, buffered frames, key-request
bookkeeping) is dropped, so the re-done rounds are taken and become the bases of its
later deltas instead of being ignored as duplicates. An incarnation once left is never
taken again.

Frames are accepted once per (sender, round); frames from the future (within
``window`` rounds) wait in a bounded buffer; late frames of finished rounds are
ignored. A delta on a base this node lacks becomes a key-frame request to its sender
(at most one per sender and round). Key requests received, and neighbours coming back
online, force a key frame at most once per ``key_request_gap`` rounds per neighbour,
so a flood cannot make this node send key frames every round.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dslth_edge.errors import CheckpointError, FrameError
from dslth_edge.transport.base import Envelope, Transport
from dslth_edge.transport.identity import AuthError, Identity
from dslth_edge.wire import (
    KEY_INTERVAL,
    DecodedFrame,
    MaskEncoderState,
    MissingBaseError,
    PeerMaskStore,
    decode_frame,
    default_max_frame_bytes,
    pack_masks,
    same_packed,
    unpack_masks,
)

__all__ = ["Exchange", "FrameMemo", "PayloadExchange", "ReceivedMasks", "key_request", "parse_key_request"]

_MAX_CTL_BYTES = 256


@dataclass
class ReceivedMasks:
    """What one round's collection produced."""

    frames: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # sender -> masks
    bytes: int = 0  # every payload byte received, accepted or not
    rejected: int = 0  # payloads that failed a check (malformed, forged, other fleet/epoch/weights, flood …)
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
    if len(payload) > _MAX_CTL_BYTES:
        return None
    try:
        msg = json.loads(payload)
        if isinstance(msg, dict) and msg.get("type") == "key-request":
            target = msg.get("target")
            if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < 1 << 32:
                return target
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return None


#: (round, masks, commit): commit() stores what a later delta needs, called once accepted
Decoded = tuple[int, list[torch.Tensor], Callable[[], None]]


# ---------------------------------------------------------------------- plain state
def _int(value: Any) -> int:
    """An int of a loaded state (TypeError for anything else, bools included)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {type(value).__name__}")
    return value


def _pairs(d: Mapping[int, int]) -> list[list[int]]:
    """A dict of ints as [key, value] pairs, in insertion order."""
    return [[k, v] for k, v in d.items()]


def _int_dict(pairs: Any) -> dict[int, int]:
    return {_int(k): _int(v) for k, v in pairs}


def _tensor_list(values: Any) -> list[torch.Tensor]:
    """Own copies of a loaded state's tensors."""
    out = []
    for v in values:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(v).__name__}")
        out.append(v.detach().clone())
    return out


def _tensors(tree: Any) -> Any:
    """The wire's plain state (numpy arrays) with tensors for arrays, for ``torch.load(weights_only=True)``."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.require(tree, requirements="W"))
    if isinstance(tree, Mapping):
        return {k: _tensors(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_tensors(v) for v in tree]
    return tree


def _arrays(tree: Any) -> Any:
    """The inverse of :func:`_tensors`: numpy arrays for the wire's ``load_state``."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    if isinstance(tree, Mapping):
        return {k: _arrays(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_arrays(v) for v in tree]
    return tree


class PayloadExchange:
    """The collection loop shared by every payload kind; subclasses implement :meth:`_decode`."""

    def __init__(self, *, node_id: int, window: int = 4, identity: Identity | None = None,
                 max_round: int | None = None, key_request_gap: int = 3) -> None:
        self.node_id = node_id
        self.window = window
        #: seals what this node sends and opens what it receives (None: bare payloads, as in
        #: the in-memory simulator)
        self.identity = identity
        #: rounds of the run: a payload claiming a round at or past it is refused (None: no bound)
        self.max_round = max_round
        self.key_request_gap = key_request_gap
        self._future: dict[int, dict[int, list[torch.Tensor]]] = {}
        # the newest round taken from each sender: a frame at or below it is a duplicate
        self.newest: dict[int, int] = {}
        # frames of these senders are taken even when not waited for (None: expected only),
        # so a neighbour left out as stale is heard again when it returns
        self.neighbours: set[int] | None = None
        self._asked: dict[int, int] = {}  # sender -> round we last asked it for a key frame
        self._incarnations: dict[int, int] = {}  # sender -> incarnation whose state we hold
        self._retired: dict[int, set[int]] = {}  # sender -> incarnations it left: refused
        self._honoured: dict[int, int] = {}  # neighbour -> round we last sent a key frame for it
        self.last_kind = "key"

    # ------------------------------------------------------------------ hooks
    def encode(self, state: Sequence[torch.Tensor], round: int) -> bytes:  # noqa: A002
        """This round's payload of the node's ``state`` (what its algorithm publishes), sealed if configured."""
        raise NotImplementedError

    def max_payload_bytes(self) -> int:
        """The largest payload this exchange can send or take, before sealing (the transport's frame bound)."""
        raise NotImplementedError

    def _decode(self, payload: bytes, sender: int) -> Decoded:
        """Decode one payload of ``sender`` without storing anything; raise FrameError on any defect."""
        raise NotImplementedError

    def _force_key(self) -> None:
        """The next frame this node sends is self-contained (nothing to do for dense payloads)."""

    def _forget(self, sender: int) -> None:
        """Drop what is held of ``sender``'s previous incarnation (subclasses add their stores)."""
        self.newest.pop(sender, None)
        self._asked.pop(sender, None)
        for senders in self._future.values():
            senders.pop(sender, None)

    def _check_incarnation(self, transport: Transport, sender: int, incarnation: int) -> bool:
        """Refuse a sealed payload not of ``sender``'s current incarnation (AuthError).

        The transport's table (hellos proven of this run) decides, and a change it verified
        is adopted at once: what was held of the old incarnation is dropped before anything
        is decoded. A transport without one (in-memory) has nothing to prove a change: the
        first incarnation seen stands, and another one is adopted only by a payload that
        passes every check (True: adopt it then, with :meth:`_adopt`)."""
        current = getattr(transport, "peer_incarnation", None)
        if current is not None:
            live = current(sender)
            if live != incarnation:
                raise AuthError(f"payload of node {sender}'s incarnation {incarnation:016x}, not its current one "
                                f"({'none verified yet' if live is None else f'{live:016x}'}): "
                                "another run, or before a restart")
        if incarnation in self._retired.get(sender, ()):
            raise AuthError(f"payload of node {sender}'s earlier incarnation {incarnation:016x}")
        if self._incarnations.get(sender, incarnation) == incarnation or current is not None:
            self._adopt(sender, incarnation)
            return False
        return True

    def _adopt(self, sender: int, incarnation: int) -> None:
        """``sender`` is now ``incarnation``: the state of its previous one is dropped, for good."""
        held = self._incarnations.get(sender)
        if held is not None and held != incarnation:
            self._retired.setdefault(sender, set()).add(held)
            self._forget(sender)
        self._incarnations[sender] = incarnation

    def reconnected(self) -> None:
        """After a reconnect or a resume."""

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        """What this exchange holds, as plain data that ``torch.load(..., weights_only=True)``
        reads back (ints, strs, lists, dicts, None, tensors): frames buffered for later rounds,
        the newest round taken per sender, key-request bookkeeping and, for mask frames, the
        codec's key/delta state. :meth:`load_state` of it continues exactly. The configuration
        (window, identity, frame key, round bound) is not in it: it comes from the constructor."""
        return {
            "node_id": self.node_id,
            "future": [[r, [[s, list(masks)] for s, masks in senders.items()]] for r, senders in self._future.items()],
            "newest": _pairs(self.newest),
            "neighbours": None if self.neighbours is None else sorted(self.neighbours),
            "asked": _pairs(self._asked),
            "honoured": _pairs(self._honoured),
            "last_kind": self.last_kind,
        }

    def load_state(self, state: Mapping[str, Any], source: str = "exchange state") -> None:
        """Continue from a :meth:`state` of this node's exchange; CheckpointError when it is
        malformed or another node's or model's (then nothing changes)."""
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"expected a dict, got {type(state).__name__}")
            values = self._parse_state(state, source)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed exchange state ({type(exc).__name__}: {exc})") from exc
        for name, value in values.items():
            setattr(self, name, value)

    def _parse_state(self, state: Mapping[str, Any], source: str) -> dict[str, Any]:
        """attribute -> value for :meth:`load_state` (subclasses add theirs); KeyError,
        TypeError or ValueError when malformed, CheckpointError when another's."""
        if _int(state["node_id"]) != self.node_id:
            raise CheckpointError(f"{source} holds node {state['node_id']}'s exchange state, not node {self.node_id}'s")
        neighbours = state["neighbours"]
        return {
            "_future": {_int(r): {_int(s): _tensor_list(masks) for s, masks in senders}
                        for r, senders in state["future"]},
            "newest": _int_dict(state["newest"]),
            "neighbours": None if neighbours is None else {_int(j) for j in neighbours},
            "_asked": _int_dict(state["asked"]),
            "_honoured": _int_dict(state["honoured"]),
            "last_kind": _str(state["last_kind"]),
        }

    # ------------------------------------------------------------------ sealing
    def _seal(self, kind: str, round: int, payload: bytes) -> bytes:  # noqa: A002
        return self.identity.seal(kind, round, payload) if self.identity is not None else payload

    def _in_run(self, rnd: int) -> bool:
        return self.max_round is None or rnd < self.max_round

    # ------------------------------------------------------------------ key frames on demand
    def _rate_ok(self, neighbour: int, round: int) -> bool:  # noqa: A002
        last = self._honoured.get(neighbour)
        if last is not None and 0 <= round - last < self.key_request_gap:
            return False
        self._honoured[neighbour] = round
        return True

    def peer_returned(self, neighbour: int, round: int) -> bool:  # noqa: A002
        """A neighbour came back online: send a key frame next, at most once per ``key_request_gap`` rounds."""
        if not self._rate_ok(neighbour, round):
            return False
        self._force_key()
        return True

    # ------------------------------------------------------------------ the loop
    def out_of_step(self, round: int, lag: int = 2) -> set[int]:  # noqa: A002
        """Senders not worth waiting for in ``round``: already past it without a frame of it
        buffered (a restart put us behind them), or ``lag`` or more rounds behind it."""
        return {s for s, r in self.newest.items()
                if (r > round and s not in self._future.get(round, {})) or r < round - lag}

    def collect(self, transport: Transport, round: int, expected: set[int], deadline: float) -> ReceivedMasks:  # noqa: A002
        """Neighbours' payloads for ``round`` until all of ``expected`` arrived or ``deadline`` (monotonic) passed."""
        out = ReceivedMasks()
        accept = expected | (self.neighbours or set())
        for sender, masks in self._future.pop(round, {}).items():
            if sender in accept:
                out.frames[sender] = masks
        for r in [r for r in self._future if r < round]:
            del self._future[r]
        synchronous = transport.synchronous
        # take what already arrived even when nobody is waited for: that is how a neighbour
        # out of step (or one we run ahead of, after our restart) is heard again
        for env in transport.poll(0):
            self._accept(transport, env, round, accept, out)
        while not self._all_in(expected, round, out):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            envelopes = transport.poll(min(remaining, 0.5))
            for env in envelopes:
                self._accept(transport, env, round, accept, out)
            if synchronous and not envelopes:
                break
        out.rejected += int(transport.take_dropped())  # hostile or malformed input the transport refused
        return out

    def _all_in(self, expected: set[int], round: int, out: ReceivedMasks) -> bool:  # noqa: A002
        """True once every expected sender is in, or has shown it is past this round."""
        return all(s in out.frames or self.newest.get(s, -1) > round for s in expected)

    def _accept(self, transport: Transport, env: Envelope, round: int,  # noqa: A002
                accept: set[int], out: ReceivedMasks) -> None:
        sender, payload = env.sender, env.payload
        if env.kind == "ctl":
            self._on_ctl(transport, sender, payload, round, out)
            return
        if env.kind != "mask":
            return
        out.bytes += len(payload)
        sealed_round: int | None = None
        adopt: int | None = None  # an incarnation to adopt once the payload passed every check
        try:
            if self.identity is not None:
                opened = self.identity.open(payload, sender=sender, kind="mask")
                if self._check_incarnation(transport, sender, opened.incarnation):
                    adopt = opened.incarnation
                sealed_round = opened.round
                if not self._in_run(sealed_round):
                    raise AuthError(f"round {sealed_round} is past the run's last round")
                payload = opened.payload
            frame_round, masks, commit = self._decode(payload, sender)
            if sealed_round is not None and frame_round != sealed_round:
                raise AuthError(f"frame round {frame_round} differs from its sealed round {sealed_round}")
            if not self._in_run(frame_round):
                raise AuthError(f"round {frame_round} is past the run's last round")
        except MissingBaseError as exc:
            if exc.sender != sender or not self._in_run(exc.base_round):
                out.rejected += 1
                return
            if self._asked.get(sender) != round:  # at most one request per sender and round
                self._asked[sender] = round
                transport.publish(self._seal("ctl", round, key_request(sender, round)), kind="ctl")
                out.key_requests_sent += 1
            # a frame of a later round, sealed by the sender's current incarnation (so of this
            # run, and its round authenticated): the sender is past this round, do not wait
            # for it (the key frame asked for comes with its next round). An unsealed frame
            # moves nothing.
            if sealed_round is not None and adopt is None and sealed_round > round:
                self.newest[sender] = max(self.newest.get(sender, -1), sealed_round)
            return
        except FrameError:
            out.rejected += 1
            return
        if adopt is not None:
            self._adopt(sender, adopt)
        newest = self.newest.get(sender, -1)
        if frame_round == round and sender in accept and sender not in out.frames:
            out.frames[sender] = masks
        elif round < frame_round <= round + self.window and sender not in self._future.get(frame_round, {}):
            self._future.setdefault(frame_round, {})[sender] = masks
        elif frame_round > newest and frame_round != round:
            out.latest[sender] = masks  # out of step but new: late, or from far ahead
        else:
            out.duplicates += 1
            return
        commit()  # stored only now: every check passed and the frame was taken
        self.newest[sender] = max(newest, frame_round)

    def _on_ctl(self, transport: Transport, sender: int, payload: bytes, round: int,  # noqa: A002
                out: ReceivedMasks) -> None:
        if self.identity is not None:
            try:
                opened = self.identity.open(payload, sender=sender, kind="ctl")
                if self._check_incarnation(transport, sender, opened.incarnation):
                    self._adopt(sender, opened.incarnation)  # a well-formed signed control message
                payload = opened.payload
            except AuthError:
                out.rejected += 1
                return
        if parse_key_request(payload) != self.node_id:
            return  # not for us (another control message, or another node's request)
        if not self._rate_ok(sender, round):
            out.rejected += 1  # a flood: at most one forced key frame per gap and neighbour
            return
        self._force_key()


_Packed = tuple[tuple[np.ndarray, tuple[int, ...]], ...]  # per layer: packbits, shape (as a PeerMaskStore holds masks)


@dataclass(frozen=True)
class _Memoized:
    sender: int
    round: int
    base_round: int | None
    base: _Packed | None  # the packed base the frame was decoded against (None: a key frame)
    packed: _Packed  # the frame's masks


class FrameMemo:
    """Decoded mask frames shared by the exchanges of the nodes one process hosts.

    Decoding a frame is a pure function of its bytes, of the receiver's frame settings
    (layer shapes, weights fingerprint, fleet, frame key) and, for a delta, of the base
    masks it applies to. In the simulator (or a ``fleet run`` worker) every neighbour of
    a sender receives the same bytes and holds the same base, so each decoded that frame
    again: ~10 decodes of one frame per round on the paper topology, the largest cost of
    a simulated round beyond the training step. With a memo the first receiver decodes
    it and the others take the result, but only when their own stored base is
    bit-identical to the one it was decoded against; otherwise (or for a delta whose base
    they lack) they decode it themselves, with every check and error of
    :func:`~dslth_edge.wire.decode_frame`. Only successful decodes are kept, the newest
    ``capacity`` of them, packed (1 bit per weight). Thread-safe.
    """

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, int(capacity))
        self._entries: OrderedDict[tuple[Any, ...], _Memoized] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...]) -> _Memoized | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: _Memoized) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


class Exchange(PayloadExchange):
    """Encodes this node's masks and collects its neighbours' for a round."""

    def __init__(
        self,
        *,
        node_id: int,
        shapes: Sequence[tuple[int, ...]],
        fingerprint: bytes,
        fleet: str,
        key: bytes | None = None,
        key_interval: int = KEY_INTERVAL,
        window: int = 4,
        identity: Identity | None = None,
        max_round: int | None = None,
    ) -> None:
        super().__init__(node_id=node_id, window=window, identity=identity, max_round=max_round)
        self.shapes = [tuple(s) for s in shapes]
        self.fingerprint = fingerprint
        self.fleet = fleet
        self.key = key  # HMAC of the frame itself (bare frames); a sealing identity makes it redundant
        # one broadcast frame per round; reliable delivery is assumed and losses come
        # back as key requests
        self.encoder = MaskEncoderState(key_interval=key_interval, optimistic=True)
        self.store = PeerMaskStore(rounds_per_sender=window + 2)
        self.last_codecs: tuple[str, ...] = ()
        #: decoded frames shared with the other nodes of this process (None: decode every frame here)
        self.memo: FrameMemo | None = None

    def encode(self, masks: Sequence[torch.Tensor], round: int) -> bytes:  # noqa: A002
        """This round's payload: a key frame or a delta against the last one sent (sealed if configured)."""
        arrays = [m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=bool) for m in masks]
        enc = self.encoder.encode(arrays, round=round, shapes=self.shapes, sender=self.node_id,
                                  fingerprint=self.fingerprint, fleet=self.fleet, key=self.key)
        self.last_codecs = tuple(s.codec for s in enc.layers)
        self.last_kind = enc.kind
        return self._seal("mask", round, enc.data)

    def max_payload_bytes(self) -> int:
        return default_max_frame_bytes(self.shapes)

    def reconnected(self) -> None:
        """After a reconnect or a resume: the next frame is a key frame."""
        self.encoder.reconnect()

    def state(self) -> dict[str, Any]:
        """:meth:`PayloadExchange.state` plus the encoder's key/delta state and the store of
        peers' bases (bit-packed), and what identifies the frames (checked on load)."""
        return {
            **super().state(),
            "shapes": [list(s) for s in self.shapes],
            "fingerprint": self.fingerprint.hex(),
            "fleet": self.fleet,
            "last_codecs": list(self.last_codecs),
            "encoder": _tensors(self.encoder.state()),
            "store": _tensors(self.store.state()),
        }

    def _parse_state(self, state: Mapping[str, Any], source: str) -> dict[str, Any]:
        values = super()._parse_state(state, source)
        shapes = [tuple(_int(d) for d in s) for s in state["shapes"]]
        if (shapes, state["fingerprint"], state["fleet"]) != (self.shapes, self.fingerprint.hex(), self.fleet):
            raise CheckpointError(f"{source} holds the exchange state of other frames (layer shapes, "
                                  "fixed weights or fleet differ)")
        encoder, store = MaskEncoderState(), PeerMaskStore()
        encoder.load_state(_arrays(state["encoder"]))
        store.load_state(_arrays(state["store"]))
        return {**values, "encoder": encoder, "store": store,
                "last_codecs": tuple(_str(c) for c in state["last_codecs"])}

    def _force_key(self) -> None:
        self.encoder.request_key(None)

    def _forget(self, sender: int) -> None:
        super()._forget(sender)
        self.store.forget(sender)  # the old incarnation's masks are no base of the new one's deltas

    def _decode(self, payload: bytes, sender: int) -> Decoded:
        memo = self.memo
        if memo is None:
            frame = self._decode_frame(payload)
            packed = None
        else:
            key = (bytes(payload), tuple(self.shapes), self.fingerprint, self.fleet, self.key)
            hit = memo.get(key)
            if hit is not None and (hit.base is None or self._holds_base(hit)):
                memo.hits += 1
                if hit.sender != sender:
                    raise AuthError(f"frame on node {sender}'s topic names sender {hit.sender}")
                masks = [torch.from_numpy(m) for m in unpack_masks(hit.packed)]  # fresh arrays

                def commit_packed(hit: _Memoized = hit) -> None:  # shared: never written to
                    self.store.put_packed(hit.sender, hit.round, hit.packed)

                return hit.round, masks, commit_packed
            frame = self._decode_frame(payload)
            base = None if frame.base_round is None else self.store.packed(frame.sender, frame.base_round)
            packed = pack_masks(frame.masks)
            memo.put(key, _Memoized(frame.sender, frame.round, frame.base_round, base, packed))
            memo.misses += 1
        if frame.sender != sender:  # a valid frame on another node's topic: never stored
            raise AuthError(f"frame on node {sender}'s topic names sender {frame.sender}")
        masks = [torch.from_numpy(np.array(m, dtype=bool)) for m in frame.masks]

        def commit(frame: Any = frame, packed: Any = packed) -> None:
            if packed is None:
                self.store.put(frame.sender, frame.round, frame.masks)
            else:  # shared with the memo and the other receivers' stores: never written to
                self.store.put_packed(frame.sender, frame.round, packed)

        return frame.round, masks, commit

    def _decode_frame(self, payload: bytes) -> DecodedFrame:
        return decode_frame(payload, shapes=self.shapes, fingerprint=self.fingerprint, fleet=self.fleet,
                            key=self.key, base_lookup=self.store.get)

    def _holds_base(self, hit: _Memoized) -> bool:
        """Whether this node's store holds, bit for bit, the base a memoized delta was decoded against."""
        assert hit.base is not None and hit.base_round is not None
        own = self.store.packed(hit.sender, hit.base_round)
        return own is not None and same_packed(own, hit.base)
