"""Waiting inside interruptible sections, and timing what the domain was closed.

A flow never keeps its domain closed to queries while it waits for something
that does not need the monitor: QEMU's events, a machine's start, the
persister, a pause between polls. It waits in an interruptible section,
where allowed regular jobs (domstats, abort) run, and leaves it only to use
the monitor. Between sections it may poll through the monitor
(``query-migrate``), so ``dom.info()`` shows progress even when QEMU sends
no event for a while.

A :class:`GateClock` is how a flow does all of that for one async job: its
:meth:`~GateClock.section`, :meth:`~GateClock.monitor` and
:meth:`~GateClock.phase` are the job's own, timed, and its
:meth:`~GateClock.closed` is the :class:`ClosedTime` every flow's result
reports.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, final

import anyio
import attrs

from jobctl._core._domain import ActiveAsyncJob
from jobctl._core._errors import JobAbortedError
from jobctl._core._kinds import Job
from jobctl.qemu._deadline import BoundedSession, Deadline
from jobctl.qemu._observed import Observer
from jobctl.qemu._progress import TERMINAL_STATUSES
from jobctl.qmp import EventSubscription, QMPEvent

__all__ = ["ClosedTime", "GateClock", "migration_ended", "wait_in_sections"]

T = TypeVar("T")


def migration_ended(event: QMPEvent) -> str | None:
    """The terminal status (completed, failed, cancelled) a ``MIGRATION``
    event ends its migration with; None for an event that ends none (other
    statuses, events with no status). A ``done`` for :func:`wait_in_sections`."""
    status = event.data.get("status")
    return status if status in TERMINAL_STATUSES else None


@final
@attrs.frozen
class ClosedTime:
    """How long an async job kept its domain closed to regular jobs (QUERY
    among them), in seconds of the event loop's clock, from the job's begin
    to its flow's last step.

    ``total``: no interruptible section of the job was open. Of that time,
    ``monitor``: the flow held the monitor (its own commands; the wait for
    the monitor included), and ``barrier``: on leaving a section, the flow
    waited for the regular jobs that began inside it to end (their own
    monitor commands); in a migration, one side also waits, closed, at the
    other side's barriers where the two hand over (see
    :meth:`GateClock.section`). :attr:`outside_monitor` is the rest: the domain was
    closed while the monitor served neither the flow nor its sections'
    jobs, which is what waiting in sections keeps near zero. ``sections``
    counts the sections opened.

    The flows' masks always allow QUERY, so an open section is open to
    queries. What the job's core does before the flow's body (persisting
    the job's begin) counts as closed; its end (persisting the job's end,
    after the result) is not in the figures.
    """

    total: float
    monitor: float
    barrier: float
    sections: int

    @property
    def outside_monitor(self) -> float:
        """``total`` less ``monitor`` and ``barrier`` (never below 0)."""
        return max(0.0, self.total - self.monitor - self.barrier)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/JSON.md), ``outside_monitor`` included."""
        return {**attrs.asdict(self), "outside_monitor": self.outside_monitor}


