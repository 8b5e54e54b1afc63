"""How the benches print a figure measured over repeated rounds: the median
and the range, so a reader sees the spread beside the number."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["ratios", "spread"]


def spread(values: Sequence[float], *, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``median (min-max)`` of ``values`` times ``scale``, with ``digits``
    decimals and ``unit`` after the median (e.g. ``3.21x (2.90-3.40)``)."""
    if not values:
        raise ValueError("no values to summarise")
    lo, mid, hi = (v * scale for v in (min(values), statistics.median(values), max(values)))
    return f"{mid:,.{digits}f}{unit} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios of two series measured side by side, round by round."""
    if len(numerators) != len(denominators):
        raise ValueError("the two series have different numbers of rounds")
    return [n / d for n, d in zip(numerators, denominators, strict=True)]
