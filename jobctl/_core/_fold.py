"""A domain's state as its trace tells it: one fold for every reader of the trace.

The live feed (its snapshots), the invariant checker (its model) and the
trace recorder (its per-domain view) all rebuild a domain's state from the
trace, and they all rebuild it here: :func:`fold_event` takes a
:class:`TracedDomain` and one :class:`~jobctl.TraceEvent` and returns the next
:class:`TracedDomain`. Each reader keeps its own duties on top (the checker
judges every transition against the rules, the feed makes JSON, the recorder
keeps the events); none of them works out on its own who holds what.

The state says what the trace says, nothing more: it is built from the events
alone, never from the core's bookkeeping, so a core that forgets a step still
shows it in the state. Every record keeps the event that told it (a regular
job its ``job.begin``, the monitor's holder its ``monitor.enter``), so a reader
can point at the evidence.

Like the core, the fold knows job kinds by their trace names and nothing of
the monitor's commands: a command is the opaque name ``command.sent`` carries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, final

import attrs

from jobctl._core._trace import TraceEvent, TraceKind

__all__ = [
    "TracedAsyncJob",
    "TracedBarrier",
    "TracedDomain",
    "TracedJob",
    "TracedMonitor",
    "TracedSection",
    "TracedWaiter",
    "fold_event",
    "fold_trace",
]


def _job_id(event: TraceEvent) -> int:
    job_id = event.job_id
    # The fold keeps no event without a job id (fold_event ignores those).
    assert job_id is not None, event
    return job_id


@final
@attrs.frozen
class TracedJob:
    """A regular job that began and has not ended."""

    #: Its ``job.begin`` event.
    begin: TraceEvent
    #: Whether it began while the async job's section was open, as the
    #: trace's ``gate.open`` / ``gate.close`` tell it (``job.begin``'s own
    #: ``in_section`` is a claim the checker compares with this).
    in_section: bool

    @property
    def id(self) -> int:
        """The job's process-unique id, from its ``job.begin``."""
        return _job_id(self.begin)

    @property
    def kind(self) -> str | None:
        """The job kind's name (``"QUERY"``)."""
        return self.begin.job

    @property
    def owner(self) -> str | None:
        """Who asked for the job, as its ``job.begin`` names it (or None)."""
        return self.begin.owner

    @property
    def started(self) -> float:
        """When it began: its ``job.begin``'s loop-clock time."""
        return self.begin.time


@final
@attrs.frozen
class TracedWaiter:
    """A request queued for a job (regular or async) that has not begun or failed."""

    #: Its ``job.wait`` event.
    wait: TraceEvent
    #: Whether it asks for an async job.
    is_async: bool

    @property
    def id(self) -> int:
        """The id of the job it asks for, from its ``job.wait``."""
        return _job_id(self.wait)

    @property
    def kind(self) -> str | None:
        """The job kind's name (``"MODIFY"``, ``"SAVE"``)."""
        return self.wait.job

    @property
    def owner(self) -> str | None:
        """Who asked, as its ``job.wait`` names it (or None)."""
        return self.wait.owner

    @property
    def since(self) -> float:
        """When it began to queue: its ``job.wait``'s loop-clock time."""
        return self.wait.time


@final
@attrs.frozen
class TracedSection:
    """The async job's open interruptible section."""

    #: Its ``gate.open`` event.
    opened: TraceEvent
    #: Regular jobs that began in it and have not ended.
    jobs: frozenset[int] = frozenset()

    @property
    def since(self) -> float:
        """When the section opened: its ``gate.open``'s loop-clock time."""
        return self.opened.time


@final
@attrs.frozen
class TracedBarrier:
    """The barrier the async job waits at, from ``barrier.start`` to ``barrier.end``."""

    #: Its ``barrier.start`` event.
    start: TraceEvent
    #: The job ids ``barrier.start`` says it waits for. What the begins and
    #: ends of the trace say is :attr:`TracedAsyncJob.barrier_pending`; the
    #: checker compares the two.
    reported: tuple[int, ...]

    @property
    def since(self) -> float:
        """When the barrier started: its ``barrier.start``'s loop-clock time."""
        return self.start.time


