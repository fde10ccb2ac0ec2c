"""Per-round digests of a fleet: what pins the algorithms' behaviour bit for bit.

One digest per round: SHA-256 over every node (in id order) of its trainable state
(scores, or the dense baselines' flat weights), its current masks, its m̄ and the
round's metrics line without the machine's figures (wall-clock timings, memory). The
golden values in the tests were recorded on the code before the algorithms became
pluggable (issue 22); a refactor that keeps them keeps every equation, every branch and
every metric as it was.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import asdict
from typing import Any

import torch

from dslth_edge.fleet.node import Node, RoundResult
from dslth_edge.learn.dense import flat_parameters

__all__ = ["MACHINE_FIELDS", "metrics_line", "node_digest", "round_digest"]

#: metrics fields that measure the machine, not the algorithm
MACHINE_FIELDS = ("t_compute_s", "t_round_s", "peak_rss_bytes")


def _tensor(h: Any, t: torch.Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().contiguous()
    h.update(str(t.dtype).encode() + struct.pack(f"<{t.dim()}I", *t.shape))
    h.update(t.numpy().tobytes())


def metrics_line(result: RoundResult, skip: tuple[str, ...] = ()) -> str:
    """The metrics line without the machine's figures (and ``skip``), floats written exactly."""
    d = {k: v for k, v in asdict(result).items() if k not in MACHINE_FIELDS and k not in skip}
    return ";".join(f"{k}={float(v).hex() if isinstance(v, float) and not math.isnan(v) else v}" for k, v in sorted(d.items()))


def _mbar(node: Node) -> list[torch.Tensor] | None:
    return getattr(node.algorithm, "mbar", None)  # the masked family's m̄ (the dense baselines have none)


def node_digest(h: Any, node: Node, result: RoundResult, skip: tuple[str, ...] = ()) -> None:
    """Feed node's scores (or dense weights), masks, m̄ and metrics line into ``h``."""
    if not node.algorithm.has_mask:
        _tensor(h, flat_parameters(node.model))
    else:
        for layer in node.layers:
            _tensor(h, layer.scores)
        for m in node.current_masks():
            _tensor(h, m)
    mbar = _mbar(node)
    h.update(b"mbar")
    for mb in mbar or []:
        _tensor(h, mb)
    h.update(metrics_line(result, skip).encode())


def round_digest(nodes: list[Node], results: list[RoundResult], skip: tuple[str, ...] = ()) -> str:
    """The digest of one round of the fleet (16 hex digits)."""
    h = hashlib.sha256()
    for node, result in zip(nodes, results):
        node_digest(h, node, result, skip)
    return h.hexdigest()[:16]
