"""Frozen snapshots of a domain's job state: what ``Domain.info()`` and
``Domain.statistics()`` return."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import attrs

from jobctl._core._kinds import AsyncJob, Job

__all__ = ["AsyncJobInfo", "DomainInfo", "DomainStatistics", "RegularJobInfo", "WaiterInfo"]


@final
@attrs.frozen
class RegularJobInfo:
    """An active regular job. ``started`` is on the event loop's clock."""

    id: int
    kind: Job
    owner: str | None
    started: float
    #: Whether the job began inside the async job's interruptible section.
    in_section: bool


@final
@attrs.frozen
class AsyncJobInfo:
    """An async job, running (``outcome is None``) or completed."""

    id: int
    kind: AsyncJob
    owner: str | None
    phase: str
    #: Whether the job is inside an interruptible section right now.
    interruptible: bool
    allowed: frozenset[Job]
    started: float
    progress: Mapping[str, Any]
    #: ``None`` while running; then ``"ok"``, ``"error"``, ``"cancelled"``,
    #: ``"aborted"`` or ``"destroyed"``.
    outcome: str | None = None
    ended: float | None = None
    #: The error's text for an outcome other than ``"ok"``.
    error: str | None = None


@final
@attrs.frozen
class WaiterInfo:
    """A request waiting to begin a job."""

    kind: Job | AsyncJob
    owner: str | None
    since: float


@final
@attrs.frozen
class DomainInfo:
    """A consistent snapshot of one domain's job state."""

    name: str
    regular_jobs: tuple[RegularJobInfo, ...]
    async_job: AsyncJobInfo | None
    waiters: tuple[WaiterInfo, ...]
    #: The last completed async job, kept until one ``info()`` call returned it.
    completed_async_job: AsyncJobInfo | None
    #: Job id of the monitor's holder, if any.
    monitor_holder: int | None
    #: Ids of regular jobs that began in a section the async job has left.
    barrier_pending: tuple[int, ...]

    @property
    def idle(self) -> bool:
        """No job, no waiter, no monitor holder and no pending barrier."""
        return (
            not self.regular_jobs
            and self.async_job is None
            and not self.waiters
            and self.monitor_holder is None
            and not self.barrier_pending
        )


@final
@attrs.frozen
class DomainStatistics:
    """Counters since the domain was created."""

    #: Regular jobs begun.
    begins: int
    #: Async jobs begun.
    async_begins: int
    #: Requests that had to queue before beginning (or failing).
    waits: int
    #: Requests that timed out while queued.
    timeouts: int
    #: ``nowait`` requests that could not begin at once.
    busy: int
    #: Requests refused because the queue was full.
    queue_full: int
    #: Queued requests cancelled by their caller.
    cancelled_waits: int
    #: Times an async job had to wait at a barrier.
    barrier_waits: int
    #: Total time spent waiting at barriers, in seconds.
    barrier_wait_time: float
    #: Aborts delivered through ``Domain.abort``.
    aborts: int
    #: Async jobs pre-empted by DESTROY.
    destroys: int
    #: Commands executed through the monitor.
    commands: int
    #: Current queue length.
    waiting: int
