"""The job core: domains, regular and async jobs, sections, the monitor lock.

It knows nothing of QMP's commands: a :class:`Monitor` is any serial
channel with ``execute(command, arguments)``. Public names are re-exported
from :mod:`jobctl`; nothing here imports another part of jobctl.
"""

from jobctl._core._clock import Stamp
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
from jobctl._public import publish

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
    "default_trace_hub",
    "fold_event",
    "fold_trace",
]


# The public names show their public path, jobctl.Name (jobctl re-exports
# them), in reprs, tracebacks, pickles and the reference.
publish(globals(), "jobctl")
