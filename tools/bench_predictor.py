"""Benchmark: how well the calibrated latency model predicts this machine (issue 25).

1. Calibrates this host as ``dslth-edge profile --calibrate`` does (every runtime installed:
   onnxruntime fp32, LiteRT/XNNPACK fp32 and int8; 1 thread; ``--cal-passes`` passes),
   writes the host profile and its calibration file, and loads the profile back as
   ``--profile host.toml`` would: the planner and the verdict read it the same way.
2. Held-out cases (none of them in the calibration suite): the zoo (paper-cnn, mcu-cnn,
   resnet-8) channel-masked at several keep ratios, and shrunk models with the channel
   counts a plan gives real devices, MCU widths included (mcu-cnn and its x2 / x4 widths
   at the channel multiples of esp32-s3, stm32h743 and the Pi profiles, padded with zero
   channels as ``export`` pads them); each shrunk (dslth_edge.exporters.shrink), exported as
   ONNX fp32, TFLite fp32 and TFLite int8 (ai-edge-quantizer static int8).
3. Every file is predicted from its own operators (:func:`dslth_edge.cost.latency.predict`
   with the profile: the runtime fit of its format and dtype) and measured with its
   runtime (1 thread), all runners interleaved round-robin, best of ``--passes`` per-pass
   medians.
4. With ``--train-rounds N`` (N >= 4): ``dslth-edge train`` (paper-cnn, fashion-mnist) for N
   rounds on the calibrated profile; prints the predicted against measured seconds per
   round (the calibration then also measures torch training steps).

Prints every case, then the median |error| and the shares within ±20 % and ±10 %, overall
and per format, ending with ``all N cases: median |error| X% ..., Y% within ±20 %``.
Targets (issue 25): median ≤ 10 % overall and per format, ≥ 80 % within ±20 %.

This is a measurement, not a test: the figures depend on the machine and its load.

    nice -n 10 .venv/bin/python tools/bench_predictor.py [--passes 5] [--cal-passes 3] [--train-rounds 6]
    nice -n 10 .venv/bin/python tools/bench_predictor.py --profile host.toml --reduced   # reuse a calibration

``--profile`` takes a host profile that ``dslth-edge profile --calibrate`` wrote on this
machine (with its calibration file) instead of calibrating again; ``--reduced`` cuts the
grid for a loaded machine (the cut is printed in the case count).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 10
#: (model, input shape, keep ratios) of the zoo cases.
ZOO = (
    ("paper-cnn", (1, 28, 28), (0.1, 0.3, 0.5, 0.8)),
    ("mcu-cnn", (3, 32, 32), (0.2, 0.5, 1.0)),
    ("resnet-8", (3, 32, 32), (0.1, 0.3, 0.6)),
)
#: (model, input shape, keep, channel multiple) of shrunk models with real devices' channel counts:
#: MCU widths (esp32-s3 / stm32h743 pad to 4, nrf52840 to 4), Pi-class multiples of 8 and 16.
SHRUNK = (
    ("mcu-cnn", (1, 28, 28), 0.25, 4),
    ("mcu-cnn", (3, 32, 32), 0.4, 4),
    ("mcu-cnn-x2", (1, 28, 28), 0.3, 4),
    ("mcu-cnn-x4", (3, 32, 32), 0.2, 8),
    ("mcu-cnn-x4", (1, 28, 28), 0.55, 16),
    ("paper-cnn", (1, 28, 28), 0.2, 16),
    ("resnet-8", (3, 32, 32), 0.45, 8),
)
#: ``--reduced``: the cut grid for a loaded machine (two keeps per zoo model, four shrunk models).
REDUCED_KEEPS = {"paper-cnn": (0.1, 0.5), "mcu-cnn": (0.2, 1.0), "resnet-8": (0.1, 0.6)}
REDUCED_SHRUNK = 4
FORMATS = ("onnx fp32", "tflite fp32", "tflite int8")


def _files(name: str, shape: tuple[int, int, int], keep: float, multiple: int, out: Path, seed: int) -> dict[str, Path]:
    """The three exported files of one model, channel-masked at ``keep`` and shrunk."""
    import torch
    from dslth_edge.exporters.onnx import onnx_bytes
    from dslth_edge.exporters.shrink import fold_batchnorm, shrink
    from dslth_edge.exporters.tflite import quantize_tflite, tflite_bytes

    from dslth_edge.learn.models import ModelSpec, build_model

    torch.manual_seed(seed)
    masked = build_model(ModelSpec(name, shape, CLASSES, keep=keep, granularity="channel")).eval()
    deploy = fold_batchnorm(shrink(masked, shape, channel_multiple=multiple)).eval()
    calib = np.random.default_rng(seed).normal(size=(64, *shape)).astype(np.float32)
    fp32 = tflite_bytes(deploy, shape)
    data = {"onnx fp32": onnx_bytes(deploy, shape), "tflite fp32": fp32, "tflite int8": quantize_tflite(fp32, "int8", calib)}
    paths = {}
    for fmt, blob in data.items():
        p = out / f"{name}-{'x'.join(map(str, shape))}-{keep}-m{multiple}-{fmt.replace(' ', '-')}.{fmt.split()[0]}"
        p.write_bytes(blob)
        paths[fmt] = p
    return paths


def _summary(label: str, errors: list[float]) -> str:
    a = [abs(e) for e in errors]
    return (f"{label}: median |error| {100 * statistics.median(a):.1f}% (target <= 10%), "
            f"{100 * sum(e <= 0.20 for e in a) / len(a):.0f}% within ±20 % (target >= 80%), "
            f"{100 * sum(e <= 0.10 for e in a) / len(a):.0f}% within ±10 %")


def _train_rounds(profile_path: Path, rounds: int, out: Path) -> None:
    from dslth_edge.fleet.solo import TrainOptions, train

    res = train(TrainOptions(profile=str(profile_path), dataset="fashion-mnist", model="paper-cnn", rounds=rounds,
                             out=str(out / "train-run"), eval_every=0), on_warning=print)
    print(f"train paper-cnn fashion-mnist, {res.rounds_done} rounds, micro-batch {res.micro_batch or 'whole'}: "
          f"{res.round_time or 'no round compared'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=5, help="round-robin measurement passes (best per-pass median kept)")
    ap.add_argument("--cal-passes", type=int, default=3, help="calibration passes")
    ap.add_argument("--models", default="paper-cnn,mcu-cnn,resnet-8,mcu-cnn-x2,mcu-cnn-x4", help="comma-separated models")
    ap.add_argument("--train-rounds", type=int, default=0, help="also train N rounds and compare the time per round")
    ap.add_argument("--profile", default=None, metavar="PATH",
                    help="a host profile already calibrated by `profile --calibrate` on this machine (skips step 1)")
    ap.add_argument("--reduced", action="store_true", help="the cut grid (2 keeps per zoo model, 4 shrunk models)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from dslth_edge.cost.latency import predict
    from dslth_edge.device.profiles import load_profile
    from dslth_edge.cost.analysis import analyze_onnx, analyze_tflite
    from dslth_edge.profiler.backends import make_runner
    from dslth_edge.profiler.calibrate import best_of_passes, calibrate
    from dslth_edge.profiler.host_profile import write_host_profile

    wanted = {m for m in args.models.split(",") if m}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dslth-bench-pred-") as tmp:
        out = Path(tmp)
        cases: list[tuple[str, str, Path]] = []
        for name, shape, keeps in ZOO:
            keeps = REDUCED_KEEPS.get(name, keeps) if args.reduced else keeps
            if name in wanted:
                for keep in keeps:
                    for fmt, path in _files(name, shape, keep, 1, out, args.seed).items():
                        cases.append((f"{name} k{keep}", fmt, path))
        for name, shape, keep, mult in (SHRUNK[:REDUCED_SHRUNK] if args.reduced else SHRUNK):
            if name in wanted:
                for fmt, path in _files(name, shape, keep, mult, out, args.seed).items():
                    cases.append((f"{name} {'x'.join(map(str, shape))} k{keep} m{mult}", fmt, path))
        print(f"{len(cases)} files exported ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        if args.profile:
            profile_path = Path(args.profile)
        else:
            cal = calibrate(threads=1, passes=args.cal_passes, training=args.train_rounds > 0, seed=args.seed)
            profile_path = write_host_profile(cal, out / "host.toml")
            print(f"calibrated in {cal.seconds:.0f} s ({args.cal_passes} passes)", flush=True)
        profile = load_profile(str(profile_path))
        if profile.calibration is None:
            raise SystemExit(f"{profile_path}: names no calibration file (run `dslth-edge profile --calibrate`)")
        print(f"calibration {profile.calibration.source_path}: " + "; ".join(
            f"{k} {f.points} nets, multiple {f.channel_multiple}, fit |error| {100 * f.median_rel_error:.1f}%"
            for k, f in sorted(profile.calibration.runtimes.items())), flush=True)
        t = profile.calibration.training
        if t is not None:
            print(f"training fit: {t.points} steps, |error| {100 * t.median_rel_error:.1f}%", flush=True)
        runners = []
        for *_, path in cases:
            r = make_runner(path, threads=1)
            r.load()
            r.prepare_inputs()
            runners.append(r)
        measured = best_of_passes([r.run for r in runners], passes=args.passes, min_runs=20, min_seconds=0.05, warmup=5)
        for r in runners:
            r.close()
        rows, errors = [], []
        for (label, fmt, path), meas in zip(cases, measured):
            info = analyze_onnx(path) if path.suffix == ".onnx" else analyze_tflite(path)
            pred = predict(list(info.ops), profile)
            err = (pred.total_s - meas) / meas
            errors.append(err)
            rows.append(f"{label:34s} {fmt:12s} {pred.runtime or pred.basis:20s} {meas * 1e6:10.1f} "
                        f"{pred.total_s * 1e6:10.1f} {100 * err:+8.1f}%")
        if args.train_rounds:
            _train_rounds(profile_path, args.train_rounds, out)
    print(f"{'case':34s} {'format':12s} {'predicted from':20s} {'meas. µs':>10s} {'pred. µs':>10s} {'error':>9s}")
    print("\n".join(rows))
    for fmt in FORMATS:
        sub = [e for (_, f, _), e in zip(cases, errors) if f == fmt]
        if sub:
            print(_summary(f"  {fmt} ({len(sub)} cases)", sub))
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(_summary(f"all {len(errors)} cases", errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
