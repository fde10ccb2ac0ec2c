"""A real mce-pl mask history for tools/bench_codec.py: a small in-process fleet.

Builds the fleet exactly as ``dslth-edge simulate`` does (:func:`fleet.plan_fleet` and
:func:`fleet.make_node` over a :class:`MemoryHub`, lock-step ``begin_round`` then
``finish_round``), and after every ``begin_round`` records node 0's published masks
(``node.current_masks()``, checked against what its Exchange actually encoded). It
also records the frames node 0's real Exchange sent (kind, bytes), as a cross-check of
the replayed key/delta policy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet  # noqa: E402
from dslth_edge.transport.memory import MemoryHub  # noqa: E402

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"


def train_history(
    *,
    model: str = "paper-cnn",
    granularity: str = "unstructured",
    keep: float = 0.3,
    rounds: int = 40,
    nodes: int = 4,
    topology: str = "ring",
    partition: str = "classes:3",
    dataset: str = "fashion-mnist",
    data_dir: str | None = DEFAULT_DATA_DIR,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[list[list[np.ndarray]], dict]:
    """(node 0's published masks per round, info about the run incl. its live frames)."""
    import torch

    torch.set_num_threads(1)
    eval_every = max(10, rounds // 4)
    opts = FleetOptions(nodes=nodes, topology=topology, dataset=dataset, data_dir=data_dir, partition=partition,
                        algorithm="mce-pl", model=model, keep=keep, granularity=granularity, rounds=rounds,
                        eval_every=eval_every, eval_samples=500, seed=seed, fleet_id="bench-train")
    t0 = time.perf_counter()
    plan = plan_fleet(opts)
    hub = MemoryHub()
    fleet = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), None) for i in range(nodes)]
    for node in fleet:
        node.start()
    node0 = fleet[0]
    live: list[dict] = []
    published: list[list[np.ndarray]] = []
    encoder = node0.exchange.encoder
    real_encode = encoder.encode

    def spy(masks, **kw):  # what node 0's Exchange really sent this round
        frame = real_encode(masks, **kw)
        published.append([np.array(m, dtype=bool) for m in masks])
        live.append({"round": frame.round, "kind": frame.kind, "frame_bytes": len(frame.data),
                     "payload_bytes": frame.payload_bytes, "elements": frame.elements,
                     "codecs": sorted({s.codec for s in frame.layers})})
        return frame

    encoder.encode = spy  # instance attribute: only node 0's encoder is observed
    history: list[list[np.ndarray]] = []
    accs: list[tuple[int, float]] = []
    for k in range(rounds):
        for node in fleet:
            node.begin_round()
        masks = [m.numpy().astype(bool, copy=True) for m in node0.current_masks()]
        if len(published) != k + 1 or any(not np.array_equal(a, b) for a, b in zip(masks, published[-1])):
            raise RuntimeError(f"round {k}: node 0's current_masks() differ from the frame it published")
        history.append(masks)
        results = [node.finish_round() for node in fleet]
        if results[0].acc is not None:
            accs.append((k, float(np.mean([r.acc for r in results if r.acc is not None]))))
        if log and (k == 0 or (k + 1) % 10 == 0 or k == rounds - 1):
            el = time.perf_counter() - t0
            acc = f", mean acc {accs[-1][1]:.3f}" if accs and accs[-1][0] == k else ""
            log(f"  train round {k + 1}/{rounds}: loss {results[0].loss:.3f}{acc}  ({el:.0f} s)")
    info = {
        "model": model, "granularity": granularity, "keep": keep, "rounds": rounds, "nodes": nodes,
        "topology": topology, "partition": partition, "dataset": dataset, "seed": seed,
        "shapes": [list(m.shape) for m in history[0]], "params": int(sum(m.size for m in history[0])),
        "mean_acc": accs, "seconds": time.perf_counter() - t0, "live_frames": live,
    }
    return history, info


def save_npz(path: str | Path, history: list[list[np.ndarray]]) -> None:
    """The ``r{round:04d}_l{layer:02d}`` format ``bench_codec.py --masks`` reads."""
    arrays = {f"r{r:04d}_l{i:02d}": m for r, masks in enumerate(history) for i, m in enumerate(masks)}
    np.savez_compressed(path, **arrays)
