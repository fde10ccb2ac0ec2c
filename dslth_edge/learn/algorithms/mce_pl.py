"""MCE-PL, the paper's method: the masked family with personalized fine-tuning (5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dslth_edge.learn.algorithm import in_personal_phase, personalized_finetune_
from dslth_edge.learn.algorithms.base import BackwardFn, LossFn
from dslth_edge.learn.algorithms.masked import MaskAlgorithm

__all__ = ["MCEPL"]


class MCEPL(MaskAlgorithm):
    """(1)-(4) of :class:`MaskAlgorithm`, then (5): z_i ← z_i − η_ft · g_i ⊙ m̄_i.

    With ``ft_rounds`` > 0 the last rounds are a personal phase
    (:func:`~dslth_edge.learn.algorithm.in_personal_phase`): no frames, m̄ left out (no
    shift (1), no step (5)), local SGD on the scores from the collaborative mask reached.
    """

    def communicates(self, round: int) -> bool:  # noqa: A002
        return not in_personal_phase(self.config, round, self.setup.rounds)

    personal = False  # in the personal phase this round

    def local_step(self, round: int, backward: BackwardFn) -> float:  # noqa: A002
        self.personal = not self.communicates(round)
        if self.personal:
            self.mbar = None  # the personal phase: m̄ leaves (1) and (5)
        return super().local_step(round, backward)

    def merge(self, frames: Mapping[int, list[torch.Tensor]], latest: Mapping[int, list[torch.Tensor]],
              live: Sequence[int]) -> None:
        if not self.personal:
            super().merge(frames, latest, live)

    def fine_tune(self, round: int, loss_at: LossFn) -> None:  # noqa: A002
        if self.mbar is None or self.grads is None:
            return
        if self.config.ft_recompute:  # (5) with a fresh gradient of the round's last batch
            steps = self.config.local_steps
            loss = loss_at(round * steps + steps - 1)
            self.grads = [g.detach() for g in torch.autograd.grad(loss, [layer.scores for layer in self.layers])]
        for layer, g, mb in zip(self.layers, self.grads, self.mbar):
            personalized_finetune_(layer.scores, g, mb, self.config.ft_lr)
