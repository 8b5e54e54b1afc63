"""A domain's job state: regular jobs, the async job and its interruptible
sections, the barrier, fair waiting, and the monitor lock.

Rules (each one a guarantee the property tests check on the trace):

* QUERY jobs share the domain with each other; every other regular job is
  exclusive against all regular jobs. At most one async job runs.
* While an async job runs, a regular job may begin only inside one of its
  interruptible sections, and only if its kind is allowed (DESTROY always is).
* Leaving a section first closes the gate, then waits until every regular
  job that began inside has ended (the barrier); only then does the async
  job go on.
* Waiting is first come, first served. A waiter that cannot run until the
  async job ends does not hold up the waiters behind it that may run inside
  its sections. DESTROY waiters go first. One rule decides every request,
  arriving or waiting (``Domain._may_begin``): a job may begin now if and only
  if no waiter that could run is ahead of it and it is compatible with what
  runs.
* A DESTROY request pre-empts the running async job within one scheduling
  round: its body is cancelled at once, or as it starts if it was granted but
  has not resumed yet. (Regular jobs are not cancelled: one stuck in the
  monitor ends when the monitor closes; ``jobctl.qemu.destroy`` kills QEMU
  before it asks for the DESTROY job.)
* The monitor has one holder and one command in flight at a time; it goes to
  its waiters in arrival order.
* Every decision (a begin, a wait, a refusal, a grant, a hand-off, a timeout,
  a pre-emption, an abort) is traced, so a checker can judge each one; the
  reference model in ``jobctl.testing._spec`` says what each must be.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Protocol, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._backend import current_task_key, native
from jobctl._core._clock import Stamp
from jobctl._core._errors import (
    JobAbortedError,
    JobBusyError,
    JobError,
    JobQueueFullError,
    JobStateError,
    JobTimeoutError,
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
from jobctl._core._queue import WaitQueue
from jobctl._core._trace import TraceHub, TraceKind, default_trace_hub

__all__ = [
    "AbortHook",
    "ActiveAsyncJob",
    "ActiveJob",
    "AsyncJobPersister",
    "Domain",
    "MonitorSession",
]

_job_ids = itertools.count(1)


@enum.unique
class _JobState(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    ACTIVE = "active"
    ENDED = "ended"


@enum.unique
class _SessionState(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    HELD = "held"
    CLOSED = "closed"


_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


class AsyncJobPersister(Protocol):
    """Where async jobs are made durable (the journal implements this).

    ``save_async_job`` runs when an async job begins and on every phase
    change, before the job goes on; ``clear_async_job`` when it ends.
    """

    async def save_async_job(
        self, domain: str, info: AsyncJobInfo, private: Mapping[str, Any]
    ) -> None:
        """Make ``domain``'s async job (``info``: kind, phase, owner) and its
        ``private`` data durable; the job does not go on until this returns,
        and if it raises, the job does not begin (or leave its phase)."""

    async def clear_async_job(self, domain: str, info: AsyncJobInfo) -> None:
        """Forget ``domain``'s ended async job; runs once, as it ends."""


#: Called by ``Domain.abort`` inside an ABORT job that holds the monitor.
AbortHook = Callable[["MonitorSession"], Awaitable[None]]


def _allowed_set(allowed: Iterable[Job] | None) -> frozenset[Job]:
    mask = DEFAULT_ALLOWED if allowed is None else frozenset(allowed)
    for kind in mask:
        if not isinstance(kind, Job):
            raise TypeError(f"allowed must hold jobctl.Job kinds, not {kind!r}")
    return mask | {Job.DESTROY}


#: The lane of the wait queue that async-job requests join (regular jobs
#: join the lane of their kind).
_ASYNC_LANE: Final = None
_REGULAR_LANES: Final = tuple(Job)
_ALL_LANES: Final[tuple[Job | None, ...]] = (*_REGULAR_LANES, _ASYNC_LANE)

# What the one admission rule decides for a request.
_BEGIN: Final = "begin"
_WAIT: Final = "wait"
_BUSY: Final = "busy"
_FULL: Final = "queue_full"


@final
class _Waiter:
    __slots__ = ("event", "granted", "job", "lane", "since")

    def __init__(self, job: ActiveJob | ActiveAsyncJob, since: float) -> None:
        self.job = job
        self.since = since
        self.event = anyio.Event()
        self.granted = False
        self.lane: Job | None = job.kind if isinstance(job, ActiveJob) else _ASYNC_LANE

    @property
    def exempt(self) -> bool:
        """Not counted against ``max_queued``."""
        return _exempt(self.job)


def _check_abortable(target: ActiveAsyncJob) -> None:
    if target._state is not _JobState.ACTIVE:
        raise JobStateError(
            f"async job {target.kind.name} on domain {target._domain.name!r} ended "
            "before it could be aborted"
        )


def _exempt(job: ActiveJob | ActiveAsyncJob) -> bool:
    """Async-job begins and DESTROY do not count against ``max_queued``."""
    return isinstance(job, ActiveAsyncJob) or job.kind is Job.DESTROY


