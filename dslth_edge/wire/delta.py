"""Key/delta bookkeeping: the sender's policy and the receiver's store of peers' masks.

A delta frame is the XOR of this round's masks against an earlier round the receiver
holds, entropy-coded like any layer. The sender (:class:`MaskEncoderState`) sends a
key frame every ``key_interval`` rounds, after :meth:`~MaskEncoderState.reconnect`,
when a receiver asks (:meth:`~MaskEncoderState.request_key`), and whenever no base is
known to be held. The receiver (:class:`PeerMaskStore`) keeps each sender's last few
rounds; a delta whose base it lacks raises :class:`MissingBaseError`, which the caller
turns into a key-frame request.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dslth_edge.wire.errors import HeaderError
from dslth_edge.wire.frame import decode_frame, encode_frame_stats
from dslth_edge.wire.results import DecodedFrame, EncodedFrame, Masks

__all__ = ["KEY_INTERVAL", "MaskEncoderState", "PeerMaskStore", "pack_masks", "same_packed", "unpack_masks"]


#: rounds between a sender's periodic key frames. A key frame costs about one bit per
#: weight, a delta of a settled mask a few hundredths, so at 10 the periodic keys were
#: 57 % of an mcu-cnn fleet's traffic (docs/results.md). They are a safety net only: a
#: receiver that lacks a delta's base asks for a key frame (MissingBaseError), and a
#: sender sends one after a reconnect, a resume or a neighbour's return.
KEY_INTERVAL = 100

_Packed = tuple[tuple[np.ndarray, tuple[int, ...]], ...]  # per layer: packbits, shape


def _unpack(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.unpackbits(bits, count=math.prod(shape)).view(bool).reshape(shape)


def pack_masks(masks: Masks) -> _Packed:
    """Masks as :class:`PeerMaskStore` holds them: per layer, (packbits of the flat mask, shape)."""
    return tuple((np.packbits(np.asarray(m, dtype=bool).reshape(-1)), np.shape(m)) for m in masks)


def unpack_masks(packed: _Packed) -> tuple[np.ndarray, ...]:
    """The masks of :func:`pack_masks`, as fresh bool arrays."""
    return tuple(_unpack(bits, shape) for bits, shape in packed)


def same_packed(a: _Packed, b: _Packed) -> bool:
    """Whether two packed mask sets hold the same bits (the same objects: at once)."""
    return a is b or (len(a) == len(b) and all(
        x is y or (tuple(sx) == tuple(sy) and np.array_equal(x, y)) for (x, sx), (y, sy) in zip(a, b)))


def _int(value: Any) -> int:
    """An int of a loaded state (TypeError for anything else, bools included)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return value


def _target(value: Any) -> int | None:
    """A receiver id of a loaded state: an int, or None for the broadcast."""
    return None if value is None else _int(value)


def _bool_masks(masks: Any) -> tuple[np.ndarray, ...]:
    """Read-only bool copies of a loaded state's masks (numpy arrays or CPU tensors)."""
    arrays = [np.asarray(m) for m in masks]
    for a in arrays:
        if a.dtype != np.bool_:
            raise ValueError(f"a mask of a loaded state has dtype {a.dtype}, not bool")
    return _frozen(arrays)


def _frozen(masks: Masks) -> tuple[np.ndarray, ...]:
    """Read-only copies, so later edits by the caller cannot corrupt a base."""
    out = []
    for m in masks:
        m = np.array(m, dtype=bool, copy=True)
        m.flags.writeable = False
        out.append(m)
    return tuple(out)


