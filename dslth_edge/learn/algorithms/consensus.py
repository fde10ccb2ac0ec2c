"""Consensus: MCE-PL without step (5) — the neighbours' masks shift the scores, nothing more."""

from __future__ import annotations

from dslth_edge.learn.algorithms.masked import MaskAlgorithm

__all__ = ["Consensus"]


class Consensus(MaskAlgorithm):
    """(1)-(4) of :class:`~dslth_edge.learn.algorithms.masked.MaskAlgorithm`; no personal step."""
