"""The metrics exporter's errors, rooted in :class:`MetricsError`."""

from __future__ import annotations

__all__ = [
    "DomainNameTakenError",
    "MetricsConfigError",
    "MetricsError",
    "MetricsLoopError",
    "UnknownDomainError",
]


class MetricsError(Exception):
    """The root of the metrics exporter's errors."""


class MetricsConfigError(MetricsError, ValueError):
    """A bad setting: histogram buckets that are not increasing positive
    numbers, a port outside 0..65535."""


class MetricsLoopError(MetricsError, RuntimeError):
    """:class:`~jobctl.metrics.JobMetrics` was made outside an event loop: it
    must be made in the loop that runs its domains, where it reads them."""


class DomainNameTakenError(MetricsError, ValueError):
    """Another domain of that name is already exported (the name is the
    ``domain`` label, and the trace tells domains apart by name)."""


class UnknownDomainError(MetricsError, LookupError):
    """No exported domain has that name."""
