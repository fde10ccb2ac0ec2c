"""What training costs the device: peak memory at a micro-batch size, and compute per round.

The planner (:mod:`dslth_edge.device.planner`) judges the *exported* model against
inference budgets; this module judges the *training process* on the device against
the profile's training RAM budget (``[training] ram_mib``) and its round period
(``[network] round_period_s``).

Memory: the predicted peak resident set of a training process is the sum of

``runtime``
    what the process holds before its node is built. A node's own driver (``train``, a
    fleet device node) measures it in-process at start-up, after the dataset is loaded
    and the model traced (:func:`dslth_edge.device.memory_guard.measure_runtime_base`:
    this interpreter, torch build, allocator and dataset as they are); a plan made for
    another machine uses the figure measured per CPU architecture
    (:data:`RUNTIME_BASE_MIB`; torch's shared libraries are most of it);
``fixed weights, scores, gradients, optimizer state``
    per masked weight: the fixed weight, its score, the aggregation shift, the score
    gradient and the copy of it that personalised fine-tuning reuses (5 × 4 bytes), plus
    4 bytes of momentum when the preset uses momentum; for the dense baselines the
    weights themselves train;
``tensors saved for backward``
    traced from the model itself (:func:`trace_saved_bytes`, a forward pass under
    :func:`torch.autograd.graph.saved_tensors_hooks`): a part that does not depend on
    the batch (the masked weights ``w ⊙ m`` every conv/linear keeps) and a part per
    sample (activations, pooling indices), times the micro-batch;
``backward working set``
    the largest activation's gradient and its input gradient, per sample, times the
    micro-batch, and the per-layer top-k selection over the largest layer's scores;
``data``
    the int64 labels, one float32 input batch, and the uint8 images when they are held
    in RAM (synthetic, CIFAR-10, small gzip files); a memory-mapped dataset is read per
    batch with ``pread`` (:func:`dslth_edge.data.dataset.read_rows`), so its pages stay
    in the kernel's page cache, out of the process. A measured runtime base already
    holds the labels and in-RAM images: then only the batch counts here;
``evaluation``
    evaluation is planned like training: it runs in chunks of the micro-batch (the batch
    when whole batches fit), and its working set (the pinned masks, one layer's masked
    weights, the two largest activations of a chunk, the chunk's input) is counted; the
    peak is the larger of a training step's and an evaluation chunk's.

The planner picks the largest micro-batch that fits the budget and accumulates the
gradients of ``ceil(batch / micro)`` micro-batches into one step, so the preset's
batch (its learning dynamics) is kept: for a model without batch normalisation the
accumulated gradient equals the full-batch gradient up to float summation order
(tests/device/test_training_accumulation.py pins it); with batch normalisation each
micro-batch is normalised with its own statistics (as "ghost batch norm"), which the
plan notes.

Time: one round is ``local_steps`` optimizer steps at the preset's batch; a step
costs about 3 × the forward MACs per sample (forward, input gradient, weight/score
gradient) × batch, over the profile's effective fp32 throughput, plus the profile's
per-layer overhead three times per layer and micro-batch. Compared against the round
period, the plan names the largest local-step count, or batch, that fits, or the round
period the setting needs.
"""

from __future__ import annotations

import functools
import math
import platform
from dataclasses import dataclass
from typing import Any, Sequence

from dslth_edge.cost.latency import predict_round
from dslth_edge.device.planner import Check, Plan, format_quantity
from dslth_edge.cost.units import MIB
from dslth_edge.device.profiles import Profile
from dslth_edge.errors import UsageError
from dslth_edge.cost.layers import LayerCost

__all__ = [
    "RUNTIME_BASE_MIB",
    "BYTES_PER_MASKED_WEIGHT",
    "TRAINING_CONSTRAINTS",
    "ModelTrace",
    "TrainingSetup",
    "MemoryBreakdown",
    "TrainingPlan",
    "runtime_base_bytes",
    "trace_saved_bytes",
    "trace_model",
    "trace_from_costs",
    "training_macs_per_sample",
    "predict_memory",
    "plan_training",
    "attach_training",
    "accumulation_chunks",
    "preset_setup",
    "node_training_plan",
    "node_training_setup",
    "device_micro_batch",
]

