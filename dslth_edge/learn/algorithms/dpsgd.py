"""D-PSGD, the dense baseline: trained fp32 weights, averaged with the neighbours each round.

Adapt-then-combine (:mod:`dslth_edge.fleet.dense_exchange` has the payload):

    x_i ← x_i − η ∇f_i(x_i)                              local SGD step (momentum, weight decay)
    x_i ← W_ii' x_i + Σ_{j ∈ N(i), heard} W_ij x_j       Metropolis-Hastings averaging

with W_ij = 1/(1 + max(d_i, d_j)) (``setup.mixing_weights``) and W_ii' = 1 − Σ_{j heard} W_ij;
``mixing="uniform"`` averages uniformly over self and the neighbours heard instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from dslth_edge.learn.algorithms.base import Algorithm
from dslth_edge.learn.dense import dense_fingerprint, flat_parameters, set_flat_parameters
from dslth_edge.learn.models import build_model

__all__ = ["DPSGD"]


class DPSGD(Algorithm):
    """The same architecture with trainable weights; the whole weight vector on the wire."""

    payload = "weights"
    bits_per_param = 32
    has_mask = False
    uses_latest = False

    def build_model(self) -> nn.Module:
        return build_model(replace(self.setup.spec, dense=True))

    def weights_fingerprint(self) -> bytes:
        return dense_fingerprint(self.model)

    def optimizer_settings(self) -> tuple[float, float]:
        return self.config.dense_lr, self.config.dense_momentum

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def publish(self) -> list[torch.Tensor]:
        return [flat_parameters(self.model)]

    def merge(self, frames: Mapping[int, list[torch.Tensor]], latest: Mapping[int, list[torch.Tensor]],
              live: Sequence[int]) -> None:
        """Average with this round's weights of the neighbours heard (weights are used once, not kept)."""
        if not frames:
            return
        x = flat_parameters(self.model)  # (P,)
        w = self.setup.mixing_weights
        if self.config.mixing == "uniform" or w is None:
            acc = x.clone()
            for sender in sorted(frames):  # fixed order: bit-identical sums
                acc += frames[sender][0]
            set_flat_parameters(self.model, acc / (1 + len(frames)))
            return
        heard = sorted(frames)
        acc = x * (1.0 - sum(w[j] for j in heard))
        for sender in heard:
            acc += w[sender] * frames[sender][0]
        set_flat_parameters(self.model, acc)

    def kept_count(self) -> int:
        return self.num_params
