"""The masked family (mce-pl, consensus, local): fixed random weights, learned scores, masks on the wire.

Node i holds the fleet's fixed weights and its scores z_i; m̄_i is the mean of its live
neighbours' latest masks (:mod:`dslth_edge.learn.algorithm` has the equations). Every
forward pass uses TopK of the aggregated scores y_i = z_i + shift(z_i, m̄_i), the shift
kept in each layer's ``score_shift``. Subclasses differ in :meth:`MaskAlgorithm.fine_tune`
(step (5)) and in whether they communicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dslth_edge.learn.algorithm import AlgorithmConfig, aggregation_shift, channel_cap, neighbour_average
from dslth_edge.learn.algorithms.base import Algorithm, AlgorithmSetup, BackwardFn, LossFn
from dslth_edge.learn.masking import (MaskedLayer, configure_structure, drop_channels_, group_lasso, keep_count, load_weights,
                                      weights_fingerprint)
from dslth_edge.learn.models import build_model

__all__ = ["MBAR_STREAM", "MaskAlgorithm", "round0_mbar"]

#: the purpose tag of the round-0 m̄'s random stream (its seed: the fleet's)
MBAR_STREAM = 0x6D626172


def round0_mbar(layers: Sequence[MaskedLayer], seed: int) -> list[torch.Tensor]:
    """The authors' round-0 m̄: per layer, one Bernoulli(keep) draw of the layer's shape.

    Their train_MCE.py draws one random mask per layer (keep 0.3 for conv, 0.9 for FC)
    and gives it to every node as all its neighbours' masks, so m̄ of round 0 is that
    mask. Every node draws the same uniforms here (from the fleet's ``seed``), so nodes
    of one keep share one m̄, and nodes of other keeps get nested ones.
    """
    out = []
    for i, layer in enumerate(layers):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, MBAR_STREAM, i])))
        u = rng.random(tuple(layer.weight.shape), dtype=np.float32)
        out.append(torch.from_numpy((u < layer.keep).astype(np.float32)))
    return out


class MaskAlgorithm(Algorithm):
    """Scores trained through a straight-through TopK; the neighbours' masks shift the scores."""

    payload = "masks"
    bits_per_param = 1
    has_mask = True

    def __init__(self, config: AlgorithmConfig, setup: AlgorithmSetup) -> None:
        # λ and τ: the given ones, else (nodes whose plan removes channels) the preset's structured ones
        # (the aligned route drops channels in the fleet's shared order: the progressive route's λ and
        # τ, which choose a node's own channels, apply to it only when given explicitly)
        structured = setup.channels is not None and setup.channel_order == "score"
        self.group_lasso = config.group_lasso or (config.structured_group_lasso if structured else 0.0)
        self.drop_threshold = config.drop_threshold or (config.structured_drop_threshold if structured else 0.0)
        super().__init__(config, setup)
        self.mbar: list[torch.Tensor] | None = None  # m̄_i per layer, float in [0, 1]
        if config.mbar_init == "bernoulli" and self.communicates(0):
            self.mbar = round0_mbar(self.layers, setup.seed)
        self.peer_masks: dict[int, list[torch.Tensor]] = {}  # latest mask of each neighbour
        self.grads: list[torch.Tensor] | None = None  # g_i of the round's last local step, reused by (5)

    def build_model(self) -> nn.Module:
        model = build_model(replace(self.setup.spec, dense=False))
        if self.setup.weights_file:
            load_weights(model, self.setup.weights_file)
        # the classifier is never structured; planned channel counts, relative τ
        configure_structure(model, self.setup.channels, self.drop_threshold, self.setup.channel_order)
        return model

    def weights_fingerprint(self) -> bytes:
        return weights_fingerprint(self.model)

    def optimizer_settings(self) -> tuple[float, float]:
        return self.config.lr, self.config.momentum

    @property
    def num_params(self) -> int:
        return sum(layer.weight.numel() for layer in self.layers)

    def communicates(self, round: int) -> bool:  # noqa: A002
        return True

    def penalty(self) -> torch.Tensor | None:
        return self.group_lasso * group_lasso(self.model) if self.group_lasso > 0 else None

    # ------------------------------------------------------------------ (1)-(3)
    def set_shifts(self) -> None:
        """The shift of (1) from the current scores and m̄ (none without m̄, or alone)."""
        for i, layer in enumerate(self.layers):
            if self.mbar is None or not self.communicates(0):
                layer.score_shift.zero_()
            else:
                aggregation_shift(layer.scores, self.mbar[i], self.config.beta, out=layer.score_shift)

    def local_step(self, round: int, backward: BackwardFn) -> float:  # noqa: A002
        """(3) from y of (1); afterwards the shift of the updated scores: m_i of (2) is TopK of it."""
        self.set_shifts()
        loss = super().local_step(round, backward)
        self.set_shifts()
        return loss

    def after_backward(self) -> None:
        # g_i, reused by (5); no copy needed: nothing writes to a .grad in place (the optimizer
        # reads it, zero_grad(set_to_none=True) lets the next backward allocate a fresh one)
        self.grads = [layer.scores.grad.detach() for layer in self.layers]  # type: ignore[union-attr]

    def publish(self) -> list[torch.Tensor]:
        """m_i of (2), per layer."""
        return [layer.current_mask() for layer in self.layers]

    # ------------------------------------------------------------------ (4)
    def merge(self, frames: Mapping[int, list[torch.Tensor]], latest: Mapping[int, list[torch.Tensor]],
              live: Sequence[int]) -> None:
        """(4): keep each neighbour's latest mask; m̄ over the live ones (with the self weight)."""
        for sender, masks in frames.items():
            self.peer_masks[sender] = masks
        # a newer mask out of step with this round is still that neighbour's latest
        for sender, masks in latest.items():
            if sender not in frames:
                self.peer_masks[sender] = masks
        heard = [self.peer_masks[j] for j in live if j in self.peer_masks]
        if not heard:
            self.mbar = None
            return
        self.mbar = [neighbour_average([m[i] for m in heard]) for i in range(len(self.layers))]  # type: ignore[misc]
        if self.config.self_weight > 0:  # damping: the node's own published mask joins m̄ with this weight
            a = self.config.self_weight
            with torch.no_grad():
                own = [layer.current_mask() for layer in self.layers]
            self.mbar = [(1 - a) * mb + a * m.to(torch.float32) for mb, m in zip(self.mbar, own)]

    # ------------------------------------------------------------------ (5) and the drop schedule
    def personal_step(self, round: int, loss_at: LossFn) -> None:  # noqa: A002
        """:meth:`fine_tune`, the shift of the final scores and the current m̄, then the
        progressive channel drop of the rounds done.

        The shift is recomputed here, as the authors' code does before it evaluates
        (train_MCE.py:245-247): the mask measured, exported (mask.npz) and used by the
        next forward pass is TopK of the round's final scores shifted by the m̄ just heard,
        not the one of the scores before (5) and the previous m̄.
        """
        self.fine_tune(round, loss_at)
        self.set_shifts()
        self.drop_channels(round + 1)

    def fine_tune(self, round: int, loss_at: LossFn) -> None:  # noqa: A002
        """Step (5) (none here: consensus and local)."""

    def drop_channels(self, rounds_done: int) -> None:
        """Progressive channel drop after a round: relative threshold, then the schedule's cap."""
        for layer in self.layers:
            if layer.target_channels is None and layer.drop_threshold <= 0:
                continue
            full = int(layer.weight.shape[0])
            cap = None if layer.target_channels is None else channel_cap(
                full, layer.target_channels, rounds_done, self.setup.rounds, self.config.drop_until)
            drop_channels_(layer, cap)

    def kept_count(self) -> int:
        """Weights the current masks keep; by arithmetic unless channels may be dropped (saves a top-k per layer)."""
        if (self.drop_threshold > 0 or self.setup.channels is not None
                or any(layer.mask_override is not None for layer in self.layers)):
            with torch.no_grad():
                return sum(int(layer.current_mask().sum()) for layer in self.layers)
        total = 0
        for layer in self.layers:
            n, c = layer.weight.numel(), layer.weight.shape[0]
            total += keep_count(n, layer.keep) if layer.granularity == "unstructured" else keep_count(c, layer.keep) * (n // c)
        return total

    # ------------------------------------------------------------------ checkpoint state
    def state(self) -> dict[str, Any]:
        return {**super().state(), "mbar": self.mbar,
                "peer_masks": {str(j): m for j, m in self.peer_masks.items()}}

    def load_state(self, st: Mapping[str, Any], source: str = "checkpoint") -> None:
        super().load_state(st, source)
        self.mbar = st["mbar"]
        self.peer_masks = {int(j): m for j, m in st["peer_masks"].items()}
