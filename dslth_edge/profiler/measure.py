"""Measure one model: init, first inference, warm-up, timed inferences, memory, per-op.

The sequence mirrors LiteRT's benchmark tool: the peak-RSS baseline is taken, the
runtime is initialised (timed; peak RSS growth "at init"), the first inference is
timed on its own, ``warmup`` more inferences are timed and averaged, then the measured
inferences run (a fixed count, or for a duration) and the peak RSS growth "overall" is
read. Static analysis (params, MACs) and the optional per-op profile come after, so
neither disturbs the timings or the memory figures.

The Python garbage collector is paused during the timed loop: a collection in the
middle of a 50 µs inference would be measured as the model's latency.
"""

from __future__ import annotations

import gc
import os
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dslth_edge.errors import UsageError

from dslth_edge.cost.analysis import ModelInfo
from dslth_edge.profiler.backends import BackendInfo, PerOpProfile, Runner, make_runner
from dslth_edge.profiler.host import HostInfo, host_info
from dslth_edge.util.rss import RssTracker
from dslth_edge.profiler.stats import LatencyStats, summarize

__all__ = ["ProfileOptions", "MemoryFigures", "ProfileResult", "profile_model"]


@dataclass(frozen=True)
class ProfileOptions:
    """How to profile; the CLI's options one to one."""

    backend: str = "auto"
    threads: int = 1
    runs: int | None = None  # None with duration_s None: DEFAULT_RUNS
    duration_s: float | None = None
    warmup: int = 5
    batch: int = 1
    per_op: bool = False
    per_op_runs: int = 20
    input_shapes: Mapping[str, Sequence[int]] | None = None  # per-sample shapes; key "" = first input
    xnnpack: bool = True
    seed: int = 0

    DEFAULT_RUNS = 50  # LiteRT benchmark_model's default --num_runs

    def checked(self) -> ProfileOptions:
        """Validated copy with the run count resolved; raises UsageError."""
        if self.runs is not None and self.duration_s is not None:
            raise UsageError("give --runs or --duration, not both")
        if self.runs is not None and self.runs < 1:
            raise UsageError(f"--runs must be at least 1, got {self.runs}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise UsageError(f"--duration must be positive, got {self.duration_s}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.per_op_runs < 1:
            raise UsageError(f"per-op runs must be at least 1, got {self.per_op_runs}")
        runs = self.runs if (self.runs is not None or self.duration_s is not None) else self.DEFAULT_RUNS
        return replace(self, runs=runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "threads": self.threads,
            "runs": self.runs,
            "duration_s": self.duration_s,
            "warmup": self.warmup,
            "batch": self.batch,
            "per_op": self.per_op,
            "xnnpack": self.xnnpack,
        }


@dataclass(frozen=True)
class MemoryFigures:
    """Peak-RSS growth over the baseline taken just before the runtime was initialised."""

    method: str  # see RssTracker
    baseline_rss_bytes: int | None
    init_peak_growth_bytes: int | None
    overall_peak_growth_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "init_peak_growth_bytes": self.init_peak_growth_bytes,
            "overall_peak_growth_bytes": self.overall_peak_growth_bytes,
        }


@dataclass(frozen=True)
class ProfileResult:
    """Everything measured about one model."""

    model: ModelInfo
    backend: BackendInfo
    options: ProfileOptions
    input_shapes: dict[str, tuple[int, ...]]
    init_ms: float
    first_inference_ms: float
    warmup_ms: tuple[float, ...]
    latency: LatencyStats
    samples_ms: tuple[float, ...]
    memory: MemoryFigures
    host: HostInfo
    per_op: PerOpProfile | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def warmup_mean_ms(self) -> float | None:
        return sum(self.warmup_ms) / len(self.warmup_ms) if self.warmup_ms else None

    @property
    def inferences_per_s(self) -> float:
        return self.latency.throughput(self.options.batch)[0]

    @property
    def samples_per_s(self) -> float:
        return self.latency.throughput(self.options.batch)[1]


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def profile_model(path: str | os.PathLike[str], options: ProfileOptions | None = None) -> ProfileResult:
    """Profile the model at ``path`` (.onnx, .tflite, or a shrunk-model directory / shrink.json)."""
    opts = (options or ProfileOptions()).checked()
    runner = make_runner(
        path, opts.backend, threads=opts.threads, batch=opts.batch, input_shapes=opts.input_shapes, xnnpack=opts.xnnpack
    )
    try:
        return _measure(runner, opts, path)
    finally:
        runner.close()


def _measure(runner: Runner, opts: ProfileOptions, path: str | os.PathLike[str]) -> ProfileResult:
    """The measuring sequence of the module docstring, on a created (not loaded) runner."""
    gc.collect()  # a clean heap before the baseline, so the growth is the runtime's
    rss = RssTracker()
    init_s = _timed(runner.load)
    init_growth = rss.growth_bytes()
    shapes = runner.prepare_inputs(opts.seed)
    try:
        first_s = _timed(runner.run)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime's own error on the given shapes
        raise UsageError(f"{os.fspath(path)}: inference failed: {exc}") from None

    gc_was_enabled = gc.isenabled()
    gc.disable()
    # samples go to a preallocated C double array: 8 bytes each and no Python objects,
    # so the bookkeeping neither allocates during the loop nor shows up as model RSS
    perf = time.perf_counter
    run = runner.run
    try:
        warm = [_timed(run) for _ in range(opts.warmup)]
        if opts.duration_s is not None:
            samples = array("d")
            deadline = perf() + opts.duration_s
            while not samples or perf() < deadline:
                t0 = perf()
                run()
                samples.append(perf() - t0)
        else:
            assert opts.runs is not None
            samples = array("d", bytes(8 * opts.runs))
            for i in range(opts.runs):
                t0 = perf()
                run()
                samples[i] = perf() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    overall_growth = rss.growth_bytes()

    info = runner.analyze()
    backend = runner.info()
    per_op = runner.per_op(opts.per_op_runs, min(opts.warmup, 5)) if opts.per_op else None
    return ProfileResult(
        model=info,
        backend=backend,
        options=opts,
        input_shapes={k: tuple(v) for k, v in shapes.items()},
        init_ms=init_s * 1e3,
        first_inference_ms=first_s * 1e3,
        warmup_ms=tuple(t * 1e3 for t in warm),
        latency=summarize(samples),
        samples_ms=tuple(t * 1e3 for t in samples),
        memory=MemoryFigures(rss.method, rss.baseline_bytes, init_growth, overall_growth),
        host=host_info(),
        per_op=per_op,
    )
