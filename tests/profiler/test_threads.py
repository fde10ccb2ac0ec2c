"""The thread option is honoured: set in every backend, and 2 threads beat 1 on a big model.

The machine is shared: 1- and 2-thread sessions are measured round-robin in several
passes, each keeping its best per-pass median, with a modest margin (5 %: with both cores
busy elsewhere the gain shrinks from ~45 % to ~10 %) and retries.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dslth_edge.profiler import ProfileOptions, profile_model
from dslth_edge.profiler.backends import LiteRtRunner, OnnxRuntimeRunner
from dslth_edge.profiler.calibrate import best_of_passes


def test_thread_count_is_reported(small_onnx: Path, small_tflite: Path) -> None:
    for path in (small_onnx, small_tflite):
        for n in (1, 2):
            res = profile_model(path, ProfileOptions(threads=n, runs=2, warmup=0))
            assert res.backend.threads == n


def test_onnxruntime_session_gets_the_threads(small_onnx: Path) -> None:
    r = OnnxRuntimeRunner(small_onnx, threads=3)
    opts = r._options()
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_two_threads_are_faster(big_onnx: Path) -> None:
    runners = []
    for n in (1, 2):
        r = OnnxRuntimeRunner(big_onnx, threads=n)
        r.load()
        r.prepare_inputs()
        runners.append(r)
    ratios = []
    for _attempt in range(3):
        t1, t2 = best_of_passes([r.run for r in runners], passes=4, min_runs=5, min_seconds=0.05, warmup=2)
        ratios.append(t2 / t1)
        if t2 < 0.95 * t1:  # modest: the other engineers load both cores too
            return
    pytest.fail(f"2 threads not faster than 1 on a 0.2 GMAC model: t2/t1 per attempt {ratios}")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_litert_two_threads_are_faster(big_onnx: Path, models_dir: Path) -> None:
    """Same check through LiteRT (XNNPACK inherits the interpreter's thread count)."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    from torch import nn

    path = models_dir / "big.tflite"
    if not path.exists():
        torch.manual_seed(0)
        module = nn.Sequential(*[nn.Conv2d(64, 64, 3, padding=1) for _ in range(3)]).eval()
        litert_torch.convert(module, (torch.zeros(1, 64, 48, 48),)).export(str(path))
    runners = []
    for n in (1, 2):
        r = LiteRtRunner(path, threads=n)
        r.load()
        r.prepare_inputs()
        runners.append(r)
    ratios = []
    for _attempt in range(3):
        t1, t2 = best_of_passes([r.run for r in runners], passes=4, min_runs=5, min_seconds=0.05, warmup=2)
        ratios.append(t2 / t1)
        if t2 < 0.95 * t1:  # modest: the other engineers load both cores too
            return
    pytest.fail(f"LiteRT: 2 threads not faster than 1: t2/t1 per attempt {ratios}")
