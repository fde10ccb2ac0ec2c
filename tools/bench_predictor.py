"""Benchmark: how well the per-layer latency predictor predicts this machine.

Calibrates this host (what ``dslth-edge profile calibrate`` does: onnxruntime, 1 thread),
writes the host profile and loads it back as ``--profile host.toml`` would, then takes
every zoo model (paper-cnn, mcu-cnn, resnet-8) channel-masked at keep 0.1 / 0.3 / 0.5,
shrinks it (dslth_edge.exporters.shrink), exports it as ONNX fp32, TFLite fp32 and
TFLite int8 (ai-edge-quantizer static int8), predicts each file from its own operators
(:func:`dslth_edge.profiler.predictor.predict`) and measures it with its runtime
(onnxruntime / LiteRT, 1 thread, all runners interleaved round-robin, best of
``--passes`` per-pass medians). Prints every case, the median |error| and the share of
cases within ±20 % (targets: median ≤ 10 %, ≥ 80 % within ±20 %).

This is a measurement, not a test: the figures depend on the machine and its load.

    nice -n 10 .venv/bin/python tools/bench_predictor.py [--passes 5] [--models paper-cnn,mcu-cnn]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ZOO = (("paper-cnn", (1, 28, 28)), ("mcu-cnn", (1, 28, 28)), ("resnet-8", (3, 32, 32)))
KEEPS = (0.1, 0.3, 0.5)
FORMATS = ("onnx fp32", "tflite fp32", "tflite int8")
CLASSES = 10


def _files(name: str, shape: tuple[int, int, int], keep: float, out: Path, seed: int) -> dict[str, Path]:
    """The three exported files of one zoo model at one keep ratio."""
    import torch
    from dslth_edge.exporters.onnx import onnx_bytes
    from dslth_edge.exporters.shrink import fold_batchnorm, shrink
    from dslth_edge.exporters.tflite import quantize_tflite, tflite_bytes

    from dslth_edge.learn.models import ModelSpec, build_model

    torch.manual_seed(seed)
    masked = build_model(ModelSpec(name, shape, CLASSES, keep=keep, granularity="channel")).eval()
    deploy = fold_batchnorm(shrink(masked, shape)).eval()
    calib = np.random.default_rng(seed).normal(size=(64, *shape)).astype(np.float32)
    fp32 = tflite_bytes(deploy, shape)
    data = {"onnx fp32": onnx_bytes(deploy, shape), "tflite fp32": fp32, "tflite int8": quantize_tflite(fp32, "int8", calib)}
    paths = {}
    for fmt, blob in data.items():
        p = out / f"{name}-{keep}-{fmt.replace(' ', '-')}.{fmt.split()[0]}"
        p.write_bytes(blob)
        paths[fmt] = p
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=5, help="round-robin measurement passes (best per-pass median kept)")
    ap.add_argument("--cal-passes", type=int, default=5, help="calibration passes")
    ap.add_argument("--models", default=",".join(n for n, _ in ZOO), help="comma-separated zoo models")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from dslth_edge.device.profiles import load_profile
    from dslth_edge.cost.analysis import analyze_onnx, analyze_tflite
    from dslth_edge.profiler.backends import make_runner
    from dslth_edge.profiler.calibrate import best_of_passes, calibrate
    from dslth_edge.profiler.host_profile import write_host_profile
    from dslth_edge.profiler.predictor import predict

    wanted = [m for m in args.models.split(",") if m]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dslth-bench-pred-") as tmp:
        out = Path(tmp)
        cal = calibrate(threads=1, passes=args.cal_passes)
        profile = load_profile(str(write_host_profile(cal, out / "host.toml")))
        print(f"calibrated in {time.perf_counter() - t0:.0f} s: {cal.schema.to_dict()}", flush=True)
        cases: list[tuple[str, float, str, Path]] = []
        for name, shape in ZOO:
            if name not in wanted:
                continue
            for keep in KEEPS:
                for fmt, path in _files(name, shape, keep, out, args.seed).items():
                    cases.append((name, keep, fmt, path))
        runners = []
        for *_, path in cases:
            r = make_runner(path, threads=1)
            r.load()
            r.prepare_inputs()
            runners.append(r)
        measured = best_of_passes([r.run for r in runners], passes=args.passes, min_runs=20, min_seconds=0.05, warmup=5)
        rows, errors = [], []
        for (name, keep, fmt, path), meas in zip(cases, measured):
            info = analyze_onnx(path) if path.suffix == ".onnx" else analyze_tflite(path)
            pred = predict(list(info.ops), profile).total_s
            err = (pred - meas) / meas
            errors.append(err)
            rows.append(f"{name:10s} {keep:4.1f}  {fmt:12s} {meas * 1e6:10.1f} {pred * 1e6:10.1f} {100 * err:+8.1f}%")
    print(f"{'model':10s} {'keep':>4s}  {'format':12s} {'meas. µs':>10s} {'pred. µs':>10s} {'error':>9s}")
    print("\n".join(rows))
    abs_err = [abs(e) for e in errors]
    within = sum(e <= 0.20 for e in abs_err) / len(abs_err)
    print(f"all {len(abs_err)} cases: median |error| {100 * statistics.median(abs_err):.1f}% (target <= 10%), "
          f"{100 * within:.0f}% within ±20% (target >= 80%)")
    for fmt in FORMATS:
        sub = [abs(e) for (_, _, f, _), e in zip(cases, errors) if f == fmt]
        if sub:
            print(f"  {fmt:12s}: median |error| {100 * statistics.median(sub):.1f}%, "
                  f"{100 * sum(e <= 0.2 for e in sub) / len(sub):.0f}% within ±20%")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
