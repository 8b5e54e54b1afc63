"""The nearest-rank percentile, shared by the reports of every layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ascending samples: the smallest sample
    with at least ``fraction`` of all samples at or below it (0.0 for none).
    ``fraction`` is within [0, 1]; 0 gives the smallest sample."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a percentile is a fraction within [0, 1], not {fraction!r}")
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
