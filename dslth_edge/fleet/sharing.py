"""One copy of the fixed weights for every node of a process.

Every node of a fleet derives the same fixed weights from the fleet's weight seed
(:mod:`dslth_edge.learn.masking`), and nothing writes them after a node is built: the
node learns scores, the weights stay buffers. The nodes that one ``fleet run`` worker
(or the simulator) hosts can therefore point their weight buffers at one shared
tensor per layer instead of holding a copy each. Sharing is keyed by the weights'
fingerprint (a SHA-256 of names, shapes and values), so only bit-identical weights are
ever shared; the registry holds weak references, so the tensors go when the last node
using them does.
"""

from __future__ import annotations

import threading
import weakref
import torch
from torch import nn

from dslth_edge.fleet.exchange import Exchange, FrameMemo
from dslth_edge.learn.masking import masked_layers

__all__ = ["share_fixed_weights", "share_frame_memo"]

_POOL: weakref.WeakValueDictionary[tuple[bytes, str], torch.Tensor] = weakref.WeakValueDictionary()
_MEMOS: weakref.WeakValueDictionary[tuple[bytes, str], FrameMemo] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def share_fixed_weights(model: nn.Module, fingerprint: bytes) -> int:
    """Point ``model``'s fixed weight buffers at the process-wide copy; returns the bytes freed.

    The first model with a fingerprint registers its tensors; later ones drop their own.
    Models without masked layers (the dense baselines, whose weights train) have none.
    """
    freed = 0
    with _LOCK:
        for name, layer in masked_layers(model):
            key = (bytes(fingerprint), name)
            shared = _POOL.get(key)
            w = layer.weight
            if shared is None or shared.shape != w.shape or shared.dtype != w.dtype:
                _POOL[key] = w
                continue
            if shared is not w:
                layer.weight = shared  # a registered buffer: nn.Module keeps it a buffer
                freed += w.numel() * w.element_size()
    return freed


def share_frame_memo(exchange: Exchange) -> FrameMemo:
    """Attach the process-wide :class:`~dslth_edge.fleet.exchange.FrameMemo` of ``exchange``'s
    weights and fleet: the nodes of one process decode each neighbour's frame once.

    The memo keeps two frames per attached node (a round's frames, and the next round's
    arriving early), packed; it goes when the last exchange using it does.
    """
    with _LOCK:
        key = (bytes(exchange.fingerprint), exchange.fleet)
        memo = _MEMOS.get(key)
        if memo is None:
            memo = _MEMOS[key] = FrameMemo(capacity=2)
        else:
            memo.capacity += 2
        exchange.memo = memo
        # the capacity goes back down when the exchange goes (the memo outlives it while
        # others use it): a worker that builds nodes again does not grow it without bound
        weakref.finalize(exchange, _release, memo)
    return memo


def _release(memo: FrameMemo) -> None:
    """An exchange using ``memo`` is gone: its two frames of capacity are given back."""
    with _LOCK:
        memo.capacity = max(2, memo.capacity - 2)
