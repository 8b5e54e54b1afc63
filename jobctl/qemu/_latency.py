"""Latency samples and their summary (count, p50, p99, max).

:meth:`LatencySummary.of` is exact, for a list of samples;
:class:`LatencyHistogram` keeps a stream of them in bounded memory (the demo
may run for hours), with percentiles within 1 %.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, final

import attrs

from jobctl._percentile import percentile

__all__ = ["LatencyHistogram", "LatencySummary", "percentile"]

#: Histogram buckets grow by 1 %, from 1 microsecond.
_GROWTH: Final = 1.01
_SMALLEST: Final = 1e-6


@final
@attrs.frozen
class LatencySummary:
    """How many samples, and their p50, p99 and maximum, in seconds."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> LatencySummary:
        """The exact summary of ``samples`` (nearest-rank percentiles); all
        zeros for no samples."""
        ordered = sorted(samples)
        return cls(
            len(ordered),
            percentile(ordered, 0.50),
            percentile(ordered, 0.99),
            ordered[-1] if ordered else 0.0,
        )

    def as_dict(self) -> dict[str, Any]:
        """For JSON: times in milliseconds."""
        return {
            "count": self.count,
            "p50_ms": round(self.p50 * 1000, 3),
            "p99_ms": round(self.p99 * 1000, 3),
            "max_ms": round(self.max * 1000, 3),
        }

    def describe(self) -> str:
        """One line for people, in milliseconds; ``none`` for no samples."""
        if not self.count:
            return "none"
        return (
            f"p50 {self.p50 * 1000:.2f} ms  p99 {self.p99 * 1000:.2f} ms  "
            f"max {self.max * 1000:.2f} ms  ({self.count})"
        )


@final
class LatencyHistogram:
    """Latencies in buckets 1 % wide: bounded memory, percentiles within 1 %
    (a bucket's upper bound, never beyond the largest sample), exact maximum."""

    __slots__ = ("_buckets", "count", "max")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Count one latency; a negative or NaN one is a ValueError, and
        memory does not grow with the number of samples."""
        if not seconds >= 0:
            raise ValueError(f"a latency is >= 0 seconds, not {seconds!r}")
        index = 0 if seconds <= _SMALLEST else math.ceil(math.log(seconds / _SMALLEST, _GROWTH))
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.max = max(self.max, seconds)

    def percentile(self, fraction: float) -> float:
        """The nearest-rank percentile (0.0 with no samples)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a percentile is a fraction within [0, 1], not {fraction!r}")
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return min(self.max, _SMALLEST * _GROWTH**index)
        raise AssertionError("unreachable: the buckets hold every sample")

    def summary(self) -> LatencySummary:
        """The histogram as a summary: percentiles within 1 %, exact maximum."""
        return LatencySummary(self.count, self.percentile(0.5), self.percentile(0.99), self.max)
