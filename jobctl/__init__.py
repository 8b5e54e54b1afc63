"""jobctl: structured-concurrency job control for virtualization managers.

An async job (migration, backup, save, ...) declares interruptible sections;
only allowed regular jobs (queries, abort, destroy) may run, and only inside
them. Leaving a section closes the gate and waits for those jobs (the
barrier), so the async job never shares the VM's monitor. A monitor lock
keeps one command in flight.
"""

# ruff: noqa: F405 (the names in __all__ come from the core, loaded lazily)
import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobctl._core import *  # noqa: F403

#: The installed distribution's version (``virt-jobctl``; written once, in
#: pyproject.toml). Releases are tagged ``v<version>`` (CHANGELOG.md).
__version__: str = importlib.metadata.version("virt-jobctl")

# The core's public names (the same list as ``jobctl._core.__all__``: a test
# checks it) and the version.
__all__ = [
    "DEFAULT_ALLOWED",
    "TRACE_SCHEMA_VERSION",
    "TRACE_VALUES",
    "AbortHook",
    "ActiveAsyncJob",
    "ActiveJob",
    "AsyncJob",
    "AsyncJobInfo",
    "AsyncJobPersister",
    "Domain",
    "DomainInfo",
    "DomainStatistics",
    "Entity",
    "Job",
    "JobAbortedError",
    "JobBusyError",
    "JobError",
    "JobQueueFullError",
    "JobStateError",
    "JobTimeoutError",
    "LockMode",
    "Monitor",
    "MonitorSession",
    "Need",
    "RegularJobInfo",
    "Stamp",
    "TraceEvent",
    "TraceHub",
    "TraceKind",
    "TraceListener",
    "TraceSubscription",
    "TracedAsyncJob",
    "TracedBarrier",
    "TracedDomain",
    "TracedJob",
    "TracedMonitor",
    "TracedSection",
    "TracedWaiter",
    "WaiterInfo",
    "__version__",
    "default_trace_hub",
    "fold_event",
    "fold_trace",
]

# The core loads on first use of one of its names, so that ``import
# jobctl.qmp`` (or any other part that does not need the core) loads only
# what it needs.
_CORE = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _CORE:
        value = getattr(importlib.import_module("jobctl._core"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jobctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CORE)
