"""The node: one device's round loop, the same code in the simulator and in the fleet.

A round is split into two halves so that a lock-step simulator can run many nodes in
one thread (all ``begin_round`` calls, then all ``finish_round`` calls) while a device
runs them back to back (``run_round``). Both halves only read the node's own state and
the payloads its transport delivers, so every driver computes the same masks.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dslth_edge import __version__
from dslth_edge.learn.algorithm import AlgorithmConfig, aggregation_shift, channel_cap, neighbour_average, personalized_finetune_
from dslth_edge.learn.dense import dense_fingerprint, flat_parameters, set_flat_parameters
from dslth_edge.data import Dataset, NodeSplit, batch_indices
from dslth_edge.device.footprint import peak_rss_bytes
from dslth_edge.errors import CheckpointError
from dslth_edge.fleet.exchange import Exchange, ReceivedMasks
from dslth_edge.learn.masking import (MaskedLayer, configure_structure, drop_channels_, group_lasso, keep_count, load_weights,
                                      masked_layers, weights_fingerprint)
from dslth_edge.learn.models import ModelSpec, build_model
from dslth_edge.learn.sgd import SGD
from dslth_edge.runs.rundir import NodePaths, load_checkpoint, save_checkpoint, save_mask, truncate_metrics, write_json
from dslth_edge.transport.base import Transport

__all__ = ["NodeConfig", "RoundResult", "Node", "derive_seed", "STEP_SLOTS"]


#: Training passes and evaluations that run at once in one process: one per CPU core. A
#: ``fleet run`` worker hosts its nodes in threads; more passes at a time than cores only
#: multiply the activation memory (each holds a batch's worth), never the speed.
STEP_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


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
    """One participant: fixed weights, its scores, its data, its neighbours' masks."""

    def __init__(
        self,
        config: NodeConfig,
        dataset: Dataset,
        split: NodeSplit,
        *,
        neighbours: tuple[int, ...] = (),
        transport: Transport | None = None,
        run_dir: str | Path | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        self.config = config
        self.algo = config.algorithm
        self.data = dataset
        self.split = split
        self.neighbours = tuple(neighbours)
        self.transport = transport
        self.paths = NodePaths.of(run_dir, config.node_id) if run_dir is not None else None
        # the fixed weights come from the fleet's weight seed; the scores from this node's own
        # dense baselines (dpsgd, dpsgd-ft): the same architecture with trainable weights
        self.dense = self.algo.is_dense
        self.model = build_model(replace(config.model, score_seed=derive_seed(config.seed, config.node_id), dense=self.dense))
        if config.weights_file and not self.dense:
            load_weights(self.model, config.weights_file)
        self.fingerprint = dense_fingerprint(self.model) if self.dense else weights_fingerprint(self.model)
        self.layers: list[MaskedLayer] = [layer for _, layer in masked_layers(self.model)]
        # λ and τ: the given ones, else (nodes whose plan removes channels) the preset's structured ones
        # (the aligned route drops channels in the fleet's shared order: the progressive route's λ and
        # τ, which choose a node's own channels, apply to it only when given explicitly)
        structured = config.channels is not None and config.channel_order == "score"
        self._group_lasso = self.algo.group_lasso or (self.algo.structured_group_lasso if structured else 0.0)
        self._drop_threshold = self.algo.drop_threshold or (self.algo.structured_drop_threshold if structured else 0.0)
        if not self.dense:  # the classifier is never structured; planned channel counts, relative τ
            configure_structure(self.model, config.channels, self._drop_threshold, config.channel_order)
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr, momentum = (self.algo.dense_lr, self.algo.dense_momentum) if self.dense else (self.algo.lr, self.algo.momentum)
        # torch.optim.SGD's update and state_dict without its ~70 MiB torch._dynamo import
        self.optimizer = SGD(params, lr=lr, momentum=momentum, weight_decay=self.algo.weight_decay)
        self.num_params = sum(p.numel() for p in params) if self.dense else sum(layer.weight.numel() for layer in self.layers)
        self.exchange = exchange
        #: neighbour -> Metropolis-Hastings weight for dpsgd averaging (set by make_node; None: uniform)
        self.mixing_weights: dict[int, float] | None = None
        # optional adaptive round deadline (fleet over MQTT): .next_s() and .observe(wait_s, complete)
        self.deadline_policy: Any = None
        self.round = 0
        self.mbar: list[torch.Tensor] | None = None  # m̄_i per layer, float in [0, 1]
        self.peer_masks: dict[int, list[torch.Tensor]] = {}  # latest mask of each neighbour
        self.last_heard: dict[int, int] = {}  # round of each neighbour's latest mask
        self._grads: list[torch.Tensor] | None = None
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
        """Local update (3) from y of (1), then publish m_i (2)."""
        self._t_begin = time.perf_counter()
        self._set_shifts()
        self.model.train()
        grads: list[torch.Tensor] | None = None
        for s in range(self.algo.local_steps):
            step = self.round * self.algo.local_steps + s
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._backward_on(batch_indices(self.split.train_indices, self.algo.batch_size, step, self._batch_seed))
            # g_i, reused by (5); no copy needed: nothing writes to a .grad in place (the optimizer
            # reads it, zero_grad(set_to_none=True) lets the next backward allocate a fresh one)
            grads = [layer.scores.grad.detach() for layer in self.layers]
            self.optimizer.step()
            self._loss = loss
        self._grads = grads
        self._set_shifts()  # m_i is TopK of y from the updated scores
        self._sent = 0
        if self.transport is not None and self.exchange is not None and self._communicating():
            state = [flat_parameters(self.model)] if self.dense else [layer.current_mask() for layer in self.layers]
            self._sent = self.transport.publish(self.exchange.encode(state, self.round))
        self._t_compute = time.perf_counter() - self._t_begin

    def finish_round(self) -> RoundResult:
        """Collect neighbours' masks (4), fine-tune (5), evaluate, checkpoint."""
        received = self._collect()
        if self.dense:
            self._dense_average(received)
        else:
            self._update_mbar()
        t0 = time.perf_counter()
        if self.algo.name == "mce-pl" and self.mbar is not None and self._grads is not None:
            if self.algo.ft_recompute:
                self._grads = self._fresh_grads()
            for layer, g, mb in zip(self.layers, self._grads, self.mbar):
                personalized_finetune_(layer.scores, g, mb, self.algo.ft_lr)
        if not self.dense:
            self._drop_channels(self.round + 1)
        self._t_compute += time.perf_counter() - t0
        k = self.round
        self.round += 1
        acc = None
        last = self.round >= self.config.rounds
        if last or (self.config.eval_every > 0 and self.round % self.config.eval_every == 0):
            acc = self.evaluate(None if last else self._eval_idx)[0]
        n_params = self.num_params
        kept = n_params if self.dense else self._kept_count()
        # the authors' metric: 1 bit per weight (dense: 32) to every neighbour
        ref_bytes = 4 * n_params if self.dense else math.ceil(n_params / 8)
        result = RoundResult(
            round=k, loss=self._loss, acc=acc, bytes_sent=self._sent, bytes_received=received.bytes,
            bytes_reference=ref_bytes * len(self.neighbours) if self._communicating(k) else 0,
            neighbours_heard=len(received.frames), stale=len(self.stale_neighbours()), rejected=received.rejected,
            keep_actual=kept / n_params, t_compute_s=self._t_compute, t_round_s=time.perf_counter() - self._t_begin,
            duplicates=received.duplicates, peak_rss_bytes=peak_rss_bytes(),
        )
        if self.paths is not None:
            with open(self.paths.metrics, "a") as fh:
                fh.write(result.to_json() + "\n")
            if last or self.round % self.config.checkpoint_every == 0:
                self.save()
            if last and not self.dense:
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

    # ---------------------------------------------------------------- aggregation
    def _set_shifts(self) -> None:
        for i, layer in enumerate(self.layers):
            if self.mbar is None or not self.algo.communicates:
                layer.score_shift.zero_()
            else:
                aggregation_shift(layer.scores, self.mbar[i], self.algo.beta, out=layer.score_shift)

    def _communicating(self, round: int | None = None) -> bool:  # noqa: A002
        """Whether ``round`` (default: the current one) exchanges anything.

        dpsgd-ft stops gossiping for its last ``ft_rounds`` rounds: local fine-tuning.
        """
        k = self.round if round is None else round
        if self.algo.name == "dpsgd-ft" and k >= self.config.rounds - self.algo.ft_rounds:
            return False
        return self.algo.communicates

    def _drop_channels(self, rounds_done: int) -> None:
        """Progressive channel drop after a round: relative threshold, then the schedule's cap."""
        for layer in self.layers:
            if layer.target_channels is None and layer.drop_threshold <= 0:
                continue
            full = int(layer.weight.shape[0])
            cap = None if layer.target_channels is None else channel_cap(
                full, layer.target_channels, rounds_done, self.config.rounds, self.algo.drop_until)
            drop_channels_(layer, cap)

    def _kept_count(self) -> int:
        """Weights the current masks keep; by arithmetic unless channels may be dropped (saves a top-k per layer)."""
        if (self._drop_threshold > 0 or self.config.channels is not None
                or any(layer.mask_override is not None for layer in self.layers)):
            return sum(int(m.sum()) for m in self.current_masks())
        total = 0
        for layer in self.layers:
            n, c = layer.weight.numel(), layer.weight.shape[0]
            total += keep_count(n, layer.keep) if layer.granularity == "unstructured" else keep_count(c, layer.keep) * (n // c)
        return total

    def _dense_average(self, received: ReceivedMasks) -> None:
        """dpsgd: x_i ← W_ii' x_i + Σ_{j heard} W_ij x_j with Metropolis-Hastings weights
        W_ij = 1/(1 + max(d_i, d_j)) (``self.mixing_weights``), the weight of neighbours not
        heard staying with x_i; or, with ``mixing="uniform"``, x_i ← (x_i + Σ_j x_j) / (1 + |heard|)."""
        if not received.frames:
            return
        x = flat_parameters(self.model)  # (P,)
        w = self.mixing_weights
        if self.algo.mixing == "uniform" or w is None:
            acc = x.clone()
            for sender in sorted(received.frames):  # fixed order: bit-identical sums
                acc += received.frames[sender][0]
            set_flat_parameters(self.model, acc / (1 + len(received.frames)))
            return
        heard = sorted(received.frames)
        acc = x * (1.0 - sum(w[j] for j in heard))
        for sender in heard:
            acc += w[sender] * received.frames[sender][0]
        set_flat_parameters(self.model, acc)

    def _collect(self) -> ReceivedMasks:
        if self.transport is None or self.exchange is None or not self._communicating() or not self.neighbours:
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
        for sender, masks in received.frames.items():
            if not self.dense:  # dense weights are used once, not kept
                self.peer_masks[sender] = masks
            self.last_heard[sender] = self.round
        # a newer mask out of step with this round is still that neighbour's latest, and
        # hearing it at all means it is back (a returning neighbour rejoins m̄)
        for sender, masks in getattr(received, "latest", {}).items():
            if sender not in received.frames and not self.dense:
                self.peer_masks[sender] = masks
                self.last_heard[sender] = self.round
        return received

    def _unreachable(self) -> set[int]:
        """Neighbours the transport knows are gone, or the exchange knows are out of step."""
        gone = getattr(self.transport, "unavailable", None)
        out_of_step = getattr(self.exchange, "out_of_step", None)
        return (set(gone()) if gone else set()) | (set(out_of_step(self.round)) if out_of_step else set())

    def stale_neighbours(self) -> list[int]:
        """Neighbours not heard from in the last ``stale_after`` rounds (never heard: after that many rounds)."""
        return [j for j in self.neighbours if self.round - self.last_heard.get(j, -1) > self.config.stale_after]

    def _update_mbar(self) -> None:
        stale = set(self.stale_neighbours())
        live = [self.peer_masks[j] for j in self.neighbours if j in self.peer_masks and j not in stale]
        if not live:
            self.mbar = None
            return
        self.mbar = [neighbour_average([m[i] for m in live]) for i in range(len(self.layers))]  # type: ignore[misc]
        if self.algo.self_weight > 0:  # damping: the node's own published mask joins m̄ with this weight
            a = self.algo.self_weight
            self.mbar = [(1 - a) * mb + a * own.to(torch.float32) for mb, own in zip(self.mbar, self.current_masks())]

    # ---------------------------------------------------------------- loss and evaluation
    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.data.train_batch(idx)), torch.from_numpy(self.data.y_train[idx])

    def _loss_on(self, idx: np.ndarray) -> torch.Tensor:
        x, y = self._batch(idx)
        loss = F.cross_entropy(self.model(x), y)
        if self._group_lasso > 0:
            loss = loss + self._group_lasso * group_lasso(self.model)
        return loss

    def _backward_on(self, idx: np.ndarray) -> float:
        """Accumulate the gradient of the batch loss into ``.grad``; returns the loss.

        With ``algorithm.micro_batch`` the batch runs in ``ceil(B / micro_batch)`` near-equal
        chunks, each contributing ``sum of its losses / B`` (the regulariser once), so the
        accumulated gradient is the full batch's up to float summation order (batch-norm
        layers see each chunk's own statistics). Peak activation memory scales with the chunk.
        """
        micro = self.algo.micro_batch
        with STEP_SLOTS:
            if micro <= 0 or micro >= len(idx):
                loss = self._loss_on(idx)
                loss.backward()
                return float(loss.detach())
            total = 0.0
            for j, part in enumerate(np.array_split(idx, math.ceil(len(idx) / micro))):
                x, y = self._batch(part)
                loss = F.cross_entropy(self.model(x), y, reduction="sum") / len(idx)
                if j == 0 and self._group_lasso > 0:
                    loss = loss + self._group_lasso * group_lasso(self.model)
                loss.backward()
                total += float(loss.detach())
            return total

    def _fresh_grads(self) -> list[torch.Tensor]:
        step = self.round * self.algo.local_steps + self.algo.local_steps - 1
        loss = self._loss_on(batch_indices(self.split.train_indices, self.algo.batch_size, step, self._batch_seed))
        grads = torch.autograd.grad(loss, [layer.scores for layer in self.layers])
        return [g.detach() for g in grads]

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
            with STEP_SLOTS:
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
        """Everything needed to continue exactly (no fixed weights: they come from the seed)."""
        fixed = {f"{name}.weight" for name, _ in masked_layers(self.model)}
        model_state = {k: v for k, v in self.model.state_dict().items() if k not in fixed}
        return {
            "round": self.round,
            "fingerprint": self.fingerprint.hex(),
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "mbar": self.mbar,
            "peer_masks": {str(j): m for j, m in self.peer_masks.items()},
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
        self.round = int(st["round"])
        self.mbar = st["mbar"]
        self.peer_masks = {int(j): m for j, m in st["peer_masks"].items()}
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