#: Peak RSS in MiB of a warm runtime per CPU architecture: the interpreter after
#: importing what ``dslth-edge train`` imports (numpy, torch, click, rich, this package)
#: and running one tiny conv forward/backward (which maps torch's CPU kernels).
#: x86_64: 248 MiB, measured on the project's host (torch 2.13.0+cpu, Python 3.11,
#: Debian; ``import torch`` alone is 225 MiB of it). aarch64 wheels of torch ship a
#: similar libtorch_cpu; no ARM board was at hand to measure, so the x86_64 figure
#: stands in for it (see :func:`runtime_base_bytes`).
RUNTIME_BASE_MIB: dict[str, float] = {"x86_64": 248.0}
#: Persistent bytes per masked weight while training: w, z, shift, ∇z and its copy (fp32).
BYTES_PER_MASKED_WEIGHT = 5 * 4
#: Names of the training checks, in report order.
TRAINING_CONSTRAINTS: tuple[str, ...] = ("training-ram", "training-time")
#: Allocator slack on top of the counted tensors (glibc arenas, torch's caching of small blocks).
_ALLOCATOR_SLACK = 1.10


def runtime_base_bytes(arch: str | None = None) -> tuple[float, str]:
    """(bytes, how it was obtained) of the runtime base for a CPU architecture."""
    arch = arch or platform.machine()
    key = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch.lower(), arch.lower())
    if key in RUNTIME_BASE_MIB:
        return RUNTIME_BASE_MIB[key] * MIB, f"measured on {key}"
    return RUNTIME_BASE_MIB["x86_64"] * MIB, f"not measured on {key}: the x86_64 figure stands in"


@dataclass(frozen=True)
class ModelTrace:
    """What the training-memory model needs to know about one architecture at one input shape."""

    model: str
    masked_weights: int  # fixed weights under a mask (= scores)
    trainable_dense: int  # parameters the dense baselines train (all weights)
    saved_fixed_bytes: float  # tensors saved for backward that do not grow with the batch
    saved_per_sample_bytes: float  # tensors saved for backward per sample
    max_activation_elems: int  # the largest layer output per sample
    max_layer_weights: int  # the largest masked layer (top-k works on one layer at a time)
    forward_macs: int  # per sample
    layers: int  # weight layers
    input_elems: int  # per sample
    batch_norm: bool  # micro-batches change batch-norm statistics


