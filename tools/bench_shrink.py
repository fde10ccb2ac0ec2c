#!/usr/bin/env python
"""Does shrinking pay off in measured latency? masked-dense vs shrunk vs shrunk+padded.

For each model and keep ratio, channel-structured masks (the top-k channels of the
initial scores: which channels survive does not matter for speed) give three plain
models: masked-dense (w ⊙ m, all channels: what a runtime without sparsity support
computes), shrunk (dead channels removed) and shrunk+padded (widths padded with
exactly-zero channels to --multiple, the same function). Each is converted to ONNX and TFLite and timed at batch 1 with
onnxruntime and LiteRT at 1 and 2 threads, the variants timed in interleaved chunks. The table reports the MAC reduction, the
measured speed-up and their ratio (target: speed-up >= 0.7 x MAC reduction).

    python tools/bench_shrink.py                       # paper-cnn, keep 0.1/0.3/0.5
    python tools/bench_shrink.py --models paper-cnn,resnet-8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from dslth_edge.exporters.onnx import onnx_bytes
from dslth_edge.exporters.runtime import OnnxRunner, TfliteRunner
from dslth_edge.learn.masking import masked_layers, set_masks, topk_mask
from dslth_edge.learn.models import ModelSpec, build_model
from dslth_edge.cost.macs import count_macs
from dslth_edge.exporters.shrink import shrink, shrunk_info, to_plain

SHAPES = {"paper-cnn": (1, 28, 28), "mcu-cnn": (1, 28, 28), "resnet-8": (3, 32, 32)}
TARGET = 0.7


def _variants(name: str, keep: float, multiple: int) -> dict[str, tuple[torch.nn.Module, int, dict[str, int]]]:
    shape = SHAPES[name]
    model = build_model(ModelSpec(name, shape, 10, keep=1.0, granularity="channel", weight_init="signed-constant")).eval()
    set_masks(model, [topk_mask(layer.scores, keep, "channel") for _, layer in masked_layers(model)])
    out = {"masked-dense": (to_plain(model), count_macs(model, shape), {})}
    shrunk = shrink(model, shape)
    out["shrunk"] = (shrunk, count_macs(shrunk, shape), shrunk_info(shrunk).widths())
    padded = shrink(model, shape, channel_multiple=multiple)
    out[f"shrunk+pad{multiple}"] = (padded, count_macs(padded, shape), shrunk_info(padded).widths())
    return out


def _runners(module: torch.nn.Module, shape: tuple[int, int, int], threads: list[int], tflite: bool) -> dict[str, Any]:
    """One runner per backend and thread count for ``module``."""
    data = onnx_bytes(module, shape)
    out: dict[str, Any] = {f"ort-{t}t": OnnxRunner(data, threads=t) for t in threads}
    if tflite:
        from dslth_edge.exporters.tflite import tflite_bytes

        fb = tflite_bytes(module, shape)
        out.update({f"litert-{t}t": TfliteRunner(fb, threads=t) for t in threads})
    return out


def _interleaved(runners: dict[str, dict[str, Any]], shape: tuple[int, int, int], runs: int, chunks: int = 10) -> dict[str, dict[str, dict[str, float]]]:
    """Batch-1 latency of every (variant, backend), measured in interleaved chunks.

    On a shared machine other processes come and go; timing the variants in turns
    exposes them to the same interference, so their ratios stay fair.
    """
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    samples: dict[tuple[str, str], list[float]] = {}
    for variant, by_backend in runners.items():
        for backend, r in by_backend.items():
            for _ in range(20):  # warm-up
                r.run(x)
            samples[(variant, backend)] = []
    per_chunk = max(1, runs // chunks)
    for _ in range(chunks):
        for variant, by_backend in runners.items():
            for backend, r in by_backend.items():
                for _ in range(per_chunk):
                    t0 = time.perf_counter()
                    r.run(x)
                    samples[(variant, backend)].append(time.perf_counter() - t0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (variant, backend), ts in samples.items():
        a = np.asarray(ts) * 1e3
        out.setdefault(variant, {})[backend] = {"median_ms": float(np.median(a)), "min_ms": float(a.min()),
                                               "p10_ms": float(np.percentile(a, 10))}
    return out


def bench(models: list[str], keeps: list[float], multiple: int, threads: list[int], runs: int, tflite: bool,
          stat: str = "p10_ms") -> list[dict[str, Any]]:
    rows = []
    for name in models:
        for keep in keeps:
            variants = _variants(name, keep, multiple)
            runners = {v: _runners(m, SHAPES[name], threads, tflite) for v, (m, _, _) in variants.items()}
            timing = _interleaved(runners, SHAPES[name], runs)
            dense_macs = variants["masked-dense"][1]
            dense_t = {k: v[stat] for k, v in timing["masked-dense"].items()}
            for vname, (_, macs, widths) in variants.items():
                lat = {k: v[stat] for k, v in timing[vname].items()}
                speedup = {k: dense_t[k] / v for k, v in lat.items()}
                mac_red = dense_macs / macs
                rows.append({"model": name, "keep": keep, "variant": vname, "macs": macs, "mac_reduction": mac_red,
                             "stat": stat, "latency_ms": lat, "timing": timing[vname], "speedup": speedup,
                             "efficiency": {k: s / mac_red for k, s in speedup.items()}, "widths": widths})
                print(f"  {name} keep {keep} {vname}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in lat.items()),
                      file=sys.stderr, flush=True)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = list(rows[0]["latency_ms"])
    stat = rows[0]["stat"].removesuffix("_ms")
    table = Table(title=f"batch-1 latency, {stat} (ms); eff = speed-up vs masked-dense / MAC reduction (target >= {TARGET})")
    for col in ["model", "keep", "variant", "MACs", "MAC red.", *keys, *(f"eff {k}" for k in keys)]:
        table.add_column(col, justify="right")
    for r in rows:
        eff = [("-" if r["variant"] == "masked-dense" else f"{r['efficiency'][k]:.2f}") for k in keys]
        table.add_row(r["model"], f"{r['keep']:.1f}", r["variant"], f"{r['macs'] / 1e6:.2f}M", f"{r['mac_reduction']:.1f}x",
                      *(f"{r['latency_ms'][k]:.3f}" for k in keys), *eff)
    Console(width=200).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="paper-cnn", help="comma-separated zoo models (paper-cnn, mcu-cnn, resnet-8)")
    ap.add_argument("--keeps", default="0.1,0.3,0.5")
    ap.add_argument("--multiple", type=int, default=8, help="channel multiple for the zero-padded variant")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per configuration")
    ap.add_argument("--stat", default="p10", choices=["p10", "median", "min"],
                    help="latency statistic (p10: robust on a shared machine, where the median carries other jobs' load)")
    ap.add_argument("--no-tflite", action="store_true", help="onnxruntime only")
    ap.add_argument("--json", action="store_true", help="print rows as JSON on stdout")
    a = ap.parse_args()
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = bench(a.models.split(","), [float(k) for k in a.keeps.split(",")], a.multiple,
                 [int(t) for t in a.threads.split(",")], a.runs, not a.no_tflite, f"{a.stat}_ms")
    if a.json:
        print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "cpu_count": os.cpu_count()}, indent=2))
    else:
        _print(rows)


if __name__ == "__main__":
    main()
