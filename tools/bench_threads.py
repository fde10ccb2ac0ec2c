"""Benchmark: does a 2-thread session run faster than a 1-thread one on this machine?

The suite checks that the thread option is *honoured* (tests/profiler/test_threads.py:
the threads exist and accrue CPU time); whether they also make inference faster depends
on the machine and its load, so it is measured here and printed, never asserted.
A ~0.2 GMAC conv stack (64 channels, 48x48, three 3x3 convs) is exported to ONNX (built
without torch) and TFLite (litert-torch), loaded with 1 and 2 threads, and timed
round-robin, each keeping its fastest pass (noise only ever adds time).

    nice -n 10 .venv/bin/python tools/bench_threads.py [--passes 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from dslth_edge.profiler.backends import LiteRtRunner, OnnxRuntimeRunner, Runner
from dslth_edge.profiler.calibrate import NetSpec, build_onnx, best_of_passes


def _models(directory: Path) -> dict[str, tuple[type[Runner], Path]]:
    import onnx
    import litert_torch
    import torch
    from torch import nn

    spec = NetSpec("big", (64, 48, 48), (("conv", 64, 3, False), ("conv", 64, 3, False), ("conv", 64, 3, False)))
    onnx_path = directory / "big.onnx"
    onnx.save(build_onnx(spec), str(onnx_path))
    torch.manual_seed(0)
    module = nn.Sequential(*[nn.Conv2d(64, 64, 3, padding=1) for _ in range(3)]).eval()
    tflite_path = directory / "big.tflite"
    litert_torch.convert(module, (torch.zeros(1, 64, 48, 48),)).export(str(tflite_path))
    return {"onnxruntime": (OnnxRuntimeRunner, onnx_path), "litert": (LiteRtRunner, tflite_path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    print(f"cpus {os.cpu_count()}  load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cls, path) in _models(Path(tmp)).items():
            runners = []
            for n in (1, 2):
                r = cls(path, threads=n)
                r.load()
                r.prepare_inputs()
                runners.append(r)
            t1, t2 = best_of_passes([r.run for r in runners], passes=args.passes, min_runs=8, min_seconds=0.05,
                                    warmup=2, stat=min)
            print(f"{name:12s} 1 thread {1e3 * t1:8.2f} ms   2 threads {1e3 * t2:8.2f} ms   t2/t1 {t2 / t1:.3f}")


if __name__ == "__main__":
    main()
