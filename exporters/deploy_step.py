"""The personal deploy-time step of a shrunk model: train its surviving weights on the node's own data.

After the fleet's mask learning, a node whose plan removes channels holds a small model
made of *fixed random* weights chosen by its mask: at a microcontroller's budget that is
too few weights for a random subnetwork to be accurate (docs/results.md, issue 11). The
deploy-time step trains the weights that survive shrinking — every non-zero weight of
the shrunk module, and the scale and shift of its normalisation where it has any — on
the node's own training split, starting from the masked values. Nothing goes on the
wire: the weights stay on the node (or on the gateway that trains on its behalf,
``--for-device``), and the fleet's protocol (masks only) is unchanged.

Kinds (:data:`DEPLOY_STEPS`):

``finetune``
    cross-entropy on the node's labels, SGD with momentum at the run's dense learning
    rate (``AlgorithmConfig.dense_lr``, ``dense_momentum``, ``weight_decay``);
``distill``
    the same, plus distillation (temperature :data:`DISTILL_T`, weight
    :data:`DISTILL_ALPHA`) from a teacher: the node's own *unstructured* masked model
    (a run of the same node at the same keep without channel removal; bigger than the
    device can hold, but the gateway can run it while it trains);
``none``
    the shrunk model as the fleet left it.

Zeros stay zero: a weight the mask removed inside a kept channel, and the channels
shrink padded to the profile's multiple, get no gradient, so the file keeps its shape,
its zero padding and its size. The step is budgeted as a training process: its
predicted peak memory (:func:`training_memory_bytes`) against the profile's training
RAM (``[training] ram_mib``), and its time reported (measured here; predicted on the
device by the planner's time-per-round model, :func:`dslth_edge.cost.latency.predict_round`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslth_edge.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.device.profiles import Profile
    from dslth_edge.runs.runinfo import RunInfo

__all__ = ["DEPLOY_STEPS", "DEFAULT_DEPLOY_STEP", "DEFAULT_STEPS", "DISTILL_T", "DISTILL_ALPHA", "DeployStepOptions",
           "plan_shrinks", "training_memory_bytes", "run_deploy_step"]

DEPLOY_STEPS = ("none", "finetune", "distill")
#: What the ``default`` preset does for a node whose plan shrinks (docs/algorithm.md,
#: "Shrunk nodes: the deploy-time step"; chosen by tools/bench_structured.py).
DEFAULT_DEPLOY_STEP = "finetune"
DEFAULT_STEPS = 100  # optimizer steps at the run's batch size
DISTILL_T = 4.0
DISTILL_ALPHA = 0.5


@dataclass(frozen=True)
class DeployStepOptions:
    """How the deploy-time step runs (None: from the node's run)."""

    kind: str = DEFAULT_DEPLOY_STEP
    steps: int = DEFAULT_STEPS
    lr: float | None = None  # None: the run's dense_lr
    momentum: float | None = None  # None: the run's dense_momentum
    weight_decay: float | None = None  # None: the run's weight_decay
    batch_size: int | None = None  # None: the run's batch size
    seed: int = 0  # mixed with the node id: the batch order

    def __post_init__(self) -> None:
        if self.kind not in DEPLOY_STEPS:
            raise UsageError(f"unknown deploy-time step {self.kind!r}; choose one of {', '.join(DEPLOY_STEPS)}")
        if self.steps < 0:
            raise UsageError(f"deploy-time steps must be >= 0, got {self.steps}")


def plan_shrinks(config: dict[str, Any]) -> bool:
    """Whether the node's plan (config.json) removes channels: only such nodes take the step."""
    if config.get("channels"):
        return True
    plan = (config.get("extra") or {}).get("plan") or {}
    return bool(plan.get("channels"))


def _trainable(module: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, keep-mask) of every weight that survives: non-zero conv/linear weights, and
    the scale and shift of normalisation channels that are not gated off (scale 0)."""
    out: list[tuple[nn.Parameter, torch.Tensor]] = []
    for mod in module.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            out.append((mod.weight, mod.weight.detach() != 0))
            if mod.bias is not None:
                out.append((mod.bias, (mod.weight.detach().reshape(mod.weight.shape[0], -1) != 0).any(1)))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
            live = mod.weight.detach() != 0
            out.append((mod.weight, live))
            out.append((mod.bias, live))
    return out


def training_memory_bytes(module: nn.Module, input_shape: tuple[int, int, int], batch: int) -> float:
    """Predicted peak memory of the step's training process (the same accounting as the mask
    training's, :mod:`dslth_edge.device.training`): the runtime, weights with their gradient
    and momentum (3 × 4 bytes each), the tensors saved for backward at ``batch``, one input batch."""
    from dslth_edge.device.training import runtime_base_bytes, trace_saved_bytes

    params = sum(p.numel() for p in module.parameters())
    was = module.training
    module.train()
    try:
        saved = trace_saved_bytes(module, input_shape, batch)
    finally:
        module.train(was)
    return runtime_base_bytes()[0] + 12.0 * params + saved + 4.0 * batch * math.prod(input_shape)


def _predicted_device_seconds(module: nn.Module, input_shape: tuple[int, int, int], steps: int, batch: int,
                              profile: "Profile | None") -> float | None:
    """Seconds of ``steps`` training steps of ``module`` on ``profile``'s device: the one
    time-per-round model (:func:`dslth_edge.cost.latency.predict_round`, the profile's
    calibrated torch training fit where it has one, else its cited fp32 rate)."""
    if profile is None:
        return None
    from dslth_edge.cost.latency import predict_round
    from dslth_edge.cost.macs import count_macs, weight_layer_kind

    layers = sum(weight_layer_kind(m) is not None for m in module.modules())
    return predict_round(profile, forward_macs=count_macs(module, input_shape), layers=layers, batch=batch,
                         local_steps=steps).compute_s


def run_deploy_step(shrunk: nn.Module, info: "RunInfo", opts: DeployStepOptions, profile: "Profile | None" = None,
                    teacher: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(the trained copy of ``shrunk`` in eval mode, the record the report and the file carry).

    Raises :class:`UsageError` for ``distill`` without a teacher, and when the step's
    predicted memory exceeds the profile's training RAM on a device that trains itself.
    """
    from dslth_edge.data import batch_indices

    algo = info.config.get("algorithm") or {}
    lr = float(opts.lr if opts.lr is not None else algo.get("dense_lr", 0.01))
    momentum = float(opts.momentum if opts.momentum is not None else algo.get("dense_momentum", 0.9))
    wd = float(opts.weight_decay if opts.weight_decay is not None else algo.get("weight_decay", 5e-4))
    batch = int(opts.batch_size or algo.get("batch_size", 32))
    record: dict[str, Any] = {"kind": opts.kind, "steps": 0, "lr": lr, "momentum": momentum, "weight_decay": wd,
                              "batch_size": batch}
    if opts.kind == "none" or opts.steps == 0:
        record["kind"] = "none"
        return shrunk, record
    if opts.kind == "distill" and teacher is None:
        raise UsageError("the distill deploy-time step needs a teacher: the node's unstructured masked model")
    shape = info.input_shape
    model = copy.deepcopy(shrunk)
    for p in model.parameters():
        p.requires_grad_(False)
    params = _trainable(model)
    for p, _ in params:
        p.requires_grad_(True)
    mem = training_memory_bytes(model, shape, batch)
    record["memory"] = {"predicted_bytes": mem, "budget_bytes": None, "ok": None}
    if profile is not None and profile.training is not None:
        budget = float(profile.training.ram_mib) * 2**20
        record["memory"].update(budget_bytes=budget, ok=mem <= budget)
        if profile.can_train and mem > budget:
            raise UsageError(f"the deploy-time step needs {mem / 2**20:.1f} MiB to train on {profile.name}, "
                             f"over its training RAM of {profile.training.ram_mib:g} MiB: lower the batch size")
    ds, split = info.dataset, info.split
    if ds is None or split is None:
        raise UsageError("the deploy-time step needs the node's training data (load_run(..., load_data=True))")
    opt = torch.optim.SGD([p for p, _ in params], lr=lr, momentum=momentum, weight_decay=wd)
    seed = int(np.random.SeedSequence([opts.seed, info.node_id, 23]).generate_state(1)[0])
    if teacher is not None:
        teacher.eval()
    t0 = time.perf_counter()
    model.train()
    losses = []
    for step in range(opts.steps):
        idx = batch_indices(split.train_indices, batch, step, seed)
        x, y = torch.from_numpy(ds.train_batch(idx)), torch.from_numpy(ds.y_train[idx])
        out = model(x)
        loss = F.cross_entropy(out, y)
        if opts.kind == "distill":
            assert teacher is not None
            with torch.no_grad():
                soft = F.softmax(teacher(x) / DISTILL_T, dim=1)
            kd = F.kl_div(F.log_softmax(out / DISTILL_T, dim=1), soft, reduction="batchmean") * DISTILL_T**2
            loss = (1 - DISTILL_ALPHA) * loss + DISTILL_ALPHA * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p, keep in params:  # removed weights and padded channels stay exactly zero
            if p.grad is not None:
                p.grad.mul_(keep.to(p.grad.dtype))
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    record.update(steps=int(opts.steps), seconds_here=seconds,
                  seconds_device_predicted=_predicted_device_seconds(model, shape, opts.steps, batch, profile),
                  trained_values=int(sum(int(k.sum()) for _, k in params)),
                  loss_first=losses[0] if losses else None, loss_last=float(np.mean(losses[-10:])) if losses else None,
                  where="gateway (--for-device)" if (info.config.get("extra") or {}).get("for_device") else "device")
    return model, record


def options_dict(opts: DeployStepOptions) -> dict[str, Any]:
    """The options as a plain dict (for reports)."""
    return asdict(opts)
