"""The per-round hooks of a decentralized learning algorithm: the ``Algorithm`` interface.

A node (:mod:`dslth_edge.fleet.node`) runs rounds, deadlines, checkpoints and evaluation;
what is learned, sent and merged is its algorithm's. Per round ``k`` the node calls, in
this order:

1. :meth:`Algorithm.local_step` — the local update on the node's data (the node supplies
   the gradient of a batch: its data, micro-batches and step slots are the node's);
2. :meth:`Algorithm.publish` — what goes on the wire, when :meth:`Algorithm.communicates`;
3. :meth:`Algorithm.merge` — what the neighbours sent this round (and their latest
   payloads out of step), with the neighbours still live;
4. :meth:`Algorithm.personal_step` — the node's own step after merging.

The algorithm owns the model, its optimizer and its checkpoint state (:meth:`state`,
:meth:`load_state`); :meth:`kept_count` and :attr:`bits_per_param` feed the metrics.
Two families share most of their code: :class:`~dslth_edge.learn.algorithms.masked.MaskAlgorithm`
(fixed weights, learned scores, masks on the wire) and
:class:`~dslth_edge.learn.algorithms.dense.DenseAlgorithm` (trained weights, fp32 on the wire).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dslth_edge.errors import CheckpointError
from dslth_edge.learn.algorithm import AlgorithmConfig
from dslth_edge.learn.masking import MaskedLayer, masked_layers
from dslth_edge.learn.models import ModelSpec
from dslth_edge.learn.sgd import SGD

__all__ = ["Algorithm", "AlgorithmSetup", "BackwardFn", "LossFn", "PAYLOADS"]

#: the gradient of the batch of a global step accumulated into ``.grad``; returns the batch loss
BackwardFn = Callable[[int], float]
#: the loss of the batch of a global step, with its graph (for a fresh gradient)
LossFn = Callable[[int], torch.Tensor]
#: what an algorithm sends: "masks" (mask frames, dslth_edge.wire) or "weights" (fp32 vector)
PAYLOADS = ("masks", "weights")


@dataclass(frozen=True)
class AlgorithmSetup:
    """What a node tells its algorithm about itself (besides the constants of AlgorithmConfig)."""

    spec: ModelSpec  # with the node's score seed
    rounds: int  # the run's total rounds
    seed: int = 0  # the fleet's seed (what every node shares: e.g. the round-0 m̄)
    weights_file: str | None = None  # fixed weights from a file instead of the seed
    channels: tuple[int, ...] | None = None  # per masked layer: output channels the plan ends with
    channel_order: str = "score"  # which live channels a drop schedule removes first
    #: neighbour -> mixing weight (dense averaging; None: uniform)
    mixing_weights: Mapping[int, float] | None = None


class Algorithm(ABC):
    """One node's learning algorithm: its model, its per-round hooks, its checkpoint state."""

    #: what :meth:`publish` returns goes on the wire as (one of :data:`PAYLOADS`)
    payload: ClassVar[str] = "masks"
    #: the authors' communication metric: bits per parameter sent to each neighbour
    bits_per_param: ClassVar[int] = 1
    #: whether the run ends with a mask (mask.npz) to export
    has_mask: ClassVar[bool] = True
    #: whether a neighbour's payload out of step with the round (late, or from ahead) is
    #: still used as its latest (masks: yes; dense weights are averaged in their round only)
    uses_latest: ClassVar[bool] = True

    def __init__(self, config: AlgorithmConfig, setup: AlgorithmSetup) -> None:
        self.config = config
        self.setup = setup
        self.model = self.build_model()
        self.layers: list[MaskedLayer] = [layer for _, layer in masked_layers(self.model)]
        self.fingerprint = self.weights_fingerprint()
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr, momentum = self.optimizer_settings()
        # torch.optim.SGD's update and state_dict without its ~70 MiB torch._dynamo import
        self.optimizer = SGD(params, lr=lr, momentum=momentum, weight_decay=config.weight_decay)

    # ------------------------------------------------------------------ construction
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The node's model, built from ``setup.spec``."""

    @abstractmethod
    def weights_fingerprint(self) -> bytes:
        """What identifies the model every node of the fleet starts from (checked on resume and on the wire)."""

    @abstractmethod
    def optimizer_settings(self) -> tuple[float, float]:
        """(learning rate, momentum) of the local SGD."""

    @property
    @abstractmethod
    def num_params(self) -> int:
        """The parameters the metrics count (masked weights, or trained weights)."""

    # ------------------------------------------------------------------ the round's hooks
    def communicates(self, round: int) -> bool:  # noqa: A002
        """Whether round ``round`` exchanges anything with the neighbours."""
        return True

    def penalty(self) -> torch.Tensor | None:
        """A regulariser added to the batch loss (None: none)."""
        return None

    def local_step(self, round: int, backward: BackwardFn) -> float:  # noqa: A002
        """``local_steps`` SGD steps on the node's batches of round ``round``; the last batch loss."""
        self.model.train()
        loss = math.nan
        steps = self.config.local_steps
        for s in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = backward(round * steps + s)
            self.after_backward()
            self.optimizer.step()
        return loss

    def after_backward(self) -> None:
        """Called between a step's backward pass and its optimizer step (e.g. to keep the gradient)."""

    @abstractmethod
    def publish(self) -> list[torch.Tensor]:
        """This round's payload state (what the exchange encodes)."""

    @abstractmethod
    def merge(self, frames: Mapping[int, list[torch.Tensor]], latest: Mapping[int, list[torch.Tensor]],
              live: Sequence[int]) -> None:
        """Take the neighbours' payloads of this round (``frames``), newer ones out of step
        (``latest``: late, or from a neighbour ahead), given the neighbours still live (in order)."""

    def personal_step(self, round: int, loss_at: LossFn) -> None:  # noqa: A002
        """The node's own step after merging (none by default)."""

    @abstractmethod
    def kept_count(self) -> int:
        """Parameters the model uses now (of :attr:`num_params`)."""

    # ------------------------------------------------------------------ checkpoint state
    def state(self) -> dict[str, Any]:
        """Everything to continue exactly: the trained part of the model (not the fixed weights:
        they come from the seed) and the optimizer; subclasses add theirs."""
        fixed = {f"{name}.weight" for name, _ in masked_layers(self.model)}
        return {"model": {k: v for k, v in self.model.state_dict().items() if k not in fixed},
                "optimizer": self.optimizer.state_dict()}

    def load_state(self, st: Mapping[str, Any], source: str = "checkpoint") -> None:
        """Continue from a :meth:`state`; CheckpointError when it belongs to another model."""
        try:
            # strict but for the fixed weights, which the checkpoint leaves out (they come from the seed)
            loaded = self.model.load_state_dict(st["model"], strict=False)
            fixed = {f"{name}.weight" for name, _ in masked_layers(self.model)}
            missing = [k for k in loaded.missing_keys if k not in fixed]
            if missing or loaded.unexpected_keys:
                raise CheckpointError(f"{source} does not match this model: missing "
                                      f"{missing[:3]}, unexpected {list(loaded.unexpected_keys)[:3]}")
            self.optimizer.load_state_dict(st["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{source} does not match this model: {exc}") from exc