@final
@attrs.frozen
class TracedAsyncJob:
    """An async job: the running one, or the last one that ended (then ``end``
    is its ``async.end`` and its section and barrier are gone)."""

    #: Its ``async.begin`` event.
    begin: TraceEvent
    #: The regular job kinds (names) it lets into its sections.
    allowed: frozenset[str]
    #: When it began, or named its last phase.
    phase_since: float
    #: The last phase it named; None until it names one.
    phase: str | None = None
    #: The last progress it reported.
    progress: Mapping[str, Any] | None = None
    #: Its open section, or None.
    section: TracedSection | None = None
    #: The ``gate.close`` of the last section it left.
    closed: TraceEvent | None = None
    #: Regular jobs that began in the section it left last and have not
    #: ended: what its barrier waits for.
    barrier_pending: frozenset[int] = frozenset()
    #: The barrier it waits at, until ``barrier.end``.
    barrier: TracedBarrier | None = None
    #: The reason given to ``Domain.abort``, once an abort was requested.
    abort_requested: str | None = None
    #: Whether an abort was delivered to it.
    abort_delivered: bool = False
    #: The ``destroy.request`` that pre-empted it.
    destroy_request: TraceEvent | None = None
    #: Whether the pre-emption was delivered to its body.
    destroy_delivered: bool = False
    #: Its ``async.end``, once it ended.
    end: TraceEvent | None = None

    @property
    def id(self) -> int:
        """The async job's process-unique id, from its ``async.begin``."""
        return _job_id(self.begin)

    @property
    def kind(self) -> str | None:
        """The async job kind's name (``"MIGRATION_OUT"``)."""
        return self.begin.job

    @property
    def owner(self) -> str | None:
        """Who asked for the async job, as its ``async.begin`` names it (or None)."""
        return self.begin.owner

    @property
    def started(self) -> float:
        """When it began: its ``async.begin``'s loop-clock time."""
        return self.begin.time

    @property
    def interruptible(self) -> bool:
        """Whether its section is open."""
        return self.section is not None

    @property
    def destroy_requested(self) -> bool:
        """Whether a ``destroy.request`` pre-empted it (delivered to its body
        or not: see :attr:`destroy_delivered`).
        """
        return self.destroy_request is not None

    @property
    def outcome(self) -> str | None:
        """None while it runs; then ``async.end``'s ``outcome``."""
        return None if self.end is None else self.end.detail.get("outcome")

    @property
    def error(self) -> str | None:
        """``async.end``'s ``error``, once it ended."""
        return None if self.end is None else self.end.detail.get("error")

    @property
    def ended(self) -> float | None:
        """None while it runs; then its ``async.end``'s loop-clock time."""
        return None if self.end is None else self.end.time


@final
@attrs.frozen
class TracedMonitor:
    """The domain's monitor: its holder, the sessions queued for it, and the
    command in flight."""

    #: The holder's ``monitor.enter``, or None.
    entered: TraceEvent | None = None
    #: Job ids of the sessions waiting for it, in arrival order.
    waiting: tuple[int, ...] = ()
    #: The ``command.sent`` of the command in flight, or None.
    command: TraceEvent | None = None

    @property
    def holder(self) -> int | None:
        """The holder's job id, or None."""
        return None if self.entered is None else self.entered.job_id

    @property
    def idle(self) -> bool:
        """Nothing on the monitor: no holder, no session waiting for it, no
        command in flight.
        """
        return self.entered is None and not self.waiting and self.command is None


@final
@attrs.frozen
class TracedDomain:
    """One domain's job state as its trace tells it (see :func:`fold_event`).

    ``TracedDomain(name)`` is the state of a domain before its first event.
    """

    name: str
    #: Running regular jobs, in the order they began.
    regular_jobs: tuple[TracedJob, ...] = ()
    #: The running async job, or None.
    async_job: TracedAsyncJob | None = None
    #: Queued requests, in arrival order.
    waiters: tuple[TracedWaiter, ...] = ()
    #: Its holder, its waiting sessions and the command in flight.
    monitor: TracedMonitor = attrs.field(factory=TracedMonitor)
    #: The last async job that ended.
    completed_async_job: TracedAsyncJob | None = None
    #: The last ``barrier.end``.
    last_barrier: TraceEvent | None = None

    def regular_job(self, job_id: int | None) -> TracedJob | None:
        """The running regular job ``job_id``, or None."""
        return next((j for j in self.regular_jobs if j.id == job_id), None)

    def waiter(self, job_id: int | None) -> TracedWaiter | None:
        """The queued request of job ``job_id``, or None."""
        return next((w for w in self.waiters if w.id == job_id), None)

    @property
    def monitor_holder(self) -> int | None:
        """The job id of the monitor's holder, or None."""
        return self.monitor.holder

    @property
    def barrier_pending(self) -> frozenset[int]:
        """Regular jobs the running async job's barrier waits for."""
        ajob = self.async_job
        return frozenset() if ajob is None else ajob.barrier_pending

    @property
    def idle(self) -> bool:
        """No job, no waiter, nothing on the monitor (a barrier implies a job)."""
        return (
            not self.regular_jobs
            and self.async_job is None
            and not self.waiters
            and self.monitor.idle
        )


