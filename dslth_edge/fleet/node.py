"""The node: one device's round loop, the same code in the simulator and in the fleet.

A round is split into two halves so that a lock-step simulator can run many nodes in
one thread (all ``begin_round`` calls, then all ``finish_round`` calls) while a device
runs them back to back (``run_round``). Both halves only read the node's own state and
the payloads its transport delivers, so every driver computes the same masks.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dslth_edge import __version__
from dslth_edge.data import Dataset, NodeSplit, batch_indices
from dslth_edge.device.footprint import peak_rss_bytes
from dslth_edge.errors import CheckpointError
from dslth_edge.fleet.deadline import DeadlinePolicy
from dslth_edge.fleet.exchange import PayloadExchange, ReceivedMasks
from dslth_edge.learn.algorithm import AlgorithmConfig, reference_bytes
from dslth_edge.learn.algorithms.base import Algorithm, AlgorithmSetup
from dslth_edge.learn.algorithms.registry import build_algorithm
from dslth_edge.learn.masking import MaskedLayer, masked_layers
from dslth_edge.learn.models import ModelSpec
from dslth_edge.runs.rundir import NodePaths, load_checkpoint, save_checkpoint, save_mask, truncate_metrics, write_json
from dslth_edge.transport.base import Transport

__all__ = ["NodeConfig", "RoundResult", "Node", "StepSlots", "algorithm_setup", "derive_seed", "step_slots"]


class _SlotTime(threading.local):
    """One thread's time in a slot: when it entered, and how long since its node's last round."""

    def __init__(self) -> None:
        self.entered = 0.0
        self.busy = 0.0


class StepSlots:
    """Slots for the training passes, evaluations and builds of the nodes one process hosts.

    The driver that hosts several nodes in threads (a ``fleet run`` worker) makes one and
    gives it to each of its nodes: more passes at a time than cores only multiply the
    activation memory (each holds a batch's worth), never the speed. It also times them:
    :meth:`cycle_s` is how long the process takes to give every node it hosts one round's
    passes, so how late a neighbour hosted in a process like it can be through no fault
    (its turn may come last). Thread-safe; a node's thread is the node.
    """

    def __init__(self, count: int | None = None, hosted: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.count = max(1, count or os.cpu_count() or 1)
        self.clock = clock
        self.hosted = max(1, hosted)
        self._sem = threading.BoundedSemaphore(self.count)
        self._mine = _SlotTime()  # this thread's (node's) time in a slot since its last round
        self._lock = threading.Lock()
        self._rounds: deque[float] = deque(maxlen=self.hosted)  # recent nodes' per-round time in a slot

    def __enter__(self) -> StepSlots:
        self._sem.acquire()
        self._mine.entered = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mine.busy += self.clock() - self._mine.entered
        self._sem.release()

    def round_done(self) -> None:
        """The calling node finished a round: its time in a slot since the last one is one sample."""
        busy, self._mine.busy = self._mine.busy, 0.0
        with self._lock:
            self._rounds.append(busy)

    def cycle_s(self) -> float:
        """Seconds for one round of every hosted node (0 before any round): their mean time in a
        slot per round, times the nodes per slot."""
        with self._lock:
            if not self._rounds:
                return 0.0
            return sum(self._rounds) / len(self._rounds) * self.hosted / self.count


def step_slots(count: int | None = None, hosted: int = 1) -> StepSlots:
    """:class:`StepSlots` for ``hosted`` nodes, ``count`` passes at a time (default: one per core)."""
    return StepSlots(count, hosted)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several integers, stable across platforms (SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class NodeConfig:
    """Everything that determines one node's run (written to config.json)."""

    node_id: int
    model: ModelSpec
    algorithm: AlgorithmConfig
    rounds: int
    fleet: str = "solo"
    seed: int = 0  # the node's own seed: scores init and batch order derive from it
    profile: str | None = None
    eval_every: int = 25
    eval_samples: int = 1000  # periodic evaluation on a fixed subset; the final one uses all
    checkpoint_every: int = 25
    round_deadline_s: float = 30.0
    stale_after: int = 3  # a neighbour silent this many rounds leaves m̄ until it returns
    weights_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: dataset, partition, plan …
    channels: tuple[int, ...] | None = None  # per masked layer: output channels the plan ends with (None: all)
    # which live channels the drop schedule removes first: "score" (progressive route: the
    # node's sparsest) or "index" (aligned route: the order every node shares); NodePlan.channel_order
    channel_order: str = "score"


def algorithm_setup(config: NodeConfig, mixing_weights: dict[int, float] | None = None) -> AlgorithmSetup:
    """What node ``config``'s algorithm is told: its model (with the node's score seed), rounds and plan."""
    return AlgorithmSetup(spec=replace(config.model, score_seed=derive_seed(config.seed, config.node_id)),
                          rounds=config.rounds, seed=config.seed, weights_file=config.weights_file,
                          channels=config.channels,
                          channel_order=config.channel_order, mixing_weights=mixing_weights)


@dataclass
class RoundResult:
    """One metrics line."""

    round: int
    loss: float
    acc: float | None
    bytes_sent: int
    bytes_received: int
    bytes_reference: int  # the authors' metric: 1 bit per weight × neighbours
    neighbours_heard: int
    stale: int
    rejected: int
    keep_actual: float
    t_compute_s: float
    t_round_s: float
    duplicates: int = 0  # redelivered/replayed/late frames ignored (never applied twice)
    peak_rss_bytes: int | None = None  # this process's peak resident set so far (VmHWM)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Node:
    """One participant: its algorithm (model, scores or weights, merge rules), its data, its neighbours.

    Constructed complete: the exchange (mask frames or dense weights, a
    :class:`~dslth_edge.fleet.exchange.PayloadExchange`), the deadline policy, the
    transport and the step slots come in here (:func:`dslth_edge.fleet.plan.make_node`
    builds a fleet's), and the algorithm is built from ``config.algorithm`` unless given.
    """

    def __init__(
        self,
        config: NodeConfig,
        dataset: Dataset,
        split: NodeSplit,
        *,
        neighbours: tuple[int, ...] = (),
        transport: Transport | None = None,
        run_dir: str | Path | None = None,
        exchange: PayloadExchange | None = None,
        algorithm: Algorithm | None = None,
        deadline_policy: DeadlinePolicy | None = None,
        step_slots: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.config = config
        self.algo = config.algorithm
        self.data = dataset
        self.split = split
        self.neighbours = tuple(neighbours)
        self.transport = transport
        self.paths = NodePaths.of(run_dir, config.node_id) if run_dir is not None else None
        #: what is learned, sent and merged (the fixed weights come from the fleet's weight
        #: seed, the scores from this node's own seed)
        self.algorithm = algorithm if algorithm is not None else build_algorithm(config.algorithm, algorithm_setup(config))
        self.model = self.algorithm.model
        self.fingerprint = self.algorithm.fingerprint
        self.layers: list[MaskedLayer] = self.algorithm.layers
        self.num_params = self.algorithm.num_params
        self.exchange = exchange
        #: the round deadline on a real network (None: ``config.round_deadline_s``)
        self.deadline_policy = deadline_policy
        #: training passes and evaluations that may run at once in this process (the driver's; None: no bound)
        self.step_slots: AbstractContextManager[Any] = step_slots if step_slots is not None else nullcontext()
        self.round = 0
        self.last_heard: dict[int, int] = {}  # round of each neighbour's latest payload
        self._loss = math.nan
        self._t_compute = 0.0
        self._t_begin = 0.0
        self._sent = 0
        self._batch_seed = derive_seed(config.seed, config.node_id, 1)
        # a seeded subset for periodic evaluation: splits are grouped by class, a prefix is not
        pick = np.random.Generator(np.random.PCG64(derive_seed(config.seed, config.node_id, 2)))
        n_eval = min(config.eval_samples, len(split.test_indices))
        self._eval_idx = np.sort(pick.choice(split.test_indices, size=n_eval, replace=False)) if n_eval else split.test_indices

    # ---------------------------------------------------------------- the round loop
    def begin_round(self) -> None:
        """The algorithm's local step, then publish what it sends."""
        self._t_begin = time.perf_counter()
        self._loss = self.algorithm.local_step(self.round, self._backward_at)
        self._sent = 0
        if self.transport is not None and self.exchange is not None and self.algorithm.communicates(self.round):
            self._sent = self.transport.publish(self.exchange.encode(self.algorithm.publish(), self.round))
        self._t_compute = time.perf_counter() - self._t_begin

    def finish_round(self) -> RoundResult:
        """Collect the neighbours' payloads, merge them, the personal step, evaluate, checkpoint."""
        received = self._collect()
        stale = set(self.stale_neighbours())
        late = received.latest if self.algorithm.uses_latest else {}
        self.algorithm.merge(received.frames, late, [j for j in self.neighbours if j not in stale])
        t0 = time.perf_counter()
        self.algorithm.personal_step(self.round, self._loss_at)
        self._t_compute += time.perf_counter() - t0
        k = self.round
        self.round += 1
        acc = None
        last = self.round >= self.config.rounds
        if last or (self.config.eval_every > 0 and self.round % self.config.eval_every == 0):
            acc = self.evaluate(None if last else self._eval_idx)[0]
        n_params = self.num_params
        result = RoundResult(
            round=k, loss=self._loss, acc=acc, bytes_sent=self._sent, bytes_received=received.bytes,
            bytes_reference=reference_bytes(n_params, len(self.neighbours), self.algorithm.bits_per_param)
            if self.algorithm.communicates(k) else 0,
            neighbours_heard=len(received.frames), stale=len(self.stale_neighbours()), rejected=received.rejected,
            keep_actual=self.algorithm.kept_count() / n_params, t_compute_s=self._t_compute,
            t_round_s=time.perf_counter() - self._t_begin, duplicates=received.duplicates, peak_rss_bytes=peak_rss_bytes(),
        )
        if isinstance(self.step_slots, StepSlots):
            self.step_slots.round_done()
        if self.paths is not None:
            with open(self.paths.metrics, "a") as fh:
                fh.write(result.to_json() + "\n")
            if last or self.round % self.config.checkpoint_every == 0:
                self.save()
            if last and self.algorithm.has_mask:
                self.save_final_mask(acc)
        return result

    def run_round(self) -> RoundResult:
        """Both halves back to back: a device's round."""
        self.begin_round()
        return self.finish_round()

    def run(self, on_round: Callable[[RoundResult], None] | None = None) -> None:
        """Run to ``config.rounds``; on Ctrl-C save a checkpoint first, then re-raise."""
        self.start()
        try:
            while self.round < self.config.rounds:
                result = self.run_round()
                if on_round is not None:
                    on_round(result)
        except KeyboardInterrupt:
            if self.paths is not None:
                self.save()
            raise

    # ---------------------------------------------------------------- the neighbours
    def _collect(self) -> ReceivedMasks:
        if (self.transport is None or self.exchange is None or not self.algorithm.communicates(self.round)
                or not self.neighbours):
            return ReceivedMasks()
        policy = self.deadline_policy
        t0 = time.monotonic()
        deadline = t0 + (policy.next_s() if policy is not None else self.config.round_deadline_s)
        # wait only for neighbours that can still send this round's frame: not stale, not
        # known to be offline (last will) and not out of step (e.g. ahead after our restart)
        live = set(self.neighbours) - set(self.stale_neighbours()) - self._unreachable()
        received = self.exchange.collect(self.transport, self.round, live, deadline)
        if policy is not None:
            policy.observe(time.monotonic() - t0, complete=live <= received.frames.keys())
        # a newer payload out of step with this round, when the algorithm uses it, is still
        # that neighbour's latest, and hearing it at all means it is back (it rejoins m̄)
        late = received.latest if self.algorithm.uses_latest else {}
        for sender in [*received.frames, *(j for j in late if j not in received.frames)]:
            self.last_heard[sender] = self.round
        return received

    def _unreachable(self) -> set[int]:
        """Neighbours the transport knows are gone, or the exchange knows are out of step."""
        assert self.transport is not None and self.exchange is not None
        return set(self.transport.unavailable()) | set(self.exchange.out_of_step(self.round))

    def stale_neighbours(self) -> list[int]:
        """Neighbours not heard from in the last ``stale_after`` rounds (never heard: after that many rounds)."""
        return [j for j in self.neighbours if self.round - self.last_heard.get(j, -1) > self.config.stale_after]

    # ---------------------------------------------------------------- loss and evaluation
    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.data.train_batch(idx)), torch.from_numpy(self.data.y_train[idx])

    def _loss_on(self, idx: np.ndarray) -> torch.Tensor:
        x, y = self._batch(idx)
        loss = F.cross_entropy(self.model(x), y)
        penalty = self.algorithm.penalty()
        if penalty is not None:
            loss = loss + penalty
        return loss

    def _batch_of(self, step: int) -> np.ndarray:
        """The training batch of global step ``step`` (a pure function of the node's seed and the step)."""
        return batch_indices(self.split.train_indices, self.algo.batch_size, step, self._batch_seed)

    def _loss_at(self, step: int) -> torch.Tensor:
        return self._loss_on(self._batch_of(step))

    def _backward_at(self, step: int) -> float:
        return self._backward_on(self._batch_of(step))

    def _backward_on(self, idx: np.ndarray) -> float:
        """Accumulate the gradient of the batch loss into ``.grad``; returns the loss.

        With ``algorithm.micro_batch`` the batch runs in ``ceil(B / micro_batch)`` near-equal
        chunks, each contributing ``sum of its losses / B`` (the regulariser once), so the
        accumulated gradient is the full batch's up to float summation order (batch-norm
        layers see each chunk's own statistics). Peak activation memory scales with the chunk.
        """
        micro = self.algo.micro_batch
        with self.step_slots:
            if micro <= 0 or micro >= len(idx):
                loss = self._loss_on(idx)
                loss.backward()
                return float(loss.detach())
            total = 0.0
            for j, part in enumerate(np.array_split(idx, math.ceil(len(idx) / micro))):
                x, y = self._batch(part)
                loss = F.cross_entropy(self.model(x), y, reduction="sum") / len(idx)
                penalty = self.algorithm.penalty() if j == 0 else None
                if penalty is not None:
                    loss = loss + penalty
                loss.backward()
                total += float(loss.detach())
            return total

    @torch.no_grad()
    def evaluate(self, indices: np.ndarray | None = None, batch: int | None = None) -> tuple[float, float]:
        """(accuracy, mean loss) on the node's own test split (or the given test indices).

        Runs in chunks of ``batch`` (default: the training micro-batch, else the batch), so
        evaluation never holds more activations than a training step.
        """
        batch = batch or self.algo.micro_batch or self.algo.batch_size
        idx = self.split.test_indices if indices is None else indices
        if len(idx) == 0:
            return math.nan, math.nan
        self.model.eval()
        pinned = [layer for layer in self.layers if layer.mask_override is None]
        for layer in pinned:  # the masks cannot change between chunks: select them once, not per chunk
            layer.mask_override = layer.current_mask()
        correct, total_loss = 0, 0.0
        try:
            with self.step_slots:
                for start in range(0, len(idx), batch):
                    part = idx[start : start + batch]
                    x, y = torch.from_numpy(self.data.test_batch(part)), torch.from_numpy(self.data.y_test[part])
                    out = self.model(x)
                    total_loss += float(F.cross_entropy(out, y, reduction="sum"))
                    correct += int((out.argmax(1) == y).sum())
        finally:
            for layer in pinned:
                layer.mask_override = None
        self.model.train()
        return correct / len(idx), total_loss / len(idx)

    def current_masks(self) -> list[torch.Tensor]:
        """m_i = TopK(y_i) for every layer, as published."""
        with torch.no_grad():
            return [layer.current_mask() for layer in self.layers]

    # ---------------------------------------------------------------- persistence
    def start(self, resume: bool = False) -> None:
        """Prepare the run directory (config.json), or restore from its checkpoint."""
        if self.paths is None:
            return
        self.paths.root.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore()
            return
        if self.round == 0 and not self.paths.config.exists():
            self.paths.metrics.unlink(missing_ok=True)
        write_json(self.paths.config, self.describe())

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, with versions, for config.json."""
        cfg = asdict(self.config)
        cfg["neighbours"] = list(self.neighbours)
        cfg["weights_fingerprint"] = self.fingerprint.hex()
        cfg["score_seed"] = derive_seed(self.config.seed, self.config.node_id)
        cfg["layers"] = [{"name": n, "shape": list(layer.weight.shape), "keep": layer.keep} for n, layer in masked_layers(self.model)]
        cfg["train_samples"] = int(len(self.split.train_indices))
        cfg["test_samples"] = int(len(self.split.test_indices))
        cfg["classes"] = [int(c) for c in self.split.classes]
        cfg["versions"] = {"dslth_edge": __version__, "torch": torch.__version__, "numpy": np.__version__,
                           "python": sys.version.split()[0], "platform": platform.platform()}
        return cfg

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the round, whom it heard when, and its algorithm's state."""
        return {
            "round": self.round,
            "fingerprint": self.fingerprint.hex(),
            **self.algorithm.state(),
            "last_heard": {str(j): r for j, r in self.last_heard.items()},
        }

    def save(self) -> None:
        """Atomic checkpoint of the state after the last finished round."""
        if self.paths is not None:
            save_checkpoint(self.paths.checkpoint, self.state())

    def restore(self) -> None:
        """Continue from the checkpoint in the run directory."""
        assert self.paths is not None
        self.load_state(load_checkpoint(self.paths.checkpoint), str(self.paths.checkpoint))
        truncate_metrics(self.paths.metrics, self.round)

    def load_state(self, st: dict[str, Any], source: str = "checkpoint") -> None:
        """Continue from a :meth:`state` (CheckpointError when it belongs to another model)."""
        if st.get("fingerprint") != self.fingerprint.hex():
            raise CheckpointError(
                f"{source} was made with other fixed weights "
                f"(fingerprint {str(st.get('fingerprint'))[:16]}…, this run {self.fingerprint.hex()[:16]}…)"
            )
        self.algorithm.load_state(st, source)
        self.round = int(st["round"])
        self.last_heard = {int(j): int(r) for j, r in st["last_heard"].items()}

    def save_final_mask(self, acc: float | None) -> None:
        """mask.npz: bit-packed final mask + fingerprint + provenance."""
        if self.paths is None:
            return
        names = [n for n, _ in masked_layers(self.model)]
        masks = [m.numpy() for m in self.current_masks()]
        meta = {"node": self.config.node_id, "profile": self.config.profile, "round": self.round,
                "model": asdict(self.config.model), "accuracy": acc,
                "keep": [layer.keep for layer in self.layers],
                "channels": [int(layer.channel_alive.sum()) for layer in self.layers]}
        save_mask(self.paths.mask, masks, names, self.fingerprint, meta)