def trace_saved_bytes(model: Any, input_shape: tuple[int, int, int], batch: int) -> float:
    """Bytes of the tensors autograd keeps for backward in one forward pass at ``batch``.

    Counted once per storage (a ReLU output that max-pooling also keeps counts once);
    the model's own parameters and buffers are not counted (they are there anyway).
    """
    import torch
    import torch.nn.functional as F

    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    kept: list[torch.Tensor] = []  # alive until counted, so no address is reused within the trace

    def pack(t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
            kept.append(t)
        # the graph itself keeps nothing: it is only counted, never differentiated
        # (returning the tensor here kept every traced graph alive, ~14 MiB per paper-CNN trace)

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("a traced graph cannot be differentiated")

    was_training = model.training
    model.train()
    x = torch.zeros((batch, *input_shape))
    y = torch.zeros(batch, dtype=torch.long)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = F.cross_entropy(model(x), y)
    del loss
    total = float(sum(seen.values()))
    kept.clear()
    model.train(was_training)
    return total


@functools.lru_cache(maxsize=32)
def trace_model(model_name: str, input_shape: tuple[int, int, int], num_classes: int) -> ModelTrace:
    """Build ``model_name`` once and trace it (cached per architecture and shape)."""
    import torch

    from dslth_edge.learn.models import ModelSpec, build_model, layer_costs

    with torch.random.fork_rng():
        model = build_model(ModelSpec(model_name, tuple(input_shape), num_classes, keep=0.5))
        costs = layer_costs(model, tuple(input_shape))
        s2 = trace_saved_bytes(model, input_shape, 2)
        s4 = trace_saved_bytes(model, input_shape, 4)
        batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    per_sample = (s4 - s2) / 2.0
    return trace_from_costs(model_name, costs, input_shape, saved_fixed_bytes=max(0.0, s2 - 2 * per_sample),
                            saved_per_sample_bytes=per_sample, batch_norm=batch_norm)


def trace_from_costs(
    model_name: str,
    costs: Sequence[LayerCost],
    input_shape: tuple[int, int, int],
    *,
    saved_fixed_bytes: float,
    saved_per_sample_bytes: float,
    batch_norm: bool,
) -> ModelTrace:
    """A :class:`ModelTrace` from a model's layer costs (every weight layer is masked) and its traced saved bytes."""
    if not costs:
        raise UsageError(f"{model_name} has no weight layers")
    weights = sum(c.params for c in costs)
    return ModelTrace(
        model=model_name,
        masked_weights=weights,
        trainable_dense=weights,
        saved_fixed_bytes=float(saved_fixed_bytes),
        saved_per_sample_bytes=float(saved_per_sample_bytes),
        max_activation_elems=max(max(c.out_elems, c.in_elems) for c in costs),
        max_layer_weights=max(c.params for c in costs),
        forward_macs=sum(c.macs for c in costs),
        layers=len(costs),
        input_elems=math.prod(input_shape),
        batch_norm=batch_norm,
    )


def training_macs_per_sample(costs: Sequence[LayerCost]) -> int:
    """MACs of one training sample: forward, input gradient and weight/score gradient (3 × forward)."""
    return 3 * sum(c.macs for c in costs)


@dataclass(frozen=True)
class TrainingSetup:
    """What a node trains with, as far as its memory and time go."""

    batch_size: int = 128  # the preset's (effective) batch
    local_steps: int = 1
    momentum: bool = False  # SGD momentum buffers
    dense: bool = False  # dpsgd baselines: the weights train, no scores
    train_samples: int = 60000  # samples the node touches (its partition)
    test_samples: int = 10000
    sample_bytes: int = 784  # uint8 bytes of one input
    mapped: bool = True  # images memory-mapped and read per batch (pread): not in the process's RAM
    arch: str | None = None  # CPU architecture of the runtime base (None: the profile's)
    runtime_base: float | None = None  # bytes measured in this process (dataset loaded); None: per-arch figure
    runtime_note: str = ""  # how runtime_base was obtained

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.local_steps < 1:
            raise UsageError(f"batch size and local steps must be positive, got {self.batch_size}, {self.local_steps}")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted peak RSS of the training process, by part (bytes)."""

    micro_batch: int
    runtime: float
    model: float  # fixed weights, scores, shift, gradients, optimizer state
    saved_fixed: float  # masked weights kept for backward
    activations: float  # per-sample tensors kept for backward × micro-batch
    working: float  # backward working set and top-k selection
    data: float  # uint8 dataset pages touched + one float input batch
    runtime_note: str
    evaluation: float = 0.0  # working set of one evaluation chunk (no gradients)
    eval_batch: int = 0  # samples per evaluation chunk

    @property
    def step(self) -> float:
        """Counted bytes a training step adds on top of the model and data."""
        return self.saved_fixed + self.activations + self.working

    @property
    def total(self) -> float:
        counted = self.model + self.data + max(self.step, self.evaluation)
        return self.runtime + counted * _ALLOCATOR_SLACK

    def to_dict(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "runtime": self.runtime, "model": self.model,
                "saved_fixed": self.saved_fixed, "activations": self.activations, "working": self.working,
                "data": self.data, "evaluation": self.evaluation, "eval_batch": self.eval_batch,
                "total": self.total, "runtime_note": self.runtime_note}


def predict_memory(trace: ModelTrace, setup: TrainingSetup, micro_batch: int, arch: str) -> MemoryBreakdown:
    """Predicted peak RSS (bytes) of training at ``micro_batch``, evaluation in chunks of the same size."""
    if setup.runtime_base is not None:
        runtime, note = float(setup.runtime_base), setup.runtime_note or "measured in this process"
        resident = 0  # labels and in-RAM images are part of the measured base
    else:
        runtime, note = runtime_base_bytes(setup.arch or arch)
        images = 0 if setup.mapped else (setup.train_samples + setup.test_samples) * setup.sample_bytes
        resident = images + (setup.train_samples + setup.test_samples) * 8  # int64 labels
    n = trace.trainable_dense if setup.dense else trace.masked_weights
    per_weight = (3 * 4 if setup.dense else BYTES_PER_MASKED_WEIGHT) + (4 if setup.momentum else 0)
    model = float(n * per_weight)
    working = float(2 * trace.max_activation_elems * 4 * micro_batch + 3 * trace.max_layer_weights * 4)
    batch_bytes = trace.input_elems * (4 + 1)  # a float32 sample and its uint8 row
    data = float(resident + micro_batch * batch_bytes)
    # evaluation (no gradients): the bool masks pinned for every layer, one layer's w ⊙ m, and per
    # sample of the chunk its input and the two largest activations alive at once
    evaluation = float(trace.masked_weights + 4 * trace.max_layer_weights
                       + micro_batch * (2 * trace.max_activation_elems * 4 + batch_bytes))
    return MemoryBreakdown(
        micro_batch=micro_batch, runtime=runtime, model=model, saved_fixed=trace.saved_fixed_bytes,
        activations=trace.saved_per_sample_bytes * micro_batch, working=working, data=data, runtime_note=note,
        evaluation=evaluation, eval_batch=micro_batch,
    )


def preset_setup(input_shape: tuple[int, int, int], preset: str = "default", algorithm: str = "local",
                 train_samples: int = 60000, test_samples: int = 10000, mapped: bool = True) -> TrainingSetup:
    """The :class:`TrainingSetup` of an algorithm preset (batch, local steps, momentum) on a dataset's sizes."""
    from dslth_edge.learn.algorithm import get_preset

    algo = get_preset(preset, algorithm)
    return TrainingSetup(batch_size=algo.batch_size, local_steps=algo.local_steps, momentum=algo.momentum > 0,
                         dense=algo.is_dense, train_samples=train_samples, test_samples=test_samples,
                         sample_bytes=math.prod(input_shape), mapped=mapped)


def accumulation_chunks(batch: int, micro_batch: int) -> int:
    """Micro-batches one step of ``batch`` is split into."""
    return max(1, math.ceil(batch / max(1, micro_batch)))


@dataclass(frozen=True)
class TrainingPlan:
    """The training side of a plan: micro-batch, accumulation, memory and time against budgets."""

    profile: str
    model: str
    fits: bool  # memory fits at some micro-batch
    batch_size: int
    micro_batch: int  # 0 when nothing fits
    accumulation: int  # micro-batches per step
    local_steps: int
    memory: MemoryBreakdown
    ram_budget: float
    ram_rule: str
    time_per_round_s: float
    round_period_s: float
    macs_per_round: float
    checks: tuple[Check, ...]
    notes: tuple[str, ...]
    batch_norm: bool

    @property
    def predicted_ram(self) -> float:
        return self.memory.total

    def explain(self) -> str:
        """One line: micro-batch, memory and time against their budgets."""
        if not self.fits:
            return (f"training does not fit: even micro-batch 1 needs {format_quantity(self.memory.total, 'B')} "
                    f"against the training RAM budget {format_quantity(self.ram_budget, 'B', budget=True)}")
        acc = f" × {self.accumulation} accumulated" if self.accumulation > 1 else ""
        return (f"training: micro-batch {self.micro_batch}{acc} (batch {self.batch_size}); "
                f"{format_quantity(self.memory.total, 'B')} of {format_quantity(self.ram_budget, 'B', budget=True)} "
                f"training RAM; {self.time_per_round_s:.3g} s of the {self.round_period_s:g} s round period")

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "model": self.model, "fits": self.fits, "batch_size": self.batch_size,
            "micro_batch": self.micro_batch, "accumulation": self.accumulation, "local_steps": self.local_steps,
            "memory": self.memory.to_dict(), "ram_budget": self.ram_budget, "ram_rule": self.ram_rule,
            "time_per_round_s": self.time_per_round_s, "round_period_s": self.round_period_s,
            "macs_per_round": self.macs_per_round, "batch_norm": self.batch_norm,
            "checks": [{"name": c.name, "unit": c.unit, "predicted": c.predicted, "budget": c.budget, "ok": c.ok,
                        "usage": c.usage} for c in self.checks],
            "notes": list(self.notes), "explanation": self.explain(),
        }


