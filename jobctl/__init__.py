"""jobctl: structured-concurrency job control for virtualization managers.

An async job (migration, backup, save, ...) declares interruptible sections;
only allowed regular jobs (queries, abort, destroy) may run, and only inside
them. Leaving a section closes the gate and waits for those jobs (the
barrier), so the async job never shares the VM's monitor. A monitor lock
keeps one command in flight.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobctl._core._domain import (
        AbortHook,
        ActiveAsyncJob,
        ActiveJob,
        AsyncJobPersister,
        Domain,
        MonitorSession,
    )
    from jobctl._core._entity import Entity, LockMode, Need
    from jobctl._core._errors import (
        JobAbortedError,
        JobBusyError,
        JobError,
        JobQueueFullError,
        JobStateError,
        JobTimeoutError,
    )
    from jobctl._core._fold import (
        TracedAsyncJob,
        TracedBarrier,
        TracedDomain,
        TracedJob,
        TracedMonitor,
        TracedSection,
        TracedWaiter,
        fold_event,
        fold_trace,
    )
    from jobctl._core._info import (
        AsyncJobInfo,
        DomainInfo,
        DomainStatistics,
        RegularJobInfo,
        WaiterInfo,
    )
    from jobctl._core._kinds import DEFAULT_ALLOWED, AsyncJob, Job
    from jobctl._core._monitor import Monitor
    from jobctl._core._trace import (
        TRACE_SCHEMA_VERSION,
        TRACE_VALUES,
        TraceEvent,
        TraceHub,
        TraceKind,
        TraceListener,
        TraceSubscription,
        default_trace_hub,
    )

__version__ = "0.1.0"

# The core loads on first use of one of its names, so that ``import
# jobctl.qmp`` (or any other part that does not need the core) loads only
# what it needs.
_CORE = frozenset(
    [
        "AbortHook",
        "ActiveAsyncJob",
        "ActiveJob",
        "AsyncJob",
        "AsyncJobInfo",
        "AsyncJobPersister",
        "DEFAULT_ALLOWED",
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
        "TRACE_SCHEMA_VERSION",
        "TRACE_VALUES",
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
        "default_trace_hub",
        "fold_event",
        "fold_trace",
    ]
)


def __getattr__(name: str) -> Any:
    if name in _CORE:
        value = getattr(importlib.import_module("jobctl._core"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jobctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CORE)


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
