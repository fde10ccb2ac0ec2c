"""Training memory that holds: the runtime base measured in-process, and a re-plan on overshoot.

A node's driver (``train``, a fleet device node) measures what its process already
holds once the dataset is loaded and the model traced (:func:`measure_runtime_base`)
and plans with that instead of a per-architecture constant. After every round a
:class:`MemoryGuard` compares the measured peak RSS with the plan. When the peak
exceeds the plan, the guard re-plans the node down: the prediction's error is carried
as an offset, and the largest micro-batch (evaluation chunks shrink with it: a node
evaluates in chunks of its micro-batch) whose corrected prediction fits the training
RAM budget is chosen; the peak is reset so the next round measures the new setting.
Only when micro-batch 1 does not fit either does it stop with
:class:`~dslth_edge.errors.OverBudgetError` (exit 3), naming the budget.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

from dslth_edge.cost.units import MIB
from dslth_edge.device.profiles import Profile
from dslth_edge.device.training import (
    ModelTrace,
    TrainingPlan,
    TrainingSetup,
    predict_memory,
    trace_model,
)
from dslth_edge.errors import OverBudgetError
from dslth_edge.util.rss import current_rss_bytes, peak_is_resettable, reset_peak_rss

__all__ = ["measure_runtime_base", "Replan", "MemoryGuard"]


def measure_runtime_base(model: str | None = None, input_shape: tuple[int, int, int] | None = None,
                         num_classes: int = 10) -> tuple[float, str] | None:
    """(bytes, note): the resident set this process holds before its node is built; None where unreadable.

    Runs what every training process runs before its first step: one small conv
    forward/backward (torch maps its CPU kernels) and, given a model, the training-memory
    trace of it (:func:`~dslth_edge.device.training.trace_model`, cached: the plan needs it
    anyway), then collects garbage and reads the current RSS. Call it after the dataset
    is loaded: its labels (and in-RAM images) are then part of the base. The peak is reset
    to the base where the kernel allows it, so the peak a round reports is training's, not
    the transient of planning (which traces the model at small batches).
    """
    import torch

    x = torch.zeros(2, 1, 8, 8, requires_grad=True)
    torch.nn.functional.conv2d(x, torch.ones(2, 1, 3, 3)).sum().backward()
    if model is not None and input_shape is not None:
        trace_model(model, tuple(input_shape), num_classes)
    del x
    gc.collect()
    now = current_rss_bytes()
    if now is None:
        return None
    reset_peak_rss()
    return float(now), f"measured in this process at start-up ({now / MIB:.0f} MiB: interpreter, torch, dataset)"


@dataclass(frozen=True)
class Replan:
    """What the guard decided after a round whose measured peak exceeded the plan."""

    micro_batch: int  # the micro-batch from now on (evaluation chunks follow it)
    previous: int  # the micro-batch the round ran with
    measured: float  # peak RSS measured (bytes)
    planned: float  # what the plan predicted for the previous setting (bytes)
    predicted: float  # the corrected prediction for the new setting (bytes)
    budget: float

    @property
    def changed(self) -> bool:
        return self.micro_batch != self.previous

    def message(self, profile: str, round_: int) -> str:
        """One line saying what was measured and what the node does about it."""
        head = (f"peak memory {self.measured / MIB:.0f} MiB after round {round_} exceeds the plan's "
                f"{self.planned / MIB:.0f} MiB")
        if not self.changed:
            return (f"{head}; it fits {profile}'s training RAM budget {self.budget / MIB:.0f} MiB, "
                    f"micro-batch {self.previous} stays")
        return (f"{head}: re-planned to micro-batch {self.micro_batch} (was {self.previous}; evaluation in chunks of "
                f"{self.micro_batch}), predicted {self.predicted / MIB:.0f} MiB of {profile}'s "
                f"{self.budget / MIB:.0f} MiB training RAM budget")


class MemoryGuard:
    """Holds a node's training memory to its budget, round after round (see the module docstring)."""

    def __init__(self, trace: ModelTrace, setup: TrainingSetup, profile: Profile, micro_batch: int,
                 *, resettable: bool | None = None) -> None:
        self.trace = trace
        self.setup = setup
        self.profile = profile
        self.budget = float(profile.training_ram_budget_bytes)
        self.micro_batch = micro_batch if micro_batch > 0 else setup.batch_size  # 0: whole batches
        self.offset = 0.0  # measured minus predicted, learned from overshoots
        self.planned = self.predict(self.micro_batch)
        # without a resettable peak a lower setting cannot be seen: one re-plan, then trust it
        self.resettable = peak_is_resettable() if resettable is None else resettable
        self.replans = 0
        self.history: list[bool] = []  # per re-plan: whether it lowered the micro-batch

    @classmethod
    def for_plan(cls, plan: TrainingPlan, setup: TrainingSetup, profile: Profile, input_shape: tuple[int, int, int],
                 num_classes: int, micro_batch: int) -> MemoryGuard:
        """A guard for a node planned by :func:`~dslth_edge.device.training.plan_training` with ``setup``."""
        return cls(trace_model(plan.model, tuple(input_shape), num_classes), setup, profile, micro_batch)

    def predict(self, micro_batch: int) -> float:
        """Predicted peak (bytes) at ``micro_batch``, corrected by what was measured so far."""
        return predict_memory(self.trace, self.setup, micro_batch, self.profile.cpu.arch).total + self.offset

    def node_micro_batch(self) -> int:
        """What the node's ``micro_batch`` should be: 0 (whole batches) when the batch runs in one pass."""
        return 0 if self.micro_batch >= self.setup.batch_size else self.micro_batch

    def after_round(self, measured_peak: float | None) -> Replan | None:
        """Check a round's measured peak RSS; None while the plan holds (and the budget with it).

        Over the plan, or over the budget (a plan that found nothing to fit): a
        :class:`Replan` (the largest micro-batch whose corrected prediction fits the budget;
        the peak is reset so the next round measures it). Raises :class:`OverBudgetError`
        (exit 3) naming the budget when micro-batch 1 does not fit.
        """
        if measured_peak is None or measured_peak <= min(self.planned, self.budget):
            return None
        if self.replans and not self.resettable:
            return None  # the lifetime peak still shows the old setting
        previous, planned = self.micro_batch, self.planned
        self.offset += float(measured_peak) - planned
        fits = [m for m in range(previous, 0, -1) if self.predict(m) <= self.budget]
        if not fits:
            need = self.predict(1)
            raise OverBudgetError(
                f"training does not fit {self.profile.name}'s training RAM budget {self.budget / MIB:.0f} MiB: "
                f"measured peak {measured_peak / MIB:.0f} MiB at micro-batch {previous}, and micro-batch 1 would "
                f"need about {need / MIB:.0f} MiB")
        chunks = math.ceil(self.setup.batch_size / fits[0])
        new = math.ceil(self.setup.batch_size / chunks)  # equal chunks, as the plan makes them
        self.micro_batch = new
        self.planned = self.predict(new)
        self.replans += 1
        self.history.append(new != previous)
        if new != previous:
            reset_peak_rss()
        return Replan(new, previous, float(measured_peak), planned, self.planned, self.budget)
