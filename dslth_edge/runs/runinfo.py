"""A finished node, loaded back from its run directory: masked model, final masks, data.

What the exporters need to know about a node lives in three files of
``runs/<id>/node-<i>/``: ``config.json`` (model spec, seeds, dataset, partition),
``checkpoint.pt`` (BatchNorm running statistics: without them eval mode differs) and
``mask.npz`` (the final masks). The fixed weights are regenerated from the seed (or
the run's weights file) and checked against the fingerprint recorded in both files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.learn.masking import load_weights, masked_layers, set_masks, weights_fingerprint
from dslth_edge.learn.models import ModelSpec, build_model
from dslth_edge.runs.guard import upgrade_model_record
from dslth_edge.runs.rundir import MaskFile, NodePaths, load_checkpoint, load_mask

if TYPE_CHECKING:  # data.py is imported lazily: loading a model must not need the datasets
    from dslth_edge.data import Dataset, NodeSplit

__all__ = ["RunInfo", "resolve_node_dir", "spec_from_dict", "load_run", "node_data", "accuracy"]


@dataclass
class RunInfo:
    """One node's final model and where it came from."""

    node_dir: Path
    node_id: int
    config: dict[str, Any]
    spec: ModelSpec
    model: nn.Module  # masked, final masks pinned, BatchNorm statistics restored, eval mode
    mask_file: MaskFile
    fingerprint: str  # hex SHA-256 of the fixed weights
    dataset: "Dataset | None" = None
    split: "NodeSplit | None" = None
    notes: list[str] = field(default_factory=list)

    @property
    def masks(self) -> list[torch.Tensor]:
        return [torch.from_numpy(m) for m in self.mask_file.masks]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.spec.input_shape)  # type: ignore[return-value]

    @property
    def profile(self) -> str | None:
        return self.config.get("profile") or self.mask_file.meta.get("profile")

    @property
    def keep(self) -> float:
        """Fraction of all fixed weights the final mask keeps."""
        total = sum(m.size for m in self.mask_file.masks)
        return float(sum(int(m.sum()) for m in self.mask_file.masks) / max(total, 1))

    @property
    def recorded_accuracy(self) -> float | None:
        """The node's final test accuracy as the run recorded it."""
        acc = self.mask_file.meta.get("accuracy")
        return None if acc is None else float(acc)

    @property
    def class_names(self) -> list[str]:
        if self.dataset is not None:
            return list(self.dataset.class_names)
        return [str(i) for i in range(self.spec.num_classes)]

    def normalisation(self) -> dict[str, list[float]]:
        """Per-channel mean and std the inputs are normalised with (x - mean) / std, pixel scale 0..1."""
        if self.dataset is None:
            return {}
        return {"mean": [float(v) for v in self.dataset.mean], "std": [float(v) for v in self.dataset.std]}

    def test_arrays(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The node's own test split (x float32 NCHW normalised, y int64).

        With ``limit``, that many samples evenly spaced through the split: splits are
        grouped by class, so a prefix would hold only the first classes.
        """
        ds, split = self._data()
        idx = np.asarray(split.test_indices)
        if limit is not None and limit < len(idx):
            idx = idx[np.linspace(0, len(idx) - 1, max(limit, 0)).round().astype(np.int64)] if limit > 0 else idx[:0]
        return ds.test_batch(idx), ds.y_test[idx]

    def train_sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` inputs drawn (seeded, without replacement) from the node's own training split."""
        ds, split = self._data()
        idx = np.asarray(split.train_indices)
        if n < len(idx):
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
        return ds.train_batch(idx)

    def provenance(self) -> dict[str, Any]:
        """Who made this model: for metadata, shrink.json and reports."""
        return {
            "node": self.node_id,
            "profile": self.profile,
            "run_dir": str(self.node_dir),
            "round": self.mask_file.meta.get("round"),
            "model": self.spec.name,
            "granularity": self.spec.granularity,
            "keep": self.keep,
            "keep_per_layer": self.mask_file.meta.get("keep"),
            "weights_fingerprint": self.fingerprint,
            "dataset": self.config.get("extra", {}).get("dataset"),
            "partition": self.config.get("extra", {}).get("partition"),
        }

    def _data(self) -> tuple["Dataset", "NodeSplit"]:
        if self.dataset is None or self.split is None:
            raise UsageError(f"the data of {self.node_dir} was not loaded (load_run(..., load_data=True))")
        return self.dataset, self.split


def resolve_node_dir(run: str | Path, node: int | None = None) -> tuple[Path, int]:
    """(node directory, node id) for ``--run DIR [--node I]``; DIR may be a node-<i> directory itself."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist")
    if (run / "config.json").is_file() and run.name.startswith("node-"):
        try:
            own = int(run.name.split("-", 1)[1])
        except ValueError:
            own = None
        if own is not None:
            if node is not None and node != own:
                raise UsageError(f"--run points at {run.name} but --node is {node}")
            return run, own
    i = 0 if node is None else int(node)
    paths = NodePaths.of(run, i)
    if not paths.root.is_dir():
        found = sorted(p.name for p in run.glob("node-*") if p.is_dir())
        hint = f" (it has {', '.join(found)})" if found else " (no node-<i> directories: is this a run directory?)"
        raise CheckpointError(f"no node {i} in run {run}{hint}")
    return paths.root, i


def spec_from_dict(d: dict[str, Any]) -> ModelSpec:
    """A :class:`ModelSpec` from its JSON form (lists back to tuples)."""
    try:
        d = upgrade_model_record(dict(d))
        d["input_shape"] = tuple(int(s) for s in d["input_shape"])
        if isinstance(d.get("keep"), list):
            d["keep"] = [float(k) for k in d["keep"]]
        return ModelSpec(**d)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json has an unreadable model spec: {exc}") from exc


def node_data(config: dict[str, Any], node_id: int) -> tuple["Dataset", "NodeSplit"]:
    """The dataset and this node's split, rebuilt from config.json exactly as training built them."""
    from dslth_edge.data import load_dataset, partition

    extra = config.get("extra", {}) or {}
    name = extra.get("dataset")
    if not name:
        raise CheckpointError("config.json does not name the node's dataset (extra.dataset)")
    ds = load_dataset(name, extra.get("data_dir"))
    scheme = extra.get("partition", "all")
    if scheme in (None, "all"):  # a solo run trains on everything (train.py: one iid node)
        split = partition(ds, 1, "iid", seed=int(config.get("seed", 0)))[0]
        return ds, split
    kwargs: dict[str, Any] = {}
    if extra.get("scarce"):
        kwargs["max_train_per_node"] = int(extra["scarce"])
    if extra.get("test_size"):
        kwargs["test_size"] = int(extra["test_size"])
    num_nodes = int(extra.get("num_nodes", 0))
    if num_nodes <= node_id:
        raise CheckpointError(f"config.json: partition {scheme!r} over {num_nodes} nodes has no node {node_id}")
    splits = partition(ds, num_nodes, scheme, seed=int(extra.get("partition_seed", 0)), **kwargs)
    return ds, splits[node_id]


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def load_run(run: str | Path, node: int | None = None, *, load_data: bool = True) -> RunInfo:
    """Load a finished node: config, fixed weights (fingerprint-checked), BN statistics, final masks.

    Raises :class:`CheckpointError` when the directory has no final mask (the run has
    not finished), its files disagree with each other, or a file is damaged.
    """
    node_dir, node_id = resolve_node_dir(run, node)
    paths = NodePaths(node_dir)
    if not paths.config.is_file():
        raise CheckpointError(f"{node_dir} has no config.json: not a node run directory")
    try:
        config = json.loads(paths.config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{paths.config} is unreadable: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{paths.config} is malformed: a {type(config).__name__}, not a JSON object")
    mask_file = load_mask(paths.mask)  # CheckpointError when the run has not finished
    spec = spec_from_dict(config.get("model", {}))
    model = build_model(spec)
    if config.get("weights_file"):
        load_weights(model, config["weights_file"])
    fp = weights_fingerprint(model).hex()
    notes: list[str] = []
    recorded = config.get("weights_fingerprint")
    if recorded and recorded != fp:
        raise CheckpointError(f"{paths.config}: fixed weights regenerate to fingerprint {fp[:16]}…, the run recorded {recorded[:16]}…")
    if mask_file.fingerprint.hex() != fp:
        raise CheckpointError(f"{paths.mask} was made over other fixed weights ({mask_file.fingerprint.hex()[:16]}… vs {fp[:16]}…)")
    names = [n for n, _ in masked_layers(model)]
    if list(mask_file.names) != names:
        raise CheckpointError(f"{paths.mask} has layers {mask_file.names}, the model has {names}")
    shapes = [tuple(layer.weight.shape) for _, layer in masked_layers(model)]
    if [tuple(m.shape) for m in mask_file.masks] != shapes:
        raise CheckpointError(f"{paths.mask} has layer shapes {[tuple(m.shape) for m in mask_file.masks][:4]}, "
                              f"the model's are {shapes[:4]}")
    if paths.checkpoint.is_file():
        st = load_checkpoint(paths.checkpoint, mask_shapes=shapes)
        if st.get("fingerprint") not in (None, fp):
            raise CheckpointError(f"{paths.checkpoint} was made over other fixed weights")
        mask_round, ckpt_round = mask_file.meta.get("round"), st.get("round")
        if mask_round is not None and ckpt_round is not None and int(mask_round) != int(ckpt_round):
            raise CheckpointError(
                f"{paths.mask} is from round {mask_round} but {paths.checkpoint} from round {ckpt_round}: "
                "finish the run (train --resume) so both describe the same model"
            )
        try:
            result = model.load_state_dict(st["model"], strict=False)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{paths.checkpoint} does not match the model: {exc}") from exc
        if result.unexpected_keys:
            raise CheckpointError(f"{paths.checkpoint} has unexpected entries {result.unexpected_keys[:3]}")
    elif _has_batchnorm(model):
        raise CheckpointError(f"{node_dir} has no checkpoint.pt: its BatchNorm statistics are needed for export")
    else:
        notes.append("no checkpoint.pt (not needed: the model has no BatchNorm)")
    set_masks(model, [torch.from_numpy(np.asarray(m)) for m in mask_file.masks])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = RunInfo(node_dir, node_id, config, spec, model, mask_file, fp, notes=notes)
    if load_data:
        info.dataset, info.split = node_data(config, node_id)
        if tuple(info.dataset.input_shape) != info.input_shape:
            raise CheckpointError(f"dataset shape {info.dataset.input_shape} does not match the model input {info.input_shape}")
    return info


@torch.no_grad()
def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of a torch module (eval mode) on arrays."""
    if len(y) == 0:
        return float("nan")
    was = module.training
    module.eval()
    correct = 0
    try:
        for s in range(0, len(y), batch):
            out = module(torch.from_numpy(np.ascontiguousarray(x[s : s + batch])))
            correct += int((out.argmax(1).numpy() == y[s : s + batch]).sum())
    finally:
        module.train(was)
    return correct / len(y)
