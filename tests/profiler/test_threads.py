"""The thread option is honoured: set in every backend, and used.

*Used*: while a 2-thread session runs, two OS threads of this process accrue CPU time,
and only one for a 1-thread session (per-thread CPU time from /proc). Whether 2 threads
are also *faster* depends on the machine and its load: tools/bench_threads.py measures
and prints that; no test asserts a timing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from dslth_edge.profiler import ProfileOptions, profile_model
from dslth_edge.profiler.backends import LiteRtRunner, OnnxRuntimeRunner, Runner

two_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")


def test_thread_count_is_reported(small_onnx: Path, small_tflite: Path) -> None:
    for path in (small_onnx, small_tflite):
        for n in (1, 2):
            res = profile_model(path, ProfileOptions(threads=n, runs=2, warmup=0))
            assert res.backend.threads == n


def test_onnxruntime_session_gets_the_threads(small_onnx: Path) -> None:
    opts = OnnxRuntimeRunner(small_onnx, threads=3)._options()
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1


def _thread_cpu_ticks() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return ticks


def _busy_threads(runner: Runner, busiest_ticks: int = 40, cap_s: float = 60.0) -> int:
    """How many threads of this process accrued >= 5 ticks while ``runner`` ran.

    Runs until the busiest thread has ``busiest_ticks`` of CPU time (not for a wall-clock
    span: on a loaded machine a thread may get little CPU in any given second, but the
    split of the work between threads does not depend on the load).
    """
    before = _thread_cpu_ticks()
    deadline = time.perf_counter() + cap_s
    while True:
        for _ in range(5):
            runner.run()
        after = _thread_cpu_ticks()
        deltas = [t - before.get(tid, 0) for tid, t in after.items()]
        if max(deltas, default=0) >= busiest_ticks or time.perf_counter() > deadline:
            return sum(1 for d in deltas if d >= 5)


def _loaded(cls: type[Runner], path: Path, threads: int) -> Runner:
    r = cls(path, threads=threads)
    r.load()
    r.prepare_inputs()
    return r


@two_cpus
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU time from /proc")
def test_threads_are_used(big_onnx: Path, big_tflite: Path) -> None:
    for cls, path in ((OnnxRuntimeRunner, big_onnx), (LiteRtRunner, big_tflite)):
        assert _busy_threads(_loaded(cls, path, 1)) == 1, cls.__name__
        assert _busy_threads(_loaded(cls, path, 2)) >= 2, cls.__name__