class MaskEncoderState:
    """Decides key vs delta for one sender and remembers the masks it sent.

    Targets are a receiver id (unicast) or None (one broadcast frame for all
    ``receivers``). A broadcast delta is based on the oldest round every receiver has
    confirmed. With ``optimistic=True`` every sent round counts as confirmed by
    everyone (for transports that deliver reliably; losses surface as key requests).
    ``receivers`` is a plain set the caller may edit as neighbours come and go. Not
    thread-safe: use it from the node's round loop only.
    """

    def __init__(
        self,
        *,
        key_interval: int = KEY_INTERVAL,
        history: int = 4,
        receivers: Iterable[int] = (),
        optimistic: bool = False,
    ) -> None:
        if key_interval < 1 or history < 1:
            raise ValueError("key_interval and history must be >= 1")
        self.key_interval = key_interval
        self.history = history
        self.optimistic = optimistic
        self.receivers: set[int] = set(receivers)
        self._sent: OrderedDict[int, tuple[np.ndarray, ...]] = OrderedDict()
        self._confirmed: dict[int, int] = {}
        self._last_key: dict[int | None, int] = {}
        self._key_requested: set[int | None] = set()

    def confirm(self, receiver: int, round: int) -> None:  # noqa: A002
        """``receiver`` reports that it holds our masks of ``round``."""
        if round >= self._confirmed.get(receiver, -1):
            self._confirmed[receiver] = round

    def request_key(self, receiver: int | None = None) -> None:
        """The next frame to ``receiver`` (and the next broadcast) is a key frame."""
        self._key_requested.update((receiver, None))
        if receiver is not None:  # whatever it confirmed before, it evidently lost
            self._confirmed.pop(receiver, None)

    def reconnect(self) -> None:
        """After a reconnect nothing is known to be held: forget confirmations, send keys."""
        self._confirmed.clear()
        self._last_key.clear()
        self._key_requested.clear()

    def base_for(
        self, round: int, receiver: int | None = None  # noqa: A002
    ) -> tuple[int, tuple[np.ndarray, ...]] | None:
        """The ``(base_round, masks)`` for this round's frame, or None for a key frame."""
        last_key = self._last_key.get(receiver)
        if last_key is None or round - last_key >= self.key_interval or receiver in self._key_requested:
            return None
        if self.optimistic:
            candidates = [r for r in self._sent if r < round]
            base = max(candidates) if candidates else None
        elif receiver is not None:
            base = self._confirmed.get(receiver)
        else:
            held = [self._confirmed.get(r) for r in self.receivers]
            base = min(held) if held and None not in held else None  # type: ignore[type-var]
        if base is None or base >= round or base not in self._sent:
            return None
        return base, self._sent[base]

    def sent(
        self, round: int, masks: Masks, *, base_round: int | None, receiver: int | None = None  # noqa: A002
    ) -> None:
        """Record what was sent in ``round`` (a key frame when ``base_round`` is None)."""
        self._sent[round] = _frozen(masks)
        self._sent.move_to_end(round)
        while len(self._sent) > self.history:
            self._sent.popitem(last=False)
        if base_round is None:
            self._last_key[receiver] = round
            self._key_requested.discard(receiver)
            if receiver is None:  # a broadcast key frame also reaches every unicast target
                for target in list(self._last_key):
                    self._last_key[target] = round
                self._key_requested.clear()

    def state(self) -> dict[str, Any]:
        """Everything this object holds, as plain data: ints, bools, lists, None and numpy bool
        arrays (copies), in insertion order. :meth:`load_state` of it continues exactly."""
        requested = sorted(t for t in self._key_requested if t is not None)
        return {
            "key_interval": self.key_interval,
            "history": self.history,
            "optimistic": self.optimistic,
            "receivers": sorted(self.receivers),
            "sent": [[r, [np.array(m) for m in masks]] for r, masks in self._sent.items()],
            "confirmed": [[t, r] for t, r in self._confirmed.items()],
            "last_key": [[t, r] for t, r in self._last_key.items()],  # target None: the broadcast
            "key_requested": ([None] if None in self._key_requested else []) + requested,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Become the object :meth:`state` described (arrays may be CPU tensors); nothing
        changes unless the whole state is well formed (else ValueError)."""
        try:
            key_interval, history = _int(state["key_interval"]), _int(state["history"])
            optimistic = state["optimistic"]
            if key_interval < 1 or history < 1 or not isinstance(optimistic, bool):
                raise ValueError("key_interval and history must be >= 1, optimistic a bool")
            sent: OrderedDict[int, tuple[np.ndarray, ...]] = OrderedDict(
                (_int(r), _bool_masks(masks)) for r, masks in state["sent"])
            receivers = {_int(t) for t in state["receivers"]}
            confirmed = {_int(t): _int(r) for t, r in state["confirmed"]}
            last_key = {_target(t): _int(r) for t, r in state["last_key"]}
            key_requested = {_target(t) for t in state["key_requested"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed MaskEncoderState state: {type(exc).__name__}: {exc}") from exc
        self.key_interval, self.history, self.optimistic = key_interval, history, optimistic
        self.receivers = receivers
        self._sent, self._confirmed, self._last_key, self._key_requested = sent, confirmed, last_key, key_requested

    def encode(
        self, masks: Masks, *, round: int, receiver: int | None = None, **frame_args: Any  # noqa: A002
    ) -> EncodedFrame:
        """Pick the base, encode (``frame_args`` go to :func:`encode_frame_stats`), record.

        With optimistic delivery the round before the base is tried too and the smaller
        frame kept: trained masks swing back and forth, so on a real 200-round run
        (paper CNN, keep 0.3) a delta against round r-2 cost 0.003 bits/param where one
        against r-1 cost 0.30 (tools/bench_codec.py --train).
        """
        base = self.base_for(round, receiver)
        frame = encode_frame_stats(masks, round=round, base=base, **frame_args)
        if base is not None and self.optimistic:
            older = [r for r in self._sent if self._last_key.get(receiver, round) <= r < base[0]]
            if older:
                alt = encode_frame_stats(masks, round=round, base=(max(older), self._sent[max(older)]), **frame_args)
                if len(alt.data) < len(frame.data):
                    frame = alt
        self.sent(round, masks, base_round=frame.base_round, receiver=receiver)
        return frame


class PeerMaskStore:
    """Each sender's masks by round: the ``base_lookup`` for deltas, bounded in memory.

    Keeps the newest ``rounds_per_sender`` rounds per sender and at most ``max_senders``
    senders (least recently updated dropped first). Masks are held bit-packed (1 bit per
    element, not numpy's byte per bool: it matters on a device with many neighbours)
    and unpacked into fresh arrays on :meth:`get`. Not thread-safe: feed it from one
    thread (or guard it with a lock).
    """

    def __init__(self, *, rounds_per_sender: int = 4, max_senders: int = 1024) -> None:
        if rounds_per_sender < 1 or max_senders < 1:
            raise ValueError("rounds_per_sender and max_senders must be >= 1")
        self.rounds_per_sender = rounds_per_sender
        self.max_senders = max_senders
        self._peers: OrderedDict[int, dict[int, _Packed]] = OrderedDict()

    def put(self, sender: int, round: int, masks: Masks) -> None:  # noqa: A002
        """Store ``sender``'s masks of ``round`` (packed copies)."""
        self.put_packed(sender, round, pack_masks(masks))

    def put_packed(self, sender: int, round: int, packed: _Packed) -> None:  # noqa: A002
        """Store masks already packed by :func:`pack_masks` (held as given: never write to them)."""
        rounds = self._peers.setdefault(sender, {})
        self._peers.move_to_end(sender)
        rounds[round] = packed
        for old in sorted(rounds)[: -self.rounds_per_sender]:
            del rounds[old]
        while len(self._peers) > self.max_senders:
            self._peers.popitem(last=False)

    def get(self, sender: int, round: int) -> tuple[np.ndarray, ...] | None:  # noqa: A002
        """Masks of ``sender`` at ``round`` (fresh arrays), or None; usable as ``base_lookup``."""
        packed = self._peers.get(sender, {}).get(round)
        if packed is None:
            return None
        return tuple(_unpack(bits, shape) for bits, shape in packed)

    __call__ = get

    def packed(self, sender: int, round: int) -> _Packed | None:  # noqa: A002
        """The packed masks of ``sender`` at ``round`` as held (read-only), or None."""
        return self._peers.get(sender, {}).get(round)

    def latest(self, sender: int) -> tuple[int, tuple[np.ndarray, ...]] | None:
        """The newest ``(round, masks)`` held for ``sender``."""
        rounds = self._peers.get(sender)
        if not rounds:
            return None
        newest = max(rounds)
        masks = self.get(sender, newest)
        assert masks is not None
        return newest, masks

    def rounds(self, sender: int) -> Sequence[int]:
        return sorted(self._peers.get(sender, {}))

    def forget(self, sender: int) -> None:
        self._peers.pop(sender, None)

    def state(self) -> dict[str, Any]:
        """Everything this store holds, as plain data: ints, lists and numpy uint8 arrays (the
        packed bits, copies), senders least recently updated first. :meth:`load_state` of it
        continues exactly."""
        return {
            "rounds_per_sender": self.rounds_per_sender,
            "max_senders": self.max_senders,
            "peers": [[sender, [[r, [[bits.copy(), list(shape)] for bits, shape in packed]]
                                for r, packed in rounds.items()]]
                      for sender, rounds in self._peers.items()],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Become the store :meth:`state` described (arrays may be CPU tensors); nothing
        changes unless the whole state is well formed (else ValueError)."""
        try:
            rounds_per_sender, max_senders = _int(state["rounds_per_sender"]), _int(state["max_senders"])
            if rounds_per_sender < 1 or max_senders < 1:
                raise ValueError("rounds_per_sender and max_senders must be >= 1")
            peers: OrderedDict[int, dict[int, _Packed]] = OrderedDict()
            for sender, rounds in state["peers"]:
                held: dict[int, _Packed] = {}
                for r, packed in rounds:
                    layers = []
                    for bits, shape in packed:
                        dims = tuple(_int(d) for d in shape)
                        arr = np.array(np.asarray(bits), copy=True)
                        size = -(-math.prod(dims) // 8)
                        if arr.dtype != np.uint8 or arr.shape != (size,) or min(dims, default=0) < 0:
                            raise ValueError(f"packed mask of dtype {arr.dtype} and shape {arr.shape} "
                                             f"does not hold a mask of shape {dims}")
                        layers.append((arr, dims))
                    held[_int(r)] = tuple(layers)
                peers[_int(sender)] = held
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed PeerMaskStore state: {type(exc).__name__}: {exc}") from exc
        self.rounds_per_sender, self.max_senders, self._peers = rounds_per_sender, max_senders, peers

    def decode(self, data: bytes | bytearray | memoryview, *, sender: int | None = None,
               **decode_args: Any) -> DecodedFrame:
        """:func:`decode_frame` with this store as ``base_lookup``; stores the result.

        ``sender``: the sender the network vouches for (e.g. the topic owner); a frame
        naming another sender raises :class:`HeaderError` and is *not* stored. Without it,
        whatever a frame claims is stored under the sender it names: verify first (the
        fleet's :class:`~dslth_edge.fleet.exchange.Exchange` decodes with
        :func:`decode_frame` and calls :meth:`put` only once every check passed).
        Raises :class:`MissingBaseError` for a delta on an unknown base (then request a
        key frame from ``err.sender``).
        """
        frame = decode_frame(data, base_lookup=self.get, **decode_args)
        if sender is not None and frame.sender != sender:
            raise HeaderError(f"frame names sender {frame.sender}, it came from {sender}")
        self.put(frame.sender, frame.round, frame.masks)
        return frame
