"""D-PSGD-FT: D-PSGD, then local fine-tuning for the last ``ft_rounds`` rounds (no gossip)."""

from __future__ import annotations

from dslth_edge.learn.algorithms.dpsgd import DPSGD

__all__ = ["DPSGDFT"]


class DPSGDFT(DPSGD):
    """The personalized dense baseline: gossip until ``rounds − ft_rounds``, then alone."""

    def communicates(self, round: int) -> bool:  # noqa: A002
        return round < self.setup.rounds - self.config.ft_rounds
