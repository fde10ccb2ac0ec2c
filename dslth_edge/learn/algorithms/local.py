"""Local: each node learns its mask alone (no communication): the baseline every method must beat."""

from __future__ import annotations

from dslth_edge.learn.algorithms.masked import MaskAlgorithm

__all__ = ["Local"]


class Local(MaskAlgorithm):
    """Edge-popup on the node's own data: no m̄, no shift, nothing sent."""

    def communicates(self, round: int) -> bool:  # noqa: A002
        return False
