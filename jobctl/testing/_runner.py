"""Playing scenario plans on real domains, in virtual time, and checking them."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Literal, TypeVar, final

import anyio
import attrs
import trio
import trio.testing

from jobctl._core._domain import ActiveAsyncJob, Domain, MonitorSession
from jobctl._core._errors import (
    JobAbortedError,
    JobBusyError,
    JobQueueFullError,
    JobStateError,
    JobTimeoutError,
)
from jobctl._core._kinds import AsyncJob, Job
from jobctl._core._trace import TraceEvent
from jobctl.qmp import QMPClosedError, QMPError
from jobctl.testing._invariants import InvariantChecker, InvariantViolation, Violation
from jobctl.testing._monitor import (
    ScriptedMonitor,
    ScriptedMonitorClosedError,
    ScriptedReplyError,
)
from jobctl.testing._plans import (
    AbortPlan,
    Allow,
    AsyncJobPlan,
    Commands,
    DomainPlan,
    Fail,
    Phase,
    RegularJobPlan,
    Scenario,
    Window,
)
from jobctl.testing._recorder import TraceRecorder
from jobctl.testing._schedule import Schedule, ScheduleCursor
from jobctl.testing._virtual import VirtualEventLoop

__all__ = [
    "BACKENDS",
    "ActorOutcome",
    "Backend",
    "PlannedFailure",
    "ScenarioResult",
    "play_plan",
    "run_scenario",
    "run_virtual",
    "virtual_backend",
]

T = TypeVar("T")

#: The event loops a run can use: anyio's backends.
Backend = Literal["trio", "asyncio"]
BACKENDS: Final[tuple[Backend, ...]] = ("trio", "asyncio")

#: How long the end-of-run probe may take (virtual seconds) before the
#: domain counts as stuck.
_PROBE_TIME: Final = 5.0


class PlannedFailure(Exception):
    """The error a :class:`~jobctl.testing.Fail` step raises in an async job's
    body: a failure the plan asked for."""


class _NoTarget(Exception):
    """``Domain.abort`` found no async job to abort (a normal outcome)."""


@final
@attrs.frozen
class ActorOutcome:
    """How one actor of a plan fared.

    ``result`` is ``"ok"`` or the typed failure: ``"timeout"``, ``"busy"``,
    ``"queue_full"``, ``"aborted"``, ``"destroyed"``, ``"monitor_error"``,
    ``"monitor_closed"``, ``"cancelled"``, ``"flow_error"``, or for an abort
    ``"no_target"`` (nothing to abort).
    """

    domain: str
    owner: str
    requested: float
    began: float | None
    finished: float
    result: str


def _classify(exc: BaseException) -> str | None:
    """The outcome name of an expected failure, None for a surprise."""
    if isinstance(exc, JobBusyError):
        return "busy"
    if isinstance(exc, JobTimeoutError):
        return "timeout"
    if isinstance(exc, JobQueueFullError):
        return "queue_full"
    if isinstance(exc, JobAbortedError):
        return exc.reason
    if isinstance(exc, QMPClosedError | ScriptedMonitorClosedError):
        return "monitor_closed"
    if isinstance(exc, QMPError | ScriptedReplyError):
        return "monitor_error"
    if isinstance(exc, PlannedFailure):
        return "flow_error"
    if isinstance(exc, _NoTarget):
        return "no_target"
    return None


@final
class _Play:
    """One plan being played on one domain."""

    __slots__ = ("cursor", "dom", "origin", "outcomes", "pending", "surprises")

    def __init__(self, dom: Domain, cursor: ScheduleCursor) -> None:
        self.dom = dom
        self.cursor = cursor
        #: Plan times count from here.
        self.origin = anyio.current_time()
        self.outcomes: list[ActorOutcome] = []
        #: Actors that have not finished: owner -> how far they got.
        self.pending: dict[str, str] = {}
        self.surprises: list[BaseException] = []

    async def play(self, plan: DomainPlan) -> None:
        async with anyio.create_task_group() as tg:
            for job in plan.jobs:
                tg.start_soon(self.actor, job.owner, job.start, job.cancel_after, self.regular(job))
            for ajob in plan.async_jobs:
                tg.start_soon(
                    self.actor, ajob.owner, ajob.start, ajob.cancel_after, self.async_(ajob)
                )
            for index, abort in enumerate(plan.aborts):
                tg.start_soon(self.actor, f"aborter{index}", abort.at, None, self.abort(abort))

    async def actor(
        self,
        owner: str,
        start: float,
        cancel_after: float | None,
        body: Callable[[Callable[[], None]], Awaitable[None]],
    ) -> None:
        self.pending[owner] = "not started"
        await _sleep_until(self.origin + start)
        requested = anyio.current_time()
        began: list[float] = []
        self.pending[owner] = "requested"

        def mark_began() -> None:
            began.append(anyio.current_time())
            self.pending[owner] = "began"

        result = "ok"
        deadline = math.inf if cancel_after is None else self.origin + start + cancel_after
        with anyio.CancelScope(deadline=deadline) as scope:
            try:
                await self.cursor.point()
                await body(mark_began)
            except Exception as exc:
                name = _classify(exc)
                if name is None:
                    exc.add_note(f"raised by actor {owner!r} on domain {self.dom.name!r}")
                    self.surprises.append(exc)
                    name = f"surprise: {type(exc).__name__}"
                result = name
        if scope.cancelled_caught:
            result = "cancelled"
        del self.pending[owner]
        self.outcomes.append(
            ActorOutcome(
                self.dom.name,
                owner,
                requested,
                began[0] if began else None,
                anyio.current_time(),
                result,
            )
        )

    async def commands(self, mon: MonitorSession, command: str, count: int) -> None:
        for _ in range(count):
            await mon.execute(command)
            await self.cursor.point()

    def regular(self, plan: RegularJobPlan) -> Callable[[Callable[[], None]], Awaitable[None]]:
        async def body(began: Callable[[], None]) -> None:
            job = self.dom.job(
                plan.kind, owner=plan.owner, nowait=plan.nowait, timeout=plan.timeout
            )
            async with job:
                began()
                await self.cursor.point()
                if plan.commands:
                    async with job.monitor() as mon:
                        await self.commands(mon, "query-status", plan.commands)
                await anyio.sleep(plan.hold)

        return body

    def async_(self, plan: AsyncJobPlan) -> Callable[[Callable[[], None]], Awaitable[None]]:
        async def body(began: Callable[[], None]) -> None:
            ajob = self.dom.async_job(
                plan.kind, allowed=plan.allowed, owner=plan.owner, timeout=plan.timeout
            )
            async with ajob:
                began()
                if plan.abort_hook:
                    ajob.set_abort_hook(_cancel_hook)
                for step in plan.steps:
                    await self.cursor.point()
                    await self.step(ajob, step)

        return body

    async def step(self, ajob: ActiveAsyncJob, step: object) -> None:
        if isinstance(step, Phase):
            await ajob.set_phase(step.name)
        elif isinstance(step, Commands):
            async with ajob.monitor() as mon:
                await self.commands(mon, "query-migrate", step.count)
        elif isinstance(step, Window):
            async with ajob.interruptible():
                if step.misuse:
                    await self.misuse(ajob)
                await anyio.sleep(step.seconds)
                await self.cursor.point()
        elif isinstance(step, Allow):
            ajob.set_allowed(step.kinds)
        elif isinstance(step, Fail):
            await self.cursor.point()
            raise PlannedFailure(f"{ajob.kind.name} flow failed on purpose")
        else:  # pragma: no cover - plans are typed
            raise TypeError(f"unknown step {step!r}")

    async def misuse(self, ajob: ActiveAsyncJob) -> None:
        """Enter the monitor inside a section: the core must refuse."""
        with contextlib.suppress(JobStateError):
            async with ajob.monitor() as mon:
                await mon.execute("query-status")

    def abort(self, plan: AbortPlan) -> Callable[[Callable[[], None]], Awaitable[None]]:
        async def body(began: Callable[[], None]) -> None:
            try:
                await self.dom.abort(plan.reason, timeout=plan.timeout)
            except JobStateError:
                raise _NoTarget from None
            began()

        return body


async def _cancel_hook(mon: MonitorSession) -> None:
    await mon.execute("migrate_cancel")


async def _sleep_until(deadline: float) -> None:
    """Sleep until the absolute ``deadline``: on trio exactly
    ``trio.sleep_until`` (a cancel scope at the deadline around a sleep
    forever), on asyncio a timer at exactly that time. ``anyio.sleep_until``
    would sleep a computed delay instead, which rounds the deadline and on
    trio turns a due deadline into a plain checkpoint, changing the
    interleaving that a schedule replays."""
    with anyio.CancelScope(deadline=deadline):
        await anyio.sleep_forever()


async def play_plan(dom: Domain, plan: DomainPlan, cursor: ScheduleCursor) -> list[ActorOutcome]:
    """Play the actors of ``plan`` (regular jobs, async jobs, aborts) on
    ``dom``, each from its start time (counted from this call); return how
    each fared once all are done. Backend-neutral (anyio: trio or asyncio).

    The plan's name, latency, faults, ``wait_timeout`` and ``max_queued`` are
    not applied here (the domain exists already): give the plan to
    :func:`~jobctl.testing.open_simulated_vm` as ``load=`` for those. An actor that fails with an
    error outside its expected family re-raises it (with a note naming the
    actor) after every actor finished.
    """
    play = _Play(dom, cursor)
    await play.play(plan)
    if play.surprises:
        raise play.surprises[0]
    return play.outcomes


@final
@attrs.frozen
class ScenarioResult:
    """What a scenario run produced: its trace and how each actor fared,
    and on which backend it ran."""

    events: tuple[TraceEvent, ...]
    outcomes: tuple[ActorOutcome, ...]
    backend: Backend = "trio"


@contextlib.contextmanager
def _seeded_scheduler(seed: int) -> Iterator[None]:
    """Seed trio's scheduler as Hypothesis does for each example, and restore
    it after, so a run replays the same outside Hypothesis as inside.

    trio orders each batch of ready tasks with a module-level
    ``random.Random``, which it registers with Hypothesis; there is no public
    handle on it, so if a trio release moves it, runs are still correct,
    only no longer replayable outside Hypothesis.
    """
    rng = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(rng, "_r", None)
    if not isinstance(rng, random.Random):  # pragma: no cover - trio moved it
        yield
        return
    state = rng.getstate()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.setstate(state)


def _check_backend(backend: object) -> Backend:
    for known in BACKENDS:
        if backend == known:
            return known
    raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")


def virtual_backend(backend: Backend) -> tuple[Backend, dict[str, Any]]:
    """The value of anyio's ``anyio_backend`` fixture that runs a test on
    ``backend`` in virtual time, as :func:`run_virtual` does (trio's
    ``MockClock(autojump_threshold=0)``, or a :class:`VirtualEventLoop`)::

        @pytest.fixture(params=["trio", "asyncio"])
        def anyio_backend(request):
            return virtual_backend(request.param)
    """
    backend = _check_backend(backend)
    if backend == "asyncio":
        return backend, {"loop_factory": VirtualEventLoop}
    return backend, {"clock": trio.testing.MockClock(autojump_threshold=0)}


def run_virtual(
    async_fn: Callable[[], Awaitable[T]], *, seed: int = 0, backend: Backend = "trio"
) -> T:
    """Run ``async_fn()`` in a fresh event loop on virtual time, sleeps
    taking no real time: the same function replays the same interleaving
    every time, inside Hypothesis or not.

    ``backend="trio"``: ``trio.run`` with ``MockClock(autojump_threshold=0)``
    and trio's scheduler seeded by ``seed``. ``backend="asyncio"``:
    ``anyio.run`` on a :class:`~jobctl.testing.VirtualEventLoop`, which
    jumps the same way; asyncio runs ready callbacks first in, first out,
    so there is nothing to seed and ``seed`` is unused. Anything else is a
    ``ValueError`` naming the backend.
    """
    backend = _check_backend(backend)

    async def main() -> T:
        return await async_fn()

    if backend == "asyncio":
        return anyio.run(
            main, backend="asyncio", backend_options={"loop_factory": VirtualEventLoop}
        )
    with _seeded_scheduler(seed):
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def run_scenario(
    scenario: Scenario,
    schedule: Schedule = Schedule(),  # noqa: B008 - frozen value
    *,
    simulated: bool = False,
    check: bool = True,
    backend: Backend = "trio",
) -> ScenarioResult:
    """Play ``scenario`` in virtual time with the interleaving ``schedule``
    picks, on ``backend`` (``"trio"`` or ``"asyncio"``, see
    :func:`run_virtual`), then check it. A scenario and schedule replay the
    same trace every time on the same backend; the two backends interleave
    differently.

    Each domain's monitor is a :class:`ScriptedMonitor`, or with
    ``simulated=True`` jobctl's QMP client connected to a simulated QEMU
    (:func:`open_simulated_vm`) whose fault plan follows the domain plan's
    latency and faults.

    The checks (``check=True``): the trace satisfies every invariant (with
    ``max_wait`` the scenario's longest timeout); no monitor saw two commands
    in flight, by the scripted monitor's or the simulator's detector
    (invariant 1); every actor finished before the scenario's horizon (6: no
    deadlock); and every domain ends idle, with no waiter, and still works:
    an async job, an exclusive job and the monitor can all be taken at once
    (7). A failure raises :class:`InvariantViolation`. An actor failing with
    an error outside its expected family re-raises it.
    """
    backend = _check_backend(backend)
    recorder = TraceRecorder()
    cursor = schedule.cursor()
    plays: list[_Play] = []
    extra: list[Violation] = []

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if simulated:
                domains = await _simulated_domains(scenario, recorder, stack)
            else:
                domains = _scripted_domains(scenario, recorder)
            plays.extend(_Play(dom, cursor) for dom, _, _ in domains)
            with anyio.move_on_after(scenario.horizon()) as horizon:
                async with anyio.create_task_group() as tg:
                    for play, (_, plan, _) in zip(plays, domains, strict=True):
                        tg.start_soon(play.play, plan)
            if horizon.cancelled_caught:
                pending = [
                    f"{play.dom.name}/{owner} ({state})"
                    for play in plays
                    for owner, state in play.pending.items()
                ]
                extra.append(
                    Violation(
                        6,
                        ",".join(plan.name for _, plan, _ in domains),
                        f"deadlock: actors still running at the horizon "
                        f"t={scenario.horizon():.1f} were cancelled: {pending}",
                        (),
                        recorder.events[-12:],
                    )
                )
            for dom, _, overlaps in domains:
                extra.extend(await _end_state(dom, overlaps(), recorder))

    run_virtual(main, backend=backend)
    recorder.close()
    outcomes = tuple(o for play in plays for o in play.outcomes)
    surprises = [e for play in plays for e in play.surprises]
    result = ScenarioResult(recorder.events, outcomes, backend)
    if check:
        checker = InvariantChecker(max_wait=scenario.max_wait())
        checker.feed_all(recorder.events)
        checker.finish()
        violations = [*checker.violations, *extra]
        if violations:
            error = InvariantViolation(violations)
            for surprise in surprises:
                error.add_note(f"also raised: {surprise!r}")
            raise error
    if surprises:
        raise surprises[0]
    return result


#: A domain to play, its plan, and what its monitor's detector saw.
_Playable = tuple[Domain, DomainPlan, Callable[[], list[str]]]


def _scripted_domains(scenario: Scenario, recorder: TraceRecorder) -> list[_Playable]:
    domains: list[_Playable] = []
    for plan in scenario.domains:
        monitor = ScriptedMonitor(latency=plan.latency, faults=plan.faults)
        dom = Domain(
            plan.name,
            monitor=monitor,
            wait_timeout=plan.wait_timeout,
            max_queued=plan.max_queued,
            trace=recorder.hub,
        )

        def overlaps(monitor: ScriptedMonitor = monitor) -> list[str]:
            return [
                f"{o.command!r} sent at t={o.time:.3f} while {list(o.in_flight)} were in flight"
                for o in monitor.overlaps
            ]

        domains.append((dom, plan, overlaps))
    return domains


async def _simulated_domains(
    scenario: Scenario, recorder: TraceRecorder, stack: contextlib.AsyncExitStack
) -> list[_Playable]:
    from jobctl.testing._simulated import open_simulated_vm
    from jobctl_simulators.qemu import SimulatedHost

    host = SimulatedHost()
    domains: list[_Playable] = []
    for plan in scenario.domains:
        vm = await stack.enter_async_context(
            open_simulated_vm(plan.name, host=host, load=plan, trace=recorder.hub)
        )

        def overlaps(prefix: str = f"{plan.name}/") -> list[str]:
            return [
                f"the simulated VM got {v.command!r} at t={v.at:.3f} while {v.pending!r} "
                f"was unanswered (connection {v.connection})"
                for v in host.detector.violations()
                if v.connection.startswith(prefix)
            ]

        domains.append((vm.domain, plan, overlaps))
    return domains


async def _end_state(dom: Domain, overlaps: list[str], recorder: TraceRecorder) -> list[Violation]:
    """Invariant 1 from the monitor's detector, 7 from the domain's state."""
    violations: list[Violation] = []
    context = tuple(e for e in recorder.events if e.domain == dom.name)[-12:]
    for overlap in overlaps:
        violations.append(
            Violation(1, dom.name, f"the monitor's detector saw {overlap}", (), context)
        )
    info = dom.info()
    if not info.idle or dom.statistics().waiting:
        violations.append(
            Violation(7, dom.name, f"the domain is not idle after the run: {info!r}", (), context)
        )
        return violations
    problem = await _probe(dom)
    if problem is not None:
        violations.append(
            Violation(7, dom.name, f"the idle domain does not work: {problem}", (), context)
        )
    return violations


async def _probe(dom: Domain) -> str | None:
    """Take the whole domain once; return what went wrong, if anything."""
    dom.set_monitor(ScriptedMonitor())
    what = "beginning an async job"
    with anyio.move_on_after(_PROBE_TIME) as scope:
        try:
            async with dom.async_job(AsyncJob.DUMP, owner="probe", timeout=0) as ajob:
                what = "entering the monitor from the async job"
                async with ajob.monitor() as mon:
                    await mon.execute("query-status")
            what = "beginning an exclusive job"
            async with dom.job(Job.MODIFY, owner="probe", nowait=True) as job:
                what = "entering the monitor from a regular job"
                async with job.monitor() as mon:
                    await mon.execute("query-status")
        except Exception as exc:
            return f"{what} failed: {exc!r}"
    if scope.cancelled_caught:
        return f"{what} did not finish within {_PROBE_TIME} s"
    return None
