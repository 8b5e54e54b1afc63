"""jobctl: structured-concurrency job control for virtualization managers.

An async job (migration, backup, save, ...) declares interruptible sections;
only allowed regular jobs (queries, abort, destroy) may run, and only inside
them. Leaving a section closes the gate and waits for those jobs (the
barrier), so the async job never shares the VM's monitor. A monitor lock
keeps one command in flight.
"""

from jobctl._domain import (
    AbortHook,
    ActiveAsyncJob,
    ActiveJob,
    AsyncJobPersister,
    Domain,
    MonitorSession,
)
from jobctl._errors import (
    JobAbortedError,
    JobBusyError,
    JobError,
    JobQueueFullError,
    JobStateError,
    JobTimeoutError,
    MonitorClosedError,
    MonitorError,
)
from jobctl._info import (
    AsyncJobInfo,
    DomainInfo,
    DomainStatistics,
    RegularJobInfo,
    WaiterInfo,
)
from jobctl._kinds import DEFAULT_ALLOWED, AsyncJob, Job
from jobctl._monitor import Monitor
from jobctl._trace import (
    TRACE_SCHEMA_VERSION,
    TraceEvent,
    TraceHub,
    TraceKind,
    TraceListener,
    TraceSubscription,
    default_trace_hub,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ALLOWED",
    "TRACE_SCHEMA_VERSION",
    "AbortHook",
    "ActiveAsyncJob",
    "ActiveJob",
    "AsyncJob",
    "AsyncJobInfo",
    "AsyncJobPersister",
    "Domain",
    "DomainInfo",
    "DomainStatistics",
    "Job",
    "JobAbortedError",
    "JobBusyError",
    "JobError",
    "JobQueueFullError",
    "JobStateError",
    "JobTimeoutError",
    "Monitor",
    "MonitorClosedError",
    "MonitorError",
    "MonitorSession",
    "RegularJobInfo",
    "TraceEvent",
    "TraceHub",
    "TraceKind",
    "TraceListener",
    "TraceSubscription",
    "WaiterInfo",
    "__version__",
    "default_trace_hub",
]
