"""Statistics against numpy on recorded and generated samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.profiler.stats import PERCENTILES, percentile, summarize

#: latencies (s) recorded from onnxruntime on a small CNN, including a warm-up spike and ties
RECORDED = [
    4.81e-05, 4.77e-05, 4.79e-05, 5.12e-05, 4.77e-05, 1.031e-04, 4.8e-05, 4.78e-05, 4.9e-05, 5.51e-05,
    4.76e-05, 4.77e-05, 6.02e-05, 4.79e-05, 4.81e-05, 4.77e-05, 1.231e-04, 4.8e-05, 4.95e-05, 4.78e-05,
]

finite = st.floats(min_value=1e-7, max_value=10.0, allow_nan=False, allow_infinity=False)


def test_recorded_samples_match_numpy() -> None:
    s = summarize(RECORDED)
    ms = np.asarray(RECORDED) * 1e3
    assert s.count == len(RECORDED)
    assert s.min == pytest.approx(ms.min(), rel=1e-12)
    assert s.max == pytest.approx(ms.max(), rel=1e-12)
    assert s.mean == pytest.approx(ms.mean(), rel=1e-12)
    assert s.std == pytest.approx(ms.std(ddof=0), rel=1e-9)
    for q in PERCENTILES:
        assert getattr(s, f"p{q}") == pytest.approx(np.percentile(ms, q), rel=1e-12), q
    assert s.total_s == pytest.approx(sum(RECORDED), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=60), st.floats(min_value=0, max_value=100))
def test_percentile_is_numpys_linear(xs: list[float], q: float) -> None:
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-15)


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40))
def test_summary_matches_numpy(xs: list[float]) -> None:
    s = summarize(xs)
    ms = np.asarray(xs) * 1e3
    assert s.mean == pytest.approx(ms.mean(), rel=1e-9)
    assert s.std == pytest.approx(ms.std(), rel=1e-6, abs=1e-9)
    assert s.min <= s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.max


def test_edges() -> None:
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        summarize([])
    per_s, samples_s = summarize([0.5, 0.5]).throughput(batch=4)
    assert per_s == pytest.approx(2.0) and samples_s == pytest.approx(8.0)
    assert not math.isnan(summarize([1.0]).std)
