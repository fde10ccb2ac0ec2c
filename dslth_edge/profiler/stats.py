"""Summary statistics of latency samples, in pure Python (no numpy needed on a device).

Percentiles use the same interpolation as numpy's default (``method="linear"``):
for ``n`` sorted samples the ``q``-th percentile sits at fractional rank
``(n - 1) * (q / 100)`` and is linearly interpolated between its two neighbours.
The standard deviation is the population one (``ddof=0``), as LiteRT's benchmark tool
reports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PERCENTILES", "percentile", "LatencyStats", "summarize"]

#: The percentiles every summary carries.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, numpy's 'linear' interpolation."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    xs = sorted(samples)
    rank = (len(xs) - 1) * (q / 100.0)  # numpy's order of operations: same rounding
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    frac = rank - lo
    # numpy's _lerp form: a + (b - a) * t, switched to b - (b - a) * (1 - t) above t = 0.5,
    # which keeps the result exact at the end points and monotone
    a, b = xs[lo], xs[hi]
    diff = b - a
    return b - diff * (1.0 - frac) if frac >= 0.5 else a + diff * frac


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of one series of measured inferences; every time is in milliseconds."""

    count: int
    min: float
    max: float
    mean: float
    std: float
    p50: float
    p90: float
    p95: float
    p99: float
    total_s: float  # wall time of the measured inferences together

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the ``latency_ms`` object of docs/profile-json.md)."""
        return asdict(self)

    def throughput(self, batch: int = 1) -> tuple[float, float]:
        """(inferences per second, samples per second) over the measured inferences."""
        if self.total_s <= 0:
            return math.inf, math.inf
        per_s = self.count / self.total_s
        return per_s, per_s * batch


def summarize(samples_s: Sequence[float]) -> LatencyStats:
    """Summarize latencies given in seconds into :class:`LatencyStats` in milliseconds."""
    if not samples_s:
        raise ValueError("no latency samples to summarize")
    ms = [s * 1e3 for s in samples_s]
    n = len(ms)
    mean = math.fsum(ms) / n
    var = math.fsum((x - mean) ** 2 for x in ms) / n
    return LatencyStats(
        count=n,
        min=min(ms),
        max=max(ms),
        mean=mean,
        std=math.sqrt(var),
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        total_s=math.fsum(samples_s),
    )
