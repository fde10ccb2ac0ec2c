"""MCE-PL, the paper's method: the masked family with personalized fine-tuning (5)."""

from __future__ import annotations

import torch

from dslth_edge.learn.algorithm import personalized_finetune_
from dslth_edge.learn.algorithms.base import LossFn
from dslth_edge.learn.algorithms.masked import MaskAlgorithm

__all__ = ["MCEPL"]


class MCEPL(MaskAlgorithm):
    """(1)-(4) of :class:`MaskAlgorithm`, then (5): z_i ← z_i − η_ft · g_i ⊙ m̄_i."""

    def fine_tune(self, round: int, loss_at: LossFn) -> None:  # noqa: A002
        if self.mbar is None or self.grads is None:
            return
        if self.config.ft_recompute:  # (5) with a fresh gradient of the round's last batch
            steps = self.config.local_steps
            loss = loss_at(round * steps + steps - 1)
            self.grads = [g.detach() for g in torch.autograd.grad(loss, [layer.scores for layer in self.layers])]
        for layer, g, mb in zip(self.layers, self.grads, self.mbar):
            personalized_finetune_(layer.scores, g, mb, self.config.ft_lr)