class _JobBase:
    """What regular and async jobs share: identity, state, and the monitor."""

    __slots__ = ("_domain", "_kind_name", "_state", "_task", "id", "owner", "started")

    def __init__(self, domain: Domain, owner: str | None, kind_name: str) -> None:
        self._domain = domain
        #: The kind's name, as traced (read per trace event: kept, not looked up).
        self._kind_name = kind_name
        self.id = next(_job_ids)
        self.owner = owner
        self.started = 0.0
        self._state = _JobState.NEW
        self._task: object = None

    @property
    def domain(self) -> Domain:
        return self._domain

    @property
    def active(self) -> bool:
        """Whether the job has begun and not yet ended."""
        return self._state == _JobState.ACTIVE

    def monitor(self, *, nowait: bool = False) -> MonitorSession:
        """Enter the domain's monitor: ``async with job.monitor() as mon:``.

        One holder at a time, first come first served; ``nowait=True`` raises
        :class:`JobBusyError` at once instead of queueing. Raises
        :class:`JobStateError` instead of deadlocking when the job is not
        active, already holds the monitor, or when this task holds it
        through another job.
        """
        return MonitorSession(self, nowait)


@final
class ActiveJob(_JobBase):
    """A regular job; ``async with dom.job(kind) as job:`` begins and ends it."""

    __slots__ = ("_in_section", "_nowait", "_timeout", "kind")

    def __init__(
        self,
        domain: Domain,
        kind: Job,
        owner: str | None,
        nowait: bool,
        timeout: float | None,
    ) -> None:
        if not isinstance(kind, Job):
            raise TypeError(f"dom.job() takes a jobctl.Job kind, not {kind!r}")
        super().__init__(domain, owner, kind.name)
        self.kind = kind
        self._nowait = nowait
        self._timeout = timeout
        self._in_section = False

    @property
    def in_section(self) -> bool:
        """Whether this job began inside an async job's interruptible section."""
        return self._in_section

    async def __aenter__(self) -> ActiveJob:
        await self._domain._begin(self, self._nowait, self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._domain._end_regular(self, exc)

    def __repr__(self) -> str:
        state = self._state.value
        return f"<ActiveJob {self.kind.name} #{self.id} on {self._domain.name!r} ({state})>"


@final
class ActiveAsyncJob(_JobBase):
    """An async job; ``async with dom.async_job(kind) as ajob:`` begins and ends it.

    The owner names phases (:meth:`set_phase`), sets the regular job kinds it
    lets in (:meth:`set_allowed`) and opens interruptible sections
    (:meth:`interruptible`), the only places where regular jobs may begin.
    """

    __slots__ = (
        "_abort_delivered",
        "_abort_hook",
        "_abort_reason",
        "_allowed",
        "_destroyed",
        "_ended_at",
        "_nowait",
        "_outcome",
        "_progress",
        "_scope",
        "_scope_entered",
        "_section",
        "_timeout",
        "kind",
        "phase",
        "private",
    )

    def __init__(
        self,
        domain: Domain,
        kind: AsyncJob,
        allowed: Iterable[Job] | None,
        owner: str | None,
        nowait: bool,
        timeout: float | None,
    ) -> None:
        if not isinstance(kind, AsyncJob):
            raise TypeError(f"dom.async_job() takes a jobctl.AsyncJob kind, not {kind!r}")
        super().__init__(domain, owner, kind.name)
        self.kind = kind
        self._allowed = _allowed_set(allowed)
        self._nowait = nowait
        self._timeout = timeout
        self.phase = "begin"
        #: The flow's own data, persisted with every phase change.
        self.private: dict[str, Any] = {}
        self._progress: Mapping[str, Any] = _EMPTY
        self._abort_hook: AbortHook | None = None
        self._abort_reason: str | None = None
        self._abort_delivered = False
        self._destroyed = False
        self._section: _Section | None = None
        # Made now, so that a DESTROY granted before the body starts can
        # cancel it already: the body then starts cancelled.
        self._scope = anyio.CancelScope()
        self._scope_entered = False
        self._outcome: str | None = None
        self._ended_at: float | None = None

    # -- owner's controls ------------------------------------------------------

    @property
    def allowed(self) -> frozenset[Job]:
        """Regular job kinds allowed inside this job's sections (DESTROY included)."""
        return self._allowed

    @property
    def in_section(self) -> bool:
        """Whether an interruptible section is open right now."""
        return self._section is not None

    @property
    def preempted(self) -> bool:
        """Whether a DESTROY request pre-empted this job. Its body is
        cancelled; clean-up must not use the monitor or open a section (the
        VM is being destroyed, and the DESTROY job may hold the monitor)."""
        return self._destroyed

    @property
    def abort_reason(self) -> str | None:
        """The reason given to ``Domain.abort``, once an abort was delivered."""
        return self._abort_reason

    def set_allowed(self, allowed: Iterable[Job]) -> None:
        """Change which regular job kinds may begin in later sections
        (DESTROY always may). Takes effect for waiters at once."""
        self._check_active()
        self._allowed = _allowed_set(allowed)
        dom = self._domain
        dom._emit(
            TraceKind.ASYNC_ALLOWED,
            self,
            {"allowed": sorted(k.name for k in self._allowed)},
        )
        dom._dispatch()

    async def set_phase(self, phase: str) -> None:
        """Name the job's phase; it is persisted (with :attr:`private`) before
        this returns, when the domain has a persister."""
        self._check_active()
        if not isinstance(phase, str) or not phase:
            raise ValueError(f"a phase is a non-empty string, not {phase!r}")
        self.phase = phase
        dom = self._domain
        dom._emit(TraceKind.ASYNC_PHASE, self, {"phase": phase})
        if dom._persister is not None:
            await dom._persister.save_async_job(dom.name, self.info(), dict(self.private))
        else:
            await anyio.lowlevel.checkpoint()

    def set_progress(self, progress: Mapping[str, Any]) -> None:
        """Publish progress; ``dom.info().async_job.progress`` shows it."""
        self._check_active()
        self._progress = MappingProxyType(dict(progress))
        self._domain._emit(TraceKind.ASYNC_PROGRESS, self, {"progress": dict(progress)})

    def set_abort_hook(self, hook: AbortHook | None) -> None:
        """What ``Domain.abort`` runs through the monitor to stop this job's
        work (for a migration: the command that cancels it)."""
        self._check_active()
        self._abort_hook = hook

    def interruptible(self) -> _Section:
        """An interruptible section: ``async with ajob.interruptible():``.

        Allowed regular jobs may begin while it is open. Leaving it closes
        the gate, then waits until every regular job that began inside has
        ended (the barrier). If ``Domain.abort`` was delivered meanwhile, the
        section's body is cancelled and leaving raises
        :class:`JobAbortedError` after the barrier.
        """
        return _Section(self)

    def info(self) -> AsyncJobInfo:
        """A frozen snapshot of this job."""
        error = None
        if self._outcome in ("aborted", "destroyed"):
            error = self._abort_reason
        return AsyncJobInfo(
            id=self.id,
            kind=self.kind,
            owner=self.owner,
            phase=self.phase,
            interruptible=self._section is not None,
            allowed=self._allowed,
            started=self.started,
            progress=self._progress,
            outcome=self._outcome,
            ended=self._ended_at,
            error=error,
        )

    def _check_active(self) -> None:
        if self._state != _JobState.ACTIVE:
            raise JobStateError(f"{self!r} is not active")

    # -- begin and end ----------------------------------------------------------

    async def __aenter__(self) -> ActiveAsyncJob:
        dom = self._domain
        await dom._begin(self, self._nowait, self._timeout)
        self._scope.__enter__()
        self._scope_entered = True
        if self._destroyed:
            # Pre-empted between its grant and now: the body starts cancelled.
            dom._emit(TraceKind.DESTROY_DELIVERED, self, None)
        try:
            if dom._persister is not None:
                await dom._persister.save_async_job(dom.name, self.info(), dict(self.private))
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._close(exc_type, exc, tb)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Leave the job's cancel scope and end the job. Returns whether
        ``exc`` was swallowed; raises JobAbortedError when DESTROY pre-empted
        the job, whatever its body ended with."""
        assert self._scope_entered
        self._scope_entered = False
        swallowed = bool(self._scope.__exit__(exc_type, exc, tb))
        dom = self._domain
        error: BaseException | None
        if self._destroyed:
            error = JobAbortedError(
                f"async job {self.kind.name} on domain {dom.name!r} was pre-empted by DESTROY",
                reason="destroyed",
            )
            self._abort_reason = "destroyed"
        else:
            error = None if swallowed else exc
        await dom._end_async(self, error)
        if isinstance(error, JobAbortedError) and error is not exc:
            raise error from exc
        return swallowed

    def __repr__(self) -> str:
        return (
            f"<ActiveAsyncJob {self.kind.name} #{self.id} on {self._domain.name!r} "
            f"phase {self.phase!r} ({self._state.value})>"
        )


@final
class _Section:
    """One interruptible section of an async job (see :meth:`ActiveAsyncJob.interruptible`)."""

    __slots__ = ("_ajob", "_scope", "jobs")

    def __init__(self, ajob: ActiveAsyncJob) -> None:
        self._ajob = ajob
        self._scope: anyio.CancelScope | None = None
        #: Regular jobs that began in this section and have not ended.
        self.jobs: set[ActiveJob] = set()

    async def __aenter__(self) -> None:
        ajob = self._ajob
        dom = ajob._domain
        ajob._check_active()
        if ajob._section is not None:
            raise JobStateError(f"{ajob!r} is already inside an interruptible section")
        if dom._monitor_session is not None and dom._monitor_session._job is ajob:
            raise JobStateError(f"{ajob!r} holds the monitor; leave it before a section")
        if self._scope is not None:
            raise JobStateError("an interruptible section object cannot be entered twice")
        await dom._wait_barrier()
        ajob._check_active()
        self._scope = anyio.CancelScope()
        self._scope.__enter__()
        ajob._section = self
        dom._emit(TraceKind.GATE_OPEN, ajob, None)
        dom._dispatch()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        ajob = self._ajob
        dom = ajob._domain
        # First close the gate: from here on no regular job may begin ...
        ajob._section = None
        dom._emit(TraceKind.GATE_CLOSE, ajob, None)
        assert self._scope is not None
        swallowed = bool(self._scope.__exit__(exc_type, exc, tb))
        # ... then the barrier: wait for the jobs that began inside.
        if self.jobs:
            dom._barrier = self
            dom._barrier_event = anyio.Event()
            dom._barrier_started = anyio.current_time()
            dom._barrier_waits += 1
            dom._emit(
                TraceKind.BARRIER_START,
                ajob,
                {"pending": sorted(j.id for j in self.jobs)},
            )
        await dom._wait_barrier()
        if ajob._abort_reason is not None and not ajob._abort_delivered:
            ajob._abort_delivered = True
            raise JobAbortedError(
                f"async job {ajob.kind.name} on domain {dom.name!r} was aborted: "
                f"{ajob._abort_reason}",
                reason="aborted",
            ) from exc
        return swallowed


@final
class MonitorSession:
    """A job's turn at the domain's monitor (``async with job.monitor() as mon``).

    While the block runs, this job is the monitor's only holder; commands go
    one at a time through :meth:`execute`. Using the session after the block
    ended raises :class:`JobStateError`.
    """

    __slots__ = ("_busy", "_job", "_monitor", "_nowait", "_state", "_task")

    def __init__(self, job: _JobBase, nowait: bool = False) -> None:
        self._job = job
        self._nowait = nowait
        self._state = _SessionState.NEW
        self._busy = False
        self._monitor: Monitor | None = None
        self._task: object = None

    @property
    def job(self) -> ActiveJob | ActiveAsyncJob:
        """The job this session holds the monitor for (it lasts no longer)."""
        job = self._job
        assert isinstance(job, ActiveJob | ActiveAsyncJob)
        return job

    async def __aenter__(self) -> MonitorSession:
        if self._state != _SessionState.NEW:
            raise JobStateError("a monitor session cannot be entered twice")
        job = self._job
        dom = job._domain
        if job._state != _JobState.ACTIVE:
            raise JobStateError(f"only an active job may enter the monitor; {job!r} is not")
        if isinstance(job, ActiveAsyncJob):
            if job._section is not None:
                raise JobStateError(
                    f"{job!r} is inside an interruptible section and may not enter the monitor"
                )
            await dom._wait_barrier()
        holder = dom._monitor_session
        if holder is not None and holder._job is job:
            raise JobStateError(f"{job!r} already holds the monitor of {dom.name!r}")
        self._task = current_task_key()
        if holder is not None and holder._task is self._task:
            raise JobStateError(
                f"this task already holds the monitor of {dom.name!r} through {holder._job!r}"
            )
        monitor = dom._monitor
        if monitor is None:
            raise JobStateError(f"domain {dom.name!r} has no monitor")
        self._monitor = monitor
        self._state = _SessionState.WAITING
        await dom._acquire_monitor(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == _SessionState.HELD:
            self._job._domain._release_monitor(self)

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one monitor command and return its reply.

        Raises :class:`JobStateError` if the session is not held (its block
        ended) or a command is already in flight on it.
        """
        if self._state != _SessionState.HELD:
            raise JobStateError(
                f"monitor session of {self._job!r} used outside its block ({self._state.value})"
            )
        if self._busy:
            raise JobStateError(
                f"a command is already in flight on the monitor session of {self._job!r}"
            )
        assert self._monitor is not None
        # A cancelled caller (a pre-empted async job, too) sends nothing.
        await native().checkpoint_if_cancelled()
        job = self._job
        dom = job._domain
        self._busy = True
        dom._commands += 1
        dom._emit(TraceKind.COMMAND_SENT, job, {"command": command})
        try:
            reply = await self._monitor.execute(command, arguments)
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            dom._emit(
                TraceKind.COMMAND_ANSWERED,
                job,
                {
                    "command": command,
                    "outcome": "cancelled" if cancelled else "error",
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            raise
        finally:
            self._busy = False
        dom._emit(TraceKind.COMMAND_ANSWERED, job, {"command": command, "outcome": "ok"})
        return reply


@final
class Domain:
    """The job state of one VM.

    Domains are independent: there is no global lock. ``monitor`` is the VM's
    control channel (see :class:`~jobctl.Monitor`), settable later with
    :meth:`set_monitor`. Waits time out after ``wait_timeout`` seconds (None:
    never) unless a call gives its own ``timeout``. With ``max_queued > 0`` a
    request past that many waiters fails at once with
    :class:`JobQueueFullError` (async-job begins and DESTROY are exempt).
    """

    __slots__ = (
        "_abort_count",
        "_async",
        "_async_begins",
        "_barrier",
        "_barrier_event",
        "_barrier_started",
        "_barrier_wait_time",
        "_barrier_waits",
        "_begins",
        "_busy",
        "_cancelled_waits",
        "_clock",
        "_commands",
        "_completed",
        "_counted_waiters",
        "_destroys",
        "_exclusive",
        "_holders",
        "_monitor",
        "_monitor_queue",
        "_monitor_session",
        "_persister",
        "_queue_full",
        "_regular",
        "_timeouts",
        "_trace",
        "_waiters",
        "_waits",
        "max_queued",
        "name",
        "wait_timeout",
    )

    def __init__(
        self,
        name: str,
        *,
        monitor: Monitor | None = None,
        wait_timeout: float | None = 30.0,
        max_queued: int = 0,
        trace: TraceHub | None = None,
        persister: AsyncJobPersister | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a domain name is a non-empty string, not {name!r}")
        if wait_timeout is not None and not wait_timeout >= 0:
            raise ValueError(f"wait_timeout must be >= 0 or None, not {wait_timeout!r}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, not {max_queued!r}")
        self.name = name
        self.wait_timeout = wait_timeout
        self.max_queued = max_queued
        self._monitor = monitor
        self._trace = default_trace_hub if trace is None else trace
        self._persister = persister
        self._regular: dict[ActiveJob, None] = {}
        self._exclusive = False
        self._async: ActiveAsyncJob | None = None
        self._completed: AsyncJobInfo | None = None
        #: A moment on both clocks, taken on the loop at the domain's first
        #: job (or in-loop ``info()``): what ``info()`` stamps with off the loop.
        self._clock: Stamp | None = None
        self._waiters: WaitQueue[Job | None, _Waiter] = WaitQueue()
        self._counted_waiters = 0
        self._holders: dict[object, _JobBase] = {}
        self._monitor_session: MonitorSession | None = None
        #: Sessions waiting for the monitor, in arrival order.
        self._monitor_queue: dict[MonitorSession, anyio.Event] = {}
        self._barrier: _Section | None = None
        self._barrier_event: anyio.Event | None = None
        self._barrier_started = 0.0
        self._begins = 0
        self._async_begins = 0
        self._waits = 0
        self._timeouts = 0
        self._busy = 0
        self._queue_full = 0
        self._cancelled_waits = 0
        self._barrier_waits = 0
        self._barrier_wait_time = 0.0
        self._abort_count = 0
        self._destroys = 0
        self._commands = 0

    def __repr__(self) -> str:
        return f"<jobctl.Domain {self.name!r}>"

    # -- public API ------------------------------------------------------------

    @property
    def monitor(self) -> Monitor | None:
        """The domain's monitor, or None."""
        return self._monitor

    def set_monitor(self, monitor: Monitor | None) -> None:
        """Attach (or detach) the monitor; takes effect for the next monitor entry."""
        self._monitor = monitor

    def job(
        self,
        kind: Job,
        *,
        owner: str | None = None,
        nowait: bool = False,
        timeout: float | None = None,
    ) -> ActiveJob:
        """Begin a regular job: ``async with dom.job(Job.QUERY) as job:``.

        Waits first come first served, for at most ``timeout`` (default: the
        domain's ``wait_timeout``); ``nowait=True`` fails at once with
        :class:`JobBusyError` when the job cannot begin now.
        """
        return ActiveJob(self, kind, owner, nowait, timeout)

    def async_job(
        self,
        kind: AsyncJob,
        *,
        allowed: Iterable[Job] | None = None,
        owner: str | None = None,
        nowait: bool = False,
        timeout: float | None = None,
    ) -> ActiveAsyncJob:
        """Begin the domain's async job: ``async with dom.async_job(kind) as ajob:``.

        ``allowed`` is the set of regular job kinds that may begin inside its
        interruptible sections (default QUERY, DESTROY, ABORT; DESTROY always).
        Waits like :meth:`job` (``nowait``, ``timeout``). If the body fails,
        the error propagates; a DESTROY pre-emption or an abort ends it with
        :class:`JobAbortedError`.
        """
        return ActiveAsyncJob(self, kind, allowed, owner, nowait, timeout)

    async def abort(self, reason: str = "aborted", *, timeout: float | None = None) -> None:
        """Abort the running async job cooperatively.

        Runs as an ABORT regular job, so it begins only inside an
        interruptible section of the async job (ABORT must be allowed in its
        phase). Inside, it calls the job's abort hook through the monitor,
        then cancels the section; the async job raises
        :class:`JobAbortedError` when it leaves the section. Returns once the
        abort is delivered.

        If the hook fails (the VM refused to cancel its migration, say) or
        is cancelled, nothing is aborted: the error propagates from here and
        the async job goes on. Raises :class:`JobStateError` when no async
        job runs (or it ended before the abort could begin).
        """
        target = self._async
        if target is None:
            raise JobStateError(f"no async job to abort on domain {self.name!r}")
        self._emit(TraceKind.ABORT_REQUEST, target, {"reason": reason})
        async with self.job(Job.ABORT, owner=f"abort:{reason}", timeout=timeout) as job:
            # While the target runs, the ABORT job begins only in its section.
            _check_abortable(target)
            hook = target._abort_hook
            if hook is not None and self._monitor is not None:
                try:
                    async with job.monitor() as mon:
                        await hook(mon)
                except BaseException as exc:
                    self._emit(
                        TraceKind.ABORT_FAILED,
                        target,
                        {"reason": reason, "error": f"{type(exc).__name__}: {exc}"},
                    )
                    raise
            _check_abortable(target)  # pre-empted or cancelled during the hook?
            target._abort_reason = reason
            self._abort_count += 1
            section = target._section
            if section is not None and section._scope is not None:
                section._scope.cancel()
            self._emit(TraceKind.ABORT_DELIVERED, target, {"reason": reason})

    def info(self) -> DomainInfo:
        """A frozen snapshot of the domain's job state, taken now (its
        ``taken`` stamp converts its times to wall-clock time).

        The last completed async job is in every snapshot until the next
        async job completes and replaces it: reading never consumes it.

        Read off the event loop (between a stepped run's steps), ``taken`` is
        the moment the domain first stamped on its loop (its times still
        convert: the two clocks' offset is the same).
        """
        try:
            taken = Stamp.now()
        except RuntimeError:  # no event loop runs in this thread
            taken = self._clock if self._clock is not None else Stamp(0.0, time.time())
        else:
            if self._clock is None:
                self._clock = taken
        completed = self._completed
        barrier = self._barrier
        holder = self._monitor_session
        return DomainInfo(
            name=self.name,
            regular_jobs=tuple(
                RegularJobInfo(j.id, j.kind, j.owner, j.started, j._in_section)
                for j in self._regular
            ),
            async_job=None if self._async is None else self._async.info(),
            waiters=tuple(WaiterInfo(w.job.kind, w.job.owner, w.since) for w in self._waiters),
            completed_async_job=completed,
            monitor_holder=None if holder is None else holder._job.id,
            barrier_pending=() if barrier is None else tuple(sorted(j.id for j in barrier.jobs)),
            taken=taken,
        )

    def statistics(self) -> DomainStatistics:
        """Counters since the domain was created."""
        return DomainStatistics(
            begins=self._begins,
            async_begins=self._async_begins,
            waits=self._waits,
            timeouts=self._timeouts,
            busy=self._busy,
            queue_full=self._queue_full,
            cancelled_waits=self._cancelled_waits,
            barrier_waits=self._barrier_waits,
            barrier_wait_time=self._barrier_wait_time,
            aborts=self._abort_count,
            destroys=self._destroys,
            commands=self._commands,
            waiting=len(self._waiters),
        )

    # -- tracing -------------------------------------------------------------

    def _emit(self, kind: TraceKind, job: _JobBase, detail: dict[str, Any] | None) -> None:
        # Every caller passes a dict literal made for the event: not copied.
        if kind in self._trace.wanted:
            self._trace.emit_owned(self.name, kind, job.id, job._kind_name, job.owner, detail)

    # -- admission -----------------------------------------------------------
    #
    # One rule decides every request, whether it arrives (``_begin``) or
    # waits (``_dispatch``): a job may begin now if and only if no waiter
    # that could run is ahead of it and it is compatible with what runs.
    # Waiters that cannot run until the async job ends are parked: their
    # lanes are closed and they hold up nobody. DESTROY waiters go first.

    def _open_lanes(self) -> Iterable[Job | None]:
        """The lanes of waiters that are not parked behind the async job."""
        ajob = self._async
        return _ALL_LANES if ajob is None else ajob._allowed

    def _head(self) -> _Waiter | None:
        """The first waiter that is not parked (DESTROY waiters first)."""
        queue = self._waiters
        if not queue:
            return None
        return queue.first_in(Job.DESTROY) or queue.first(self._open_lanes())

    def _compatible(self, job: ActiveJob | ActiveAsyncJob) -> bool:
        """Whether ``job`` may run beside what runs now."""
        if isinstance(job, ActiveAsyncJob):
            return self._async is None and not self._regular
        ajob = self._async
        if ajob is not None and (ajob._section is None or job.kind not in ajob._allowed):
            return False
        if job.kind.shared:
            return not self._exclusive
        return not self._regular

    def _may_begin(self, job: ActiveJob | ActiveAsyncJob, *, arriving: bool) -> bool:
        """The admission rule: ``job`` may begin now. An arriving job would
        join the back (a DESTROY: behind earlier DESTROYs), so no waiter that
        could run may be ahead of it; a queued one is asked only when it is
        the head (``_dispatch``)."""
        if arriving:
            if isinstance(job, ActiveJob) and job.kind is Job.DESTROY:
                ahead = self._waiters.first_in(Job.DESTROY)
            else:
                ahead = self._head()
            if ahead is not None:
                return False
        return self._compatible(job)

    def _decide(self, job: ActiveJob | ActiveAsyncJob, nowait: bool) -> str:
        """What becomes of an arriving request: begin, wait, or refused."""
        if self._may_begin(job, arriving=True):
            return _BEGIN
        if nowait:
            return _BUSY
        if not _exempt(job) and self.max_queued and self._counted_waiters >= self.max_queued:
            return _FULL
        return _WAIT

    def _grant(self, job: ActiveJob | ActiveAsyncJob, waited: bool, now: float) -> None:
        job._state = _JobState.ACTIVE
        job.started = now
        self._holders[job._task] = job
        if isinstance(job, ActiveAsyncJob):
            self._async = job
            self._async_begins += 1
            self._emit(
                TraceKind.ASYNC_BEGIN,
                job,
                {"allowed": sorted(k.name for k in job._allowed), "waited": waited},
            )
            return
        self._regular[job] = None
        self._begins += 1
        if not job.kind.shared:
            self._exclusive = True
        ajob = self._async
        if ajob is not None and ajob._section is not None:
            job._in_section = True
            ajob._section.jobs.add(job)
        self._emit(TraceKind.JOB_BEGIN, job, {"in_section": job._in_section, "waited": waited})

    def _dispatch(self) -> None:
        """Grant waiters in FIFO order, skipping those parked behind the async
        job; stop at the first one that cannot begin. O(lanes) when nothing
        can begin, whatever the number of parked waiters."""
        while (waiter := self._head()) is not None and self._may_begin(waiter.job, arriving=False):
            self._waiters.remove(waiter.lane, waiter)
            if not waiter.exempt:
                self._counted_waiters -= 1
            waiter.granted = True
            self._grant(waiter.job, True, anyio.current_time())
            waiter.event.set()

    def _describe_holders(self) -> str:
        now = anyio.current_time()
        parts: list[str] = []
        ajob = self._async
        if ajob is not None:
            gate = "interruptible" if ajob._section is not None else "not interruptible"
            parts.append(
                f"async job {ajob.kind.name} (owner {ajob.owner!r}, "
                f"{now - ajob.started:.1f} s, phase {ajob.phase!r}, {gate})"
            )
        for job in self._regular:
            parts.append(f"{job.kind.name} job (owner {job.owner!r}, {now - job.started:.1f} s)")
        if self._barrier is not None:
            parts.append(f"a barrier of {len(self._barrier.jobs)} job(s)")
        # Never empty: a request refused or timed out with nothing running
        # would have been granted.
        return "held by " + ", ".join(parts)

    async def _begin(
        self, job: ActiveJob | ActiveAsyncJob, nowait: bool, timeout: float | None
    ) -> None:
        if job._state != _JobState.NEW:
            raise JobStateError(f"{job!r} cannot be entered twice")
        if self._clock is None:
            self._clock = Stamp.now()
        task = current_task_key()
        held = self._holders.get(task)
        if held is not None:
            raise JobStateError(
                f"cannot begin {job._kind_name} job on domain {self.name!r}: this task "
                f"already holds {held!r} (jobs do not nest)"
            )
        limit = self.wait_timeout if timeout is None else timeout
        if limit is not None and not limit >= 0:
            raise ValueError(f"a job's timeout must be >= 0 or None, not {limit!r}")
        loop = native()
        await loop.checkpoint_if_cancelled()
        job._task = task
        if isinstance(job, ActiveJob) and job.kind is Job.DESTROY:
            self._destroys_preempt()
        decision = self._decide(job, nowait)
        if decision is _BEGIN:
            self._grant(job, False, loop.current_time())
            await loop.cancel_shielded_checkpoint()
            return
        is_async = isinstance(job, ActiveAsyncJob)
        what = f"cannot begin {job._kind_name} job on domain {self.name!r}"
        if decision is not _WAIT:
            job._state = _JobState.ENDED
            if decision is _BUSY:
                self._busy += 1
                error: JobError = JobBusyError(f"{what}: {self._describe_holders()} (nowait)")
            else:
                self._queue_full += 1
                error = JobQueueFullError(
                    f"{what}: {self._counted_waiters} waiters queued (max_queued="
                    f"{self.max_queued}); {self._describe_holders()}"
                )
            self._emit(
                TraceKind.JOB_REFUSED,
                job,
                {
                    "reason": decision,
                    "async": is_async,
                    "queued": self._counted_waiters,
                    "max_queued": self.max_queued,
                },
            )
            await anyio.lowlevel.cancel_shielded_checkpoint()
            raise error
        waiter = _Waiter(job, anyio.current_time())
        counted = not waiter.exempt
        queued = self._counted_waiters
        if counted:
            self._counted_waiters += 1
        if waiter.lane is Job.DESTROY:
            position = self._waiters.count(Job.DESTROY)
        else:
            position = len(self._waiters)
        self._waiters.push(waiter.lane, waiter)
        job._state = _JobState.WAITING
        self._waits += 1
        if TraceKind.JOB_WAIT in self._trace.wanted:
            detail: dict[str, Any] = {
                "async": is_async,
                "position": position,
                "timeout": limit,
                "counted": counted,
                "queued": queued,
                "max_queued": self.max_queued,
            }
            if isinstance(job, ActiveAsyncJob):
                detail["allowed"] = sorted(k.name for k in job._allowed)
            self._emit(TraceKind.JOB_WAIT, job, detail)
        try:
            with anyio.fail_after(limit):  # None: no limit
                await waiter.event.wait()
        except TimeoutError:
            if waiter.granted:
                return
            self._drop_waiter(waiter, "timeout")
            self._timeouts += 1
            waited = anyio.current_time() - waiter.since
            raise JobTimeoutError(
                f"{what}: {self._describe_holders()}; waited {waited:.1f} s"
            ) from None
        except BaseException:
            if waiter.granted:
                # Granted and cancelled at once: give the job back.
                if isinstance(job, ActiveAsyncJob):
                    self._finish_async_state(job, "cancelled", None)
                else:
                    self._end_regular(job, None, "cancelled")
            else:
                self._cancelled_waits += 1
                self._drop_waiter(waiter, "cancelled")
            raise

    def _drop_waiter(self, waiter: _Waiter, result: str) -> None:
        self._waiters.remove(waiter.lane, waiter)
        if not waiter.exempt:
            self._counted_waiters -= 1
        waiter.job._state = _JobState.ENDED
        self._emit(
            TraceKind.JOB_WAIT_FAILED,
            waiter.job,
            {"result": result, "waited": anyio.current_time() - waiter.since},
        )
        # The waiter may have held up those behind it.
        self._dispatch()

    def _destroys_preempt(self) -> None:
        """A DESTROY request pre-empts the running async job: its body is
        cancelled now, or as it starts if it has not resumed since its grant."""
        ajob = self._async
        if ajob is None or ajob._destroyed:
            return
        ajob._destroyed = True
        self._destroys += 1
        self._emit(TraceKind.DESTROY_REQUEST, ajob, None)
        ajob._scope.cancel()
        if ajob._scope_entered:
            self._emit(TraceKind.DESTROY_DELIVERED, ajob, None)

    # -- end -----------------------------------------------------------------

    def _forget_holder(self, job: _JobBase) -> None:
        if self._holders.get(job._task) is job:
            del self._holders[job._task]

    def _end_regular(
        self, job: ActiveJob, exc: BaseException | None, outcome: str | None = None
    ) -> None:
        if job._state != _JobState.ACTIVE:
            return
        job._state = _JobState.ENDED
        del self._regular[job]
        self._forget_holder(job)
        if not job.kind.shared:
            self._exclusive = False
        if self._monitor_session is not None and self._monitor_session._job is job:
            self._release_monitor(self._monitor_session)
        if outcome is None:
            if exc is None:
                outcome = "ok"
            elif isinstance(exc, anyio.get_cancelled_exc_class()):
                outcome = "cancelled"
            else:
                outcome = "error"
        self._emit(TraceKind.JOB_END, job, {"outcome": outcome})
        if job._in_section:
            barrier = self._barrier
            ajob = self._async
            if ajob is not None and ajob._section is not None:
                ajob._section.jobs.discard(job)
            if barrier is not None:
                barrier.jobs.discard(job)
                if not barrier.jobs:
                    self._finish_barrier()
        self._dispatch()

    def _finish_barrier(self, abandoned: bool = False) -> None:
        barrier, self._barrier = self._barrier, None
        event, self._barrier_event = self._barrier_event, None
        waited = anyio.current_time() - self._barrier_started
        self._barrier_wait_time += waited
        if barrier is not None:
            detail: dict[str, Any] = {"waited": waited}
            if abandoned:
                # The async job ended (cancelled) while jobs of its section ran on.
                detail["abandoned"] = sorted(j.id for j in barrier.jobs)
            self._emit(TraceKind.BARRIER_END, barrier._ajob, detail)
        if event is not None:
            event.set()

    async def _wait_barrier(self) -> None:
        event = self._barrier_event
        if event is None:
            await anyio.lowlevel.checkpoint()
        else:
            await event.wait()

    def _finish_async_state(
        self, job: ActiveAsyncJob, outcome: str, error: BaseException | None
    ) -> AsyncJobInfo:
        job._state = _JobState.ENDED
        job._outcome = outcome
        job._ended_at = anyio.current_time()
        job._section = None
        if self._async is job:
            self._async = None
        self._forget_holder(job)
        if self._monitor_session is not None and self._monitor_session._job is job:
            self._release_monitor(self._monitor_session)
        info = job.info()
        if error is not None and outcome in ("error", "cancelled"):
            info = attrs.evolve(info, error=f"{type(error).__name__}: {error}")
        self._completed = info
        self._emit(
            TraceKind.ASYNC_END,
            job,
            {"outcome": outcome, "error": info.error},
        )
        # Jobs still running from a section the async job never finished
        # leaving are plain regular jobs now; nobody waits at that barrier.
        if self._barrier is not None and self._barrier._ajob is job:
            self._finish_barrier(abandoned=True)
        self._dispatch()
        return info

    async def _end_async(self, job: ActiveAsyncJob, error: BaseException | None) -> None:
        if job._state != _JobState.ACTIVE:
            return
        if job._destroyed:
            outcome = "destroyed"
        elif isinstance(error, JobAbortedError) and job._abort_reason is not None:
            # Its own abort (another job's JobAbortedError passing through is an error).
            outcome = "aborted"
        elif error is None:
            outcome = "ok"
        elif isinstance(error, anyio.get_cancelled_exc_class()):
            outcome = "cancelled"
        else:
            outcome = "error"
        info = self._finish_async_state(job, outcome, error)
        if self._persister is not None:
            with anyio.CancelScope(shield=True):
                await self._persister.clear_async_job(self.name, info)

    # -- the monitor lock ----------------------------------------------------

    async def _acquire_monitor(self, session: MonitorSession) -> None:
        """Make ``session`` the monitor's holder, first come first served.

        The monitor is handed over (and ``monitor.enter`` traced) by the
        releasing side, so the order of holders is the order of arrival."""
        loop = native()
        await loop.checkpoint_if_cancelled()
        job = session._job
        holder = self._monitor_session
        # (Sessions queue only behind a holder: a release hands on at once.)
        if holder is None:
            self._hand_monitor(session, False)
            await loop.cancel_shielded_checkpoint()
            return
        if session._nowait:
            session._state = _SessionState.CLOSED
            self._emit(TraceKind.MONITOR_REFUSED, job, {"holder": holder._job.id})
            await anyio.lowlevel.cancel_shielded_checkpoint()
            raise JobBusyError(
                f"the monitor of domain {self.name!r} is held by {holder._job!r} (nowait)"
            )
        event = anyio.Event()
        self._monitor_queue[session] = event
        self._emit(TraceKind.MONITOR_WAIT, job, {"position": len(self._monitor_queue) - 1})
        try:
            await event.wait()
        except BaseException:
            if self._monitor_session is session:
                # Handed the monitor just as we were cancelled: pass it on.
                self._release_monitor(session)
            elif self._monitor_queue.pop(session, None) is not None:
                self._emit(TraceKind.MONITOR_WAIT_FAILED, job, {"result": "cancelled"})
            session._state = _SessionState.CLOSED
            raise
        if self._monitor_session is not session:
            session._state = _SessionState.CLOSED
            raise JobStateError(f"{job!r} ended while waiting for the monitor")

    def _hand_monitor(self, session: MonitorSession, waited: bool) -> None:
        self._monitor_session = session
        session._state = _SessionState.HELD
        self._emit(TraceKind.MONITOR_ENTER, session._job, {"waited": waited})

    def _release_monitor(self, session: MonitorSession) -> None:
        """``session`` leaves the monitor; the next waiter (if any) takes it."""
        session._state = _SessionState.CLOSED
        if self._monitor_session is not session:
            return
        self._monitor_session = None
        self._emit(TraceKind.MONITOR_EXIT, session._job, None)
        queue = self._monitor_queue
        while queue:
            waiting = next(iter(queue))
            queue.pop(waiting).set()
            if waiting._job._state == _JobState.ACTIVE:
                self._hand_monitor(waiting, True)
                return
            self._emit(TraceKind.MONITOR_WAIT_FAILED, waiting._job, {"result": "job_ended"})