def node_training_plan(model: str, input_shape: tuple[int, int, int], num_classes: int, profile: Profile,
                       algo: Any, train_samples: int, test_samples: int, mapped: bool = True,
                       runtime_base: tuple[float, str] | None = None) -> TrainingPlan:
    """The training plan of one node (micro-batch, memory, time) for its algorithm config and data.

    ``algo`` is a :class:`dslth_edge.learn.algorithm.AlgorithmConfig` (read for its batch,
    local steps, momentum and whether it trains dense weights). ``runtime_base``: (bytes,
    note) measured in this process (:func:`dslth_edge.device.memory_guard.measure_runtime_base`);
    None: the per-architecture figure.
    """
    setup = node_training_setup(input_shape, algo, train_samples, test_samples, mapped, runtime_base)
    return plan_training(model, input_shape, num_classes, profile, setup)


def node_training_setup(input_shape: tuple[int, int, int], algo: Any, train_samples: int, test_samples: int,
                        mapped: bool = True, runtime_base: tuple[float, str] | None = None) -> TrainingSetup:
    """The :class:`TrainingSetup` :func:`node_training_plan` plans with (a node's memory guard re-plans with it)."""
    base, note = runtime_base if runtime_base is not None else (None, "")
    return TrainingSetup(batch_size=algo.batch_size, local_steps=algo.local_steps, momentum=algo.momentum > 0,
                         dense=algo.is_dense, train_samples=train_samples, test_samples=test_samples,
                         sample_bytes=math.prod(input_shape), mapped=mapped, runtime_base=base, runtime_note=note)


