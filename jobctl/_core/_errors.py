"""The exceptions of jobctl's job core.

Every error a caller of the job core can meet is a :class:`JobError`, so a
manager can catch the whole family in one place and still tell the cases
apart by type.
"""

from __future__ import annotations

__all__ = [
    "JobAbortedError",
    "JobBusyError",
    "JobError",
    "JobQueueFullError",
    "JobStateError",
    "JobTimeoutError",
    "MonitorClosedError",
    "MonitorError",
]


class JobError(Exception):
    """Base class of every error raised by jobctl's job layer."""


class JobTimeoutError(JobError):
    """A job could not begin within its wait timeout.

    The message names the domain, the job that could not begin and who holds
    the domain (kind, owner, how long, phase, interruptible or not).
    """


class JobBusyError(JobTimeoutError):
    """A ``nowait`` request (a job's begin, or a monitor entry) could not go
    on at once: a :class:`JobTimeoutError` with a zero timeout."""


class JobQueueFullError(JobError):
    """The domain's wait queue is at ``max_queued``: the request was refused
    at once instead of queueing."""


class JobStateError(JobError):
    """An operation is not valid in the current state.

    For example: entering the monitor twice from one task, using a monitor
    session after its block ended, entering the monitor from inside an
    interruptible section, or beginning a nested job.
    """


class JobAbortedError(JobError):
    """The async job was aborted (``Domain.abort``) or pre-empted by a DESTROY."""

    def __init__(self, message: str, *, reason: str = "aborted") -> None:
        super().__init__(message)
        self.reason = reason


class MonitorError(JobError):
    """Base class of errors that come from a monitor (the VM's control channel)."""


class MonitorClosedError(MonitorError):
    """The monitor is gone: end of stream, a reset, a broken reply or a dead
    process. Every waiter on the monitor fails with this at once."""
