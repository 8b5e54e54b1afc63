"""The exceptions of jobctl's job core.

Every error the job core raises is a :class:`JobError`, one level below it
and named by the situation a caller handles, so a manager can catch the
whole family in one place and still tell the cases apart by type. What a
monitor raises (an error reply, a channel that is gone) is the monitor's
own error: the core passes it on unchanged.
"""

from __future__ import annotations

__all__ = [
    "JobAbortedError",
    "JobBusyError",
    "JobError",
    "JobQueueFullError",
    "JobStateError",
    "JobTimeoutError",
]


class JobError(Exception):
    """Base class of every error raised by jobctl's job core."""


class JobTimeoutError(JobError, TimeoutError):
    """A job (or a monitor entry) waited for its timeout and could not begin.

    The message names the domain, the job that could not begin and who holds
    the domain (kind, owner, how long, phase, interruptible or not). A
    ``timeout=0`` that finds the domain taken is this too: it waited for
    nothing, and timed out.
    """


class JobBusyError(JobError):
    """A ``nowait`` request (a job's begin, or a monitor entry) could not go
    on at once, and was refused without waiting. Not a :class:`TimeoutError`:
    nothing was waited for. The message names who holds the domain."""


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
