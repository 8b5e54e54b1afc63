"""Frozen snapshots of a domain's job state: what ``Domain.info()`` and
``Domain.statistics()`` return.

Each converts to a JSON-ready dict with ``to_json()`` (the schema is in
docs/JSON.md): job kinds by their value, every time on the event loop's
clock given with its wall-clock time beside it (a :class:`Stamp`'s JSON),
converted through the moment the snapshot was taken (``DomainInfo.taken``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import attrs

from jobctl._core._clock import Stamp
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

    def to_json(self, taken: Stamp) -> dict[str, Any]:
        """A JSON-ready dict; ``started`` converted through ``taken``."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "owner": self.owner,
            "started": taken.at(self.started).to_json(),
            "in_section": self.in_section,
        }


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

    def to_json(self, taken: Stamp) -> dict[str, Any]:
        """A JSON-ready dict; ``started`` and ``ended`` converted through
        ``taken``; ``allowed`` sorted; ``progress`` as a plain dict."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "owner": self.owner,
            "phase": self.phase,
            "interruptible": self.interruptible,
            "allowed": sorted(job.value for job in self.allowed),
            "started": taken.at(self.started).to_json(),
            "progress": dict(self.progress),
            "outcome": self.outcome,
            "ended": None if self.ended is None else taken.at(self.ended).to_json(),
            "error": self.error,
        }


@final
@attrs.frozen
class WaiterInfo:
    """A request waiting to begin a job."""

    kind: Job | AsyncJob
    owner: str | None
    since: float

    def to_json(self, taken: Stamp) -> dict[str, Any]:
        """A JSON-ready dict; ``since`` converted through ``taken``."""
        return {
            "kind": self.kind.value,
            "owner": self.owner,
            "since": taken.at(self.since).to_json(),
        }


@final
@attrs.frozen
class DomainInfo:
    """A consistent snapshot of one domain's job state."""

    name: str
    regular_jobs: tuple[RegularJobInfo, ...]
    async_job: AsyncJobInfo | None
    waiters: tuple[WaiterInfo, ...]
    #: The last completed async job, kept until the next one completes and
    #: replaces it: reading it does not consume it, whoever reads first.
    completed_async_job: AsyncJobInfo | None
    #: Job id of the monitor's holder, if any.
    monitor_holder: int | None
    #: Ids of regular jobs that began in a section the async job has left.
    barrier_pending: tuple[int, ...]
    #: When the snapshot was taken, on both clocks: every other time in it
    #: converts to wall-clock time through this one.
    taken: Stamp

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/JSON.md): every time as a :class:`Stamp`'s
        JSON, converted through :attr:`taken`."""
        taken = self.taken
        return {
            "name": self.name,
            "idle": self.idle,
            "regular_jobs": [job.to_json(taken) for job in self.regular_jobs],
            "async_job": None if self.async_job is None else self.async_job.to_json(taken),
            "waiters": [waiter.to_json(taken) for waiter in self.waiters],
            "completed_async_job": (
                None
                if self.completed_async_job is None
                else self.completed_async_job.to_json(taken)
            ),
            "monitor_holder": self.monitor_holder,
            "barrier_pending": list(self.barrier_pending),
            "taken": taken.to_json(),
        }

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

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the counters, by their names (docs/JSON.md)."""
        return attrs.asdict(self)