def device_micro_batch(training: TrainingPlan, requested: int) -> int:
    """The micro-batch a node trains with: ``requested`` when given (> 0); else the plan's when a
    whole batch does not fit the device's training RAM; else 0 (whole batches).

    One rule for every driver (``train``, ``train --fleet``, ``fleet run``, ``simulate``), so a
    node computes the same steps whichever of them runs it. When nothing fits, the smallest
    micro-batch (1) is used and the training report says the budget is exceeded.
    """
    if requested > 0 or training.accumulation == 1:
        return requested
    return max(1, training.micro_batch)


def plan_training(
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    profile: Profile,
    setup: TrainingSetup | None = None,
    frame_bytes: float = 0.0,
) -> TrainingPlan:
    """The largest micro-batch (≤ the batch) whose predicted peak RSS fits the training budget,
    and the training time per round (plus the uplink of a ``frame_bytes`` mask frame) against
    the round period."""
    setup = setup or TrainingSetup(sample_bytes=math.prod(input_shape))
    trace = trace_model(model_name, tuple(input_shape), num_classes)
    budget = profile.training_ram_budget_bytes
    arch = profile.cpu.arch
    notes: list[str] = []
    if not profile.can_train:
        notes.append(f"{profile.name} cannot train (can_train = false): the figures are for a gateway of its kind")
    micro = 0
    for m in range(setup.batch_size, 0, -1):
        if predict_memory(trace, setup, m, arch).total <= budget:
            micro = m
            break
    fits = micro > 0
    mem = predict_memory(trace, setup, micro if fits else 1, arch)
    chunks = accumulation_chunks(setup.batch_size, micro) if fits else 0
    # equal-sized chunks: the smallest micro-batch that still needs only `chunks` passes
    if fits:
        micro = math.ceil(setup.batch_size / chunks)
        mem = predict_memory(trace, setup, micro, arch)
    notes.append(f"runtime base {format_quantity(mem.runtime, 'B')}: {mem.runtime_note}")
    notes.append(f"training RAM budget: {profile.training_ram_rule}")
    if not fits:
        notes.append(f"nothing fits the training RAM budget ({format_quantity(budget, 'B', budget=True)}): "
                     f"micro-batch 1 needs {format_quantity(mem.total, 'B')}")
    elif chunks > 1:
        notes.append(f"gradients of {chunks} micro-batches of {micro} are accumulated into each step of "
                     f"{setup.batch_size}" + (" (batch norm sees each micro-batch's own statistics)"
                                               if trace.batch_norm else " (equal to the full batch up to float rounding)"))

    macs_per_step = training_macs_per_sample_from(trace) * setup.batch_size
    macs_round = float(macs_per_step * setup.local_steps)
    # the one latency model: the profile's calibrated training fit, else its cited fp32 rate
    rp = predict_round(profile, forward_macs=trace.forward_macs, layers=trace.layers, batch=setup.batch_size,
                       chunks=max(chunks, 1), local_steps=setup.local_steps, frame_bytes=frame_bytes)
    t_round = rp.seconds
    notes.append(f"time per round from the profile's {'calibration (torch training steps measured on the device)' if rp.basis == 'measured' else 'cited [compute] fp32 rate'}"
                 + (f", {rp.uplink_s:.3g} s of it the uplink of a {rp.frame_bytes:.0f} B frame" if rp.uplink_s else ""))
    period = profile.network.round_period_s
    if t_round > period:
        per_step = t_round / setup.local_steps
        if setup.local_steps > 1 and per_step <= period:
            notes.append(f"training time: lower local steps to {int(period // per_step)} to fit the "
                         f"{period:g} s round period")
        else:
            per_sample = per_step / setup.batch_size
            b = int(period // per_sample) if per_sample > 0 else 0
            if b >= 1:
                notes.append(f"training time: one step of {setup.batch_size} takes {per_step:.3g} s; lower the batch "
                             f"to {b}, or the round period must grow to {math.ceil(t_round):d} s")
            else:
                notes.append(f"training time: the round period must grow to {math.ceil(t_round):d} s")
    checks = (
        Check("training-ram", "B", mem.total, budget, fits),
        Check("training-time", "ms", t_round * 1e3, period * 1e3, t_round <= period),
    )
    return TrainingPlan(
        profile=profile.name, model=model_name, fits=fits, batch_size=setup.batch_size, micro_batch=micro,
        accumulation=chunks, local_steps=setup.local_steps, memory=mem, ram_budget=budget,
        ram_rule=profile.training_ram_rule, time_per_round_s=t_round, round_period_s=period,
        macs_per_round=macs_round, checks=checks, notes=tuple(notes), batch_norm=trace.batch_norm,
    )


def training_macs_per_sample_from(trace: ModelTrace) -> int:
    """3 × the traced forward MACs (see :func:`training_macs_per_sample`)."""
    return 3 * trace.forward_macs


def attach_training(
    result: Plan,
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    profile: Profile,
    setup: TrainingSetup | None = None,
) -> Plan:
    """``result`` with its ``training`` field filled (the planner leaves it None)."""
    from dataclasses import replace

    frame = result.check("traffic").value or 0.0  # the mask frame the node publishes per round
    return replace(result, training=plan_training(model_name, input_shape, num_classes, profile, setup, frame))