@final
class GateClock:
    """One async job's sections, monitor sessions and phases, timed.

    Use it instead of the job's own: :meth:`section` is
    ``ajob.interruptible()``, :meth:`monitor` is ``ajob.monitor()`` (its
    answers told to ``observer``), :meth:`phase` is ``ajob.set_phase()``
    inside a section. :meth:`closed` adds up the time between them.
    Misuse is the core's error as usual (a section inside a section, the
    monitor inside a section: :class:`jobctl.JobStateError`).
    """

    __slots__ = ("_barrier", "_monitor", "_open", "_sections", "_unbounded", "ajob", "observer")

    def __init__(
        self, ajob: ActiveAsyncJob, observer: Observer | None = None, *, flow: str
    ) -> None:
        #: The job.
        self.ajob = ajob
        #: Who is told the job's answers and phases.
        self.observer = observer
        self._unbounded = Deadline(ajob.domain.name, None, flow=flow)
        self._open = 0.0
        self._monitor = 0.0
        self._barrier = 0.0
        self._sections = 0

    @asynccontextmanager
    async def section(self, *, peer: GateClock | None = None) -> AsyncIterator[None]:
        """``ajob.interruptible()``, timed: the time inside is open, the
        barrier on the way out is counted apart.

        ``peer`` is another job's clock (a migration's other side) whose job
        waits, closed, for this section to end: its sections cannot straddle
        this one, since both jobs' scopes nest in one task. The barrier is
        then counted as the peer's barrier too.
        """
        opened: float | None = None
        closing = 0.0
        peer_waits = False
        try:
            async with self.ajob.interruptible():
                opened = anyio.current_time()
                try:
                    yield
                finally:
                    closing = anyio.current_time()
                    peer_waits = peer is not None and not peer.ajob.in_section
        finally:
            if opened is not None:
                barrier = anyio.current_time() - closing
                self._sections += 1
                self._open += closing - opened
                self._barrier += barrier
                if peer is not None and peer_waits:
                    peer._barrier += barrier

    @asynccontextmanager
    async def monitor(self, limit: Deadline | None = None) -> AsyncIterator[BoundedSession]:
        """``ajob.monitor()``, timed, bounded by ``limit`` if given (see
        :meth:`Deadline.monitor`); answers are told to the observer."""
        entered = anyio.current_time()
        try:
            async with (limit or self._unbounded).monitor(
                self.ajob, observer=self.observer
            ) as session:
                yield session
        finally:
            self._monitor += anyio.current_time() - entered

    async def phase(self, phase: str) -> None:
        """Name the job's phase (``ajob.set_phase``) inside a section, so
        that queries get in while the persister saves it (in the open
        section, if one is open already)."""
        if self.observer is not None:
            self.observer.saw_phase(self.ajob.id, phase)
        if self.ajob.in_section:
            await self.ajob.set_phase(phase)
            return
        async with self.section():
            await self.ajob.set_phase(phase)

    async def pause(self, seconds: float) -> None:
        """Sleep in a section (a pause between two polls)."""
        async with self.section():
            await anyio.sleep(seconds)

    def deny_abort(self) -> None:
        """Let no ABORT job into later sections: what they could abort has
        ended (QEMU's migration or block job), and with no abort hook an
        abort delivered would fail a flow that succeeded."""
        if Job.ABORT in self.ajob.allowed:
            self.ajob.set_allowed(self.ajob.allowed - {Job.ABORT})

    def closed(self) -> ClosedTime:
        """The figures until now (call it with no section open)."""
        total = anyio.current_time() - self.ajob.started - self._open
        return ClosedTime(
            total=max(0.0, total),
            monitor=self._monitor,
            barrier=self._barrier,
            sections=self._sections,
        )


async def wait_in_sections(
    clock: GateClock,
    events: EventSubscription,
    done: Callable[[QMPEvent], T | None],
    *,
    poll: Callable[[BoundedSession], Awaitable[T | None]] | None = None,
    interval: float | Callable[[], float] = math.inf,
    timeout: float | None = None,
) -> tuple[T, JobAbortedError | None]:
    """Wait until an event makes ``done`` return a result, or ``poll`` does.

    Events are awaited inside interruptible sections of the clock's job;
    every ``interval`` seconds the section is left and ``poll`` runs through
    the job's monitor. ``interval`` may be a function, asked again after each
    event (a flow stops polling while QEMU is known to stall). An abort
    delivered meanwhile does not end the wait: the flow must see its work
    stop (QEMU's event that it was cancelled) before it cleans up, so the
    :class:`JobAbortedError` is returned beside the result. Raises
    :class:`TimeoutError` after ``timeout`` seconds, and whatever the
    subscription raises (the monitor closed).
    """
    every = interval if callable(interval) else lambda: interval
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    aborted: JobAbortedError | None = None
    while True:
        result: T | None = None
        try:
            async with clock.section():
                entered = anyio.current_time()
                with anyio.CancelScope(deadline=min(deadline, entered + every())) as scope:
                    while result is None:
                        result = done(await events.receive())
                        scope.deadline = min(deadline, entered + every())
        except JobAbortedError as exc:
            aborted = aborted or exc
        if result is not None:
            return result, aborted
        if anyio.current_time() >= deadline:
            raise TimeoutError(f"no result within {timeout:g} s")
        if poll is not None:
            async with clock.monitor() as mon:
                result = await poll(mon)
            if result is not None:
                return result, aborted