def fold_event(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    """The state of ``state``'s domain after ``event``.

    Guarantees: a pure function of its arguments, so the state after a trace
    is a function of the trace's events alone, whoever folds them. It never
    raises for a well-formed event of the state's domain (detail fields as
    :class:`~jobctl.TraceKind` documents them); it raises ValueError for an
    event of another domain, and TypeError or ValueError for a detail field
    it reads that is malformed (``barrier.start``'s ``pending`` not a list of
    job ids).

    An event that does not fit the state leaves it unchanged: one without a
    job id, a job that ends without having begun, a gate, phase, barrier or
    end of a job that is not the running async job, a monitor exit by a job
    not holding it, a reply for no command in flight, a second ``job.wait``
    of one request (the checker reports each of these). Kinds that change no
    state (``job.refused``, ``abort.failed``, ``monitor.refused``,
    ``trace.listener_failed``) leave it unchanged too. The fold reads trace
    schema 2 (:data:`~jobctl.TRACE_SCHEMA_VERSION`), to which fields and
    kinds may be added without a version bump: a detail field or a kind it
    does not read is ignored, never an error.
    """
    if event.domain != state.name:
        raise ValueError(
            f"an event of domain {event.domain!r} cannot fold into domain {state.name!r}"
        )
    if event.job_id is None:
        return state
    step = _STEPS.get(event.kind)
    return state if step is None else step(state, event)


def fold_trace(name: str, events: Iterable[TraceEvent]) -> TracedDomain:
    """The state of domain ``name`` after ``events`` (a trace from the
    domain's start; other domains' events are skipped)."""
    state = TracedDomain(name)
    for event in events:
        if event.domain == name:
            state = fold_event(state, event)
    return state


# -- the steps, one per kind that changes state ----------------------------------


def _names(value: object) -> frozenset[str]:
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(str(v) for v in value)
    return frozenset()


def _without_waiter(state: TracedDomain, job_id: int | None) -> TracedDomain:
    kept = tuple(w for w in state.waiters if w.id != job_id)
    return state if len(kept) == len(state.waiters) else attrs.evolve(state, waiters=kept)


def _own_async_job(state: TracedDomain, event: TraceEvent) -> TracedAsyncJob | None:
    """The running async job, if ``event`` is about it."""
    ajob = state.async_job
    return ajob if ajob is not None and ajob.id == event.job_id else None


def _update_async_job(state: TracedDomain, event: TraceEvent, **changes: Any) -> TracedDomain:
    ajob = _own_async_job(state, event)
    if ajob is None:
        return state
    return attrs.evolve(state, async_job=attrs.evolve(ajob, **changes))


def _job_wait(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    if state.waiter(event.job_id) is not None:
        return state
    waiter = TracedWaiter(event, bool(event.detail.get("async", False)))
    return attrs.evolve(state, waiters=(*state.waiters, waiter))


def _job_wait_failed(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _without_waiter(state, event.job_id)


def _job_begin(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    state = _without_waiter(state, event.job_id)
    ajob = state.async_job
    section = None if ajob is None else ajob.section
    job = TracedJob(event, in_section=section is not None)
    jobs = state.regular_jobs
    if state.regular_job(event.job_id) is None:
        jobs = (*jobs, job)
    else:
        jobs = tuple(job if j.id == job.id else j for j in jobs)
    if ajob is not None and section is not None:
        section = attrs.evolve(section, jobs=section.jobs | {job.id})
        ajob = attrs.evolve(ajob, section=section)
    return attrs.evolve(state, regular_jobs=jobs, async_job=ajob)


def _job_end(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    job_id = _job_id(event)
    jobs = tuple(j for j in state.regular_jobs if j.id != job_id)
    ajob = state.async_job
    if ajob is not None:
        section = ajob.section
        if section is not None and job_id in section.jobs:
            section = attrs.evolve(section, jobs=section.jobs - {job_id})
        ajob = attrs.evolve(ajob, section=section, barrier_pending=ajob.barrier_pending - {job_id})
    return attrs.evolve(state, regular_jobs=jobs, async_job=ajob)


def _async_begin(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    state = _without_waiter(state, event.job_id)
    ajob = TracedAsyncJob(event, _names(event.detail.get("allowed")), phase_since=event.time)
    return attrs.evolve(state, async_job=ajob)


def _async_end(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    ajob = _own_async_job(state, event)
    if ajob is None:
        return state
    completed = attrs.evolve(
        ajob, end=event, section=None, barrier=None, barrier_pending=frozenset()
    )
    return attrs.evolve(state, async_job=None, completed_async_job=completed)


def _async_phase(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    phase = event.detail.get("phase")
    return _update_async_job(state, event, phase=phase, phase_since=event.time)


def _async_allowed(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_async_job(state, event, allowed=_names(event.detail.get("allowed")))


def _async_progress(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_async_job(state, event, progress=event.detail.get("progress"))


def _gate_open(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_async_job(state, event, section=TracedSection(event))


def _gate_close(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    ajob = _own_async_job(state, event)
    if ajob is None or ajob.section is None:
        return state
    pending = frozenset(i for i in ajob.section.jobs if state.regular_job(i) is not None)
    return _update_async_job(state, event, section=None, closed=event, barrier_pending=pending)


def _barrier_start(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    reported = tuple(int(i) for i in event.detail.get("pending", ()))
    return _update_async_job(state, event, barrier=TracedBarrier(event, reported))


def _barrier_end(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    # An abandoned barrier ends after its async job: it is still the last barrier.
    return attrs.evolve(_update_async_job(state, event, barrier=None), last_barrier=event)


def _abort_request(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_async_job(state, event, abort_requested=event.detail.get("reason"))


def _abort_delivered(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_async_job(state, event, abort_delivered=True)


def _destroy_request(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    ajob = _own_async_job(state, event)
    if ajob is None or ajob.destroy_request is not None:
        return state
    return _update_async_job(state, event, destroy_request=event)


def _destroy_delivered(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_async_job(state, event, destroy_delivered=True)


def _update_monitor(state: TracedDomain, **changes: Any) -> TracedDomain:
    return attrs.evolve(state, monitor=attrs.evolve(state.monitor, **changes))


def _monitor_wait(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    waiting = state.monitor.waiting
    if event.job_id in waiting:
        return state
    return _update_monitor(state, waiting=(*waiting, _job_id(event)))


def _monitor_wait_failed(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    waiting = tuple(i for i in state.monitor.waiting if i != event.job_id)
    return _update_monitor(state, waiting=waiting)


def _monitor_enter(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    waiting = tuple(i for i in state.monitor.waiting if i != event.job_id)
    return _update_monitor(state, entered=event, waiting=waiting)


def _monitor_exit(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    if state.monitor.holder != event.job_id:
        return state
    return _update_monitor(state, entered=None)


def _command_sent(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    return _update_monitor(state, command=event)


def _command_answered(state: TracedDomain, event: TraceEvent) -> TracedDomain:
    command = state.monitor.command
    if command is None or command.job_id != event.job_id:
        return state
    return _update_monitor(state, command=None)


_STEPS: Final[dict[TraceKind, Callable[[TracedDomain, TraceEvent], TracedDomain]]] = {
    TraceKind.JOB_WAIT: _job_wait,
    TraceKind.JOB_WAIT_FAILED: _job_wait_failed,
    TraceKind.JOB_BEGIN: _job_begin,
    TraceKind.JOB_END: _job_end,
    TraceKind.ASYNC_BEGIN: _async_begin,
    TraceKind.ASYNC_END: _async_end,
    TraceKind.ASYNC_PHASE: _async_phase,
    TraceKind.ASYNC_ALLOWED: _async_allowed,
    TraceKind.ASYNC_PROGRESS: _async_progress,
    TraceKind.GATE_OPEN: _gate_open,
    TraceKind.GATE_CLOSE: _gate_close,
    TraceKind.BARRIER_START: _barrier_start,
    TraceKind.BARRIER_END: _barrier_end,
    TraceKind.ABORT_REQUEST: _abort_request,
    TraceKind.ABORT_DELIVERED: _abort_delivered,
    TraceKind.DESTROY_REQUEST: _destroy_request,
    TraceKind.DESTROY_DELIVERED: _destroy_delivered,
    TraceKind.MONITOR_WAIT: _monitor_wait,
    TraceKind.MONITOR_WAIT_FAILED: _monitor_wait_failed,
    TraceKind.MONITOR_ENTER: _monitor_enter,
    TraceKind.MONITOR_EXIT: _monitor_exit,
    TraceKind.COMMAND_SENT: _command_sent,
    TraceKind.COMMAND_ANSWERED: _command_answered,
}
