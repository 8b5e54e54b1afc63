"""The demo's measures: latency summaries and the trace's monitor checker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl.qemu import LatencyHistogram, LatencySummary, percentile

latencies = st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=200)


@given(latencies, st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
def test_the_histogram_is_within_one_percent_of_the_exact_percentile(
    samples: list[float], fraction: float
) -> None:
    histogram = LatencyHistogram()
    for sample in samples:
        histogram.add(sample)
    exact = percentile(sorted(samples), fraction)
    approx = histogram.percentile(fraction)
    assert exact <= approx <= max(exact * 1.01, 1e-6)
    assert approx <= max(samples) == histogram.max
    assert histogram.count == len(samples)


def test_summaries() -> None:
    exact = LatencySummary.of([0.003, 0.001, 0.002])
    assert (exact.count, exact.p50, exact.p99, exact.max) == (3, 0.002, 0.003, 0.003)
    assert LatencySummary.of([]) == LatencySummary(0, 0.0, 0.0, 0.0)
    assert LatencyHistogram().summary() == LatencySummary(0, 0.0, 0.0, 0.0)
    assert exact.describe() == "p50 2.00 ms  p99 3.00 ms  max 3.00 ms  (3)"
    with pytest.raises(ValueError, match="latency"):
        LatencyHistogram().add(-1.0)
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0], 2.0)
