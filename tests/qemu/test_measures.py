"""The demo's measures: latency summaries and the trace's monitor checker."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl import TraceEvent, TraceKind
from jobctl.qemu import MonitorChecker
from jobctl.qemu._latency import LatencyHistogram, LatencySummary, percentile

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


_seq = itertools.count(1)


def event(kind: TraceKind, job_id: int, **detail: Any) -> TraceEvent:
    return TraceEvent(next(_seq), 0.0, "vm1", kind, job_id, "QUERY", None, detail)


def test_the_checker_passes_a_clean_trace_and_counts_each_violation() -> None:
    clean = MonitorChecker()
    for e in (
        event(TraceKind.MONITOR_ENTER, 1),
        event(TraceKind.COMMAND_SENT, 1, command="query-status"),
        event(TraceKind.COMMAND_ANSWERED, 1, command="query-status"),
        event(TraceKind.MONITOR_EXIT, 1),
        event(TraceKind.MONITOR_ENTER, 2),
        event(TraceKind.COMMAND_SENT, 2, command="migrate"),
        event(TraceKind.COMMAND_ANSWERED, 2, command="migrate"),
        event(TraceKind.MONITOR_EXIT, 2),
    ):
        clean(e)
    assert (clean.violations, clean.commands, clean.examples) == (0, 2, [])

    bad = MonitorChecker()
    for e in (
        event(TraceKind.MONITOR_ENTER, 1),
        event(TraceKind.MONITOR_ENTER, 2),  # 1: entered while 1 holds it (2 holds it now)
        event(TraceKind.COMMAND_SENT, 1, command="query-status"),  # 2: 1 is not the holder
        event(TraceKind.COMMAND_SENT, 2, command="migrate"),  # 3: another is in flight
    ):
        bad(e)
    assert bad.violations == 3
    assert "entered the monitor job 1 holds" in bad.examples[0]
    assert "sent by job 1 without the monitor" in bad.examples[1]
    assert "'migrate' sent while 'query-status' was in flight" in bad.examples[2]
