"""The isolation invariants, checked on a trace.

:class:`InvariantChecker` reads trace events one at a time (online, so a
stateful test can check after every step) and keeps each domain's state as
the trace tells it: the core's fold (:func:`jobctl.fold_event`, the same the
live feed shows) of active jobs, the async job's gate and barrier, the wait
queue, the monitor's holder and the command in flight. Every event is
checked against the state before it, then folded in. The checker never
trusts the core's own bookkeeping: a core that forgets to close its gate
still emits the events that show it.

The invariants (numbered as in jobctl's design):

1. The monitor has one holder and never two commands in flight; only the
   holder sends, and it leaves only after its reply came back.
2. While an async job runs outside an interruptible section, no regular job
   is active (except those still draining at the barrier); the async job
   never uses the monitor inside a section.
3. A regular job that begins while an async job runs begins inside an
   interruptible section and is of an allowed kind (DESTROY always is).
4. Leaving a section, the async job does nothing until every regular job
   that began in it has ended (the barrier); no command of another job lands
   between two commands of one non-interruptible stretch.
5. Regular jobs follow their compatibility (QUERY with QUERY, every other
   kind exclusive); at most one async job runs.
6. Every request begins or fails within ``max_wait``; a job begins only when
   no earlier waiter that could run is still queued (FIFO, DESTROY first).
7. At the end (:meth:`InvariantChecker.finish`), every domain is idle: no job,
   waiter, open gate, monitor holder or command in flight is left over.

Invariants 8 to 12 replay the trace on the reference model
(:mod:`jobctl.testing._spec`) and compare every decision (see
:mod:`jobctl.testing._decisions`):

8. A DESTROY request pre-empts the running async job: the pre-emption is
   delivered to its body and the job ends ``destroyed`` within one scheduling
   round (the same virtual instant); meanwhile it neither talks to the
   monitor nor opens a section (it may name a clean-up phase). An async job
   ends ``aborted`` only after an abort was delivered to it.
9. The monitor goes to its waiting sessions in arrival order; a session
   waits or is refused only while the monitor is taken.
10. Waits end by their timeout: no request stays queued past its deadline,
    and none times out before it.
11. Queue accounting: waiters count against ``max_queued`` as the rules say,
    a full queue refuses and only a full queue does, and ``statistics()``
    agrees with the trace.
12. Every admission decision is the model's: each request begins at once,
    waits or is refused as the model decides, and after every change exactly
    the waiters the model grants are granted, in its order (nothing lost).

13. Every event speaks the trace schema: where a field has a closed
    vocabulary (:data:`jobctl.TRACE_VALUES`: a wait's ``result``, a job's
    ``outcome``, a refusal's ``reason``), its value is one of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, final

import attrs

from jobctl._core._fold import TracedDomain, TracedWaiter, fold_event
from jobctl._core._info import DomainStatistics
from jobctl._core._trace import TRACE_VALUES, TraceEvent, TraceKind
from jobctl.testing._decisions import INSTANT, DecisionChecker
from jobctl.testing._format import format_events

__all__ = [
    "INVARIANTS",
    "DomainModel",
    "InvariantChecker",
    "InvariantViolation",
    "Violation",
    "check_invariants",
]

#: A short title for each invariant number.
INVARIANTS: Final[dict[int, str]] = {
    1: "one holder and one command in flight on the monitor",
    2: "no regular job beside the async job outside its sections",
    3: "regular jobs begin inside a section and are of an allowed kind",
    4: "the barrier, and no foreign command inside a non-interruptible stretch",
    5: "compatibility of regular jobs; one async job",
    6: "liveness and FIFO fairness",
    7: "the domain ends idle and consistent",
    8: "DESTROY pre-empts within one scheduling round; aborts only when delivered",
    9: "the monitor goes to its waiters in arrival order",
    10: "waits end by their timeout",
    11: "queue accounting (max_queued, counters)",
    12: "every admission decision equals the reference model's",
    13: "every event speaks the trace schema's closed vocabularies",
}

_DESTROY: Final = "DESTROY"
_QUERY: Final = "QUERY"
# Events by which an async job acts: none may happen while its barrier is pending.
_ASYNC_ACTIONS: Final = frozenset(
    {TraceKind.MONITOR_ENTER, TraceKind.COMMAND_SENT, TraceKind.GATE_OPEN, TraceKind.ASYNC_PHASE}
)


@final
@attrs.frozen
class Violation:
    """One broken invariant: its number, the domain, what happened, the events
    involved, and the domain's events just before (``context``)."""

    invariant: int
    domain: str
    message: str
    events: tuple[TraceEvent, ...]
    context: tuple[TraceEvent, ...] = ()

    @property
    def title(self) -> str:
        """The broken invariant's short name (``INVARIANTS[invariant]``), as
        :meth:`describe` prints it.
        """
        return INVARIANTS[self.invariant]

    def describe(self) -> str:
        """The violation as readable text (what, the events, the context)."""
        lines = [
            f"invariant {self.invariant} ({self.title}) violated on domain "
            f"{self.domain!r}: {self.message}",
        ]
        if self.events:
            lines.append(" events involved:")
            lines.append(format_events(self.events, "   "))
        if self.context:
            lines.append(f" the domain's last {len(self.context)} events:")
            lines.append(format_events(self.context, "   "))
        return "\n".join(lines)


class InvariantViolation(AssertionError):
    """The trace broke at least one invariant.

    ``violations`` lists them in trace order; ``invariant`` is the first one's
    number. The message shows each violation with the events involved.
    """

    def __init__(self, violations: Iterable[Violation]) -> None:
        self.violations: tuple[Violation, ...] = tuple(violations)
        if not self.violations:
            raise ValueError("an InvariantViolation needs at least one violation")
        self.invariant = self.violations[0].invariant
        shown = self.violations[:3]
        text = "\n\n".join(v.describe() for v in shown)
        more = len(self.violations) - len(shown)
        if more:
            others = sorted({v.invariant for v in self.violations[3:]})
            text += f"\n\n... and {more} more violation(s) of invariant(s) {others}"
        super().__init__(text)

    @property
    def invariants(self) -> frozenset[int]:
        """The numbers of every invariant violated."""
        return frozenset(v.invariant for v in self.violations)


@final
@attrs.frozen
class DomainModel:
    """The checker's view of one domain, built from the trace alone."""

    regular_jobs: frozenset[int]
    async_job: int | None
    interruptible: bool
    waiters: tuple[int, ...]
    monitor_holder: int | None
    barrier_pending: frozenset[int]
    command_in_flight: bool

    @property
    def idle(self) -> bool:
        """No running job, no waiter, no monitor holder and no command in
        flight: nothing of the domain is left over.
        """
        return (
            not self.regular_jobs
            and self.async_job is None
            and not self.waiters
            and self.monitor_holder is None
            and not self.command_in_flight
        )


@final
class _Domain:
    """The checker's per-domain record: the fold of the domain's trace, and
    what only the judgement needs beside it."""

    __slots__ = ("intruder", "last_command", "name", "recent", "state")

    def __init__(self, name: str, context: int) -> None:
        self.name = name
        #: The domain as its trace tells it so far (the core's fold).
        self.state = TracedDomain(name)
        #: The async job's last command of the current non-interruptible stretch.
        self.last_command: TraceEvent | None = None
        #: A command of another job sent after ``last_command`` in this stretch.
        self.intruder: TraceEvent | None = None
        self.recent: deque[TraceEvent] = deque(maxlen=context)

    def new_stretch(self) -> None:
        """The async job began, or opened or left a section."""
        self.last_command = None
        self.intruder = None

    def model(self) -> DomainModel:
        state = self.state
        ajob = state.async_job
        return DomainModel(
            regular_jobs=frozenset(j.id for j in state.regular_jobs),
            async_job=None if ajob is None else ajob.id,
            interruptible=ajob is not None and ajob.interruptible,
            waiters=tuple(w.id for w in _queue_order(state)),
            monitor_holder=state.monitor_holder,
            barrier_pending=state.barrier_pending,
            command_in_flight=state.monitor.command is not None,
        )


def _queue_order(state: TracedDomain) -> list[TracedWaiter]:
    """The wait queue as the rules order it: DESTROY first, then FIFO."""
    destroys = [w for w in state.waiters if w.kind == _DESTROY and not w.is_async]
    return [*destroys, *(w for w in state.waiters if w not in destroys)]


def _parked(state: TracedDomain, waiter: TracedWaiter) -> bool:
    """Whether the waiter cannot begin before the async job ends (so it does
    not hold up the waiters behind it)."""
    ajob = state.async_job
    if ajob is None:
        return False
    return waiter.is_async or (waiter.kind != _DESTROY and waiter.kind not in ajob.allowed)


def _begins(state: TracedDomain, job_ids: Iterable[int]) -> list[TraceEvent]:
    """The ``job.begin`` events of those regular jobs that still run."""
    jobs = (state.regular_job(i) for i in sorted(job_ids))
    return [j.begin for j in jobs if j is not None]


#: A check of one event against the domain's state before it.
_Check = Callable[["InvariantChecker", _Domain, TracedDomain, TraceEvent], None]


@final
class InvariantChecker:
    """Checks the invariants on a stream of trace events, one at a time.

    ``feed`` never raises on well-formed events (it may be a trace listener);
    it records :class:`Violation` objects. ``finish`` adds the end-of-run
    checks (invariant 7 and unresolved waits). ``check`` raises
    :class:`InvariantViolation` if anything was recorded. ``max_wait``
    bounds how long (trace time) any request may wait before it begins or
    fails; None leaves waits unbounded. ``domains`` restricts the check to
    those domains (others on the same hub are ignored).

    Each domain's state is the core's fold of its trace
    (:func:`jobctl.fold_event`); the checker judges every event against the
    state before it, then folds it in.
    """

    __slots__ = (
        "_context",
        "_decisions",
        "_domains",
        "_only",
        "_violations",
        "max_wait",
    )

    def __init__(
        self,
        *,
        max_wait: float | None = None,
        domains: Iterable[str] | None = None,
        context: int = 12,
        instant: float = INSTANT,
    ) -> None:
        if max_wait is not None and not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 or None, not {max_wait!r}")
        if context < 0:
            raise ValueError(f"context must be >= 0, not {context!r}")
        self.max_wait = max_wait
        self._only = None if domains is None else frozenset(domains)
        self._context = context
        self._domains: dict[str, _Domain] = {}
        self._violations: list[Violation] = []
        if not instant >= 0:
            raise ValueError(f"instant must be >= 0, not {instant!r}")
        self._decisions = DecisionChecker(self._report, instant=instant)

    # -- public ----------------------------------------------------------------

    @property
    def violations(self) -> tuple[Violation, ...]:
        """Everything found so far, in trace order."""
        return tuple(self._violations)

    def feed(self, event: TraceEvent) -> None:
        """Check one event against the domain's state, then fold it in."""
        if self._only is not None and event.domain not in self._only:
            return
        dom = self._domains.get(event.domain)
        if dom is None:
            dom = self._domains[event.domain] = _Domain(event.domain, self._context)
        if event.kind is TraceKind.LISTENER_FAILED:
            dom.recent.append(event)
            return
        if event.job_id is None:
            # Every job-layer event names its job; this one cannot be checked.
            self._violate(7, dom, "an event without a job id", event)
            return
        closed = TRACE_VALUES.get(event.kind)
        if closed is not None:
            for field, values in closed.items():
                value = event.detail.get(field)
                if value not in values:
                    self._violate(
                        13,
                        dom,
                        f"{event.kind.value} has {field}={value!r}, not one of {sorted(values)}",
                        event,
                    )
        before = dom.state
        self._decisions.feed(event, before)
        ajob = before.async_job
        if ajob is not None and event.job_id == ajob.id:
            self._check_async_action(dom, before, event)
        check = _CHECKS.get(event.kind)
        if check is not None:
            check(self, dom, before, event)
        dom.state = fold_event(before, event)
        dom.recent.append(event)

    def feed_all(self, events: Iterable[TraceEvent]) -> None:
        """Check and fold in each of ``events`` in order, exactly as
        :meth:`feed` one at a time would.
        """
        for event in events:
            self.feed(event)

    def model(self, domain: str) -> DomainModel:
        """The checker's current view of ``domain`` (idle if never seen)."""
        dom = self._domains.get(domain)
        if dom is None:
            dom = _Domain(domain, 0)
        return dom.model()

    def state(self, domain: str) -> TracedDomain:
        """``domain`` as the trace fed so far tells it (``TracedDomain(domain)``
        if never seen)."""
        dom = self._domains.get(domain)
        return TracedDomain(domain) if dom is None else dom.state

    def check_statistics(self, domain: str, statistics: DomainStatistics) -> None:
        """Check ``Domain.statistics()`` of ``domain`` against its trace
        (invariant 11); the trace must be complete from the domain's start."""
        waiting = len(self.state(domain).waiters)
        self._decisions.check_statistics(domain, statistics, waiting=waiting)

    def finish(self) -> None:
        """The trace is complete: check that every domain ended idle and every
        wait was resolved."""
        self._decisions.finish()
        for dom in self._domains.values():
            state = dom.state
            for waiter in _queue_order(state):
                self._violate(6, dom, "a request never began nor failed", waiter.wait)
            leftovers = [j.begin for j in state.regular_jobs]
            if state.async_job is not None:
                leftovers.append(state.async_job.begin)
            if leftovers:
                self._violate(7, dom, "job(s) never ended", *leftovers)
            monitor = state.monitor
            if monitor.entered is not None:
                self._violate(7, dom, "the monitor's holder never left it", monitor.entered)
            if monitor.command is not None:
                self._violate(7, dom, "a command was never answered", monitor.command)

    def check(self) -> None:
        """Raise :class:`InvariantViolation` if any violation was found."""
        if self._violations:
            raise InvariantViolation(self._violations)

    # -- helpers -----------------------------------------------------------

    def _report(
        self, invariant: int, domain: str, message: str, events: tuple[TraceEvent, ...]
    ) -> None:
        dom = self._domains.get(domain)
        if dom is None:
            dom = self._domains[domain] = _Domain(domain, self._context)
        self._violate(invariant, dom, message, *events)

    def _violate(self, invariant: int, dom: _Domain, message: str, *events: TraceEvent) -> None:
        self._violations.append(
            Violation(invariant, dom.name, message, tuple(events), tuple(dom.recent))
        )

    def _check_waited(
        self, dom: _Domain, before: TracedDomain, event: TraceEvent
    ) -> TracedWaiter | None:
        """``event`` ends the wait of its request, if it was queued: it did
        not wait past ``max_wait``. Returns the waiter."""
        waiter = before.waiter(event.job_id)
        if waiter is None:
            return None
        waited = event.time - waiter.since
        if self.max_wait is not None and waited > self.max_wait:
            self._violate(
                6,
                dom,
                f"a request waited {waited:.3f} s, longer than max_wait={self.max_wait}",
                waiter.wait,
                event,
            )
        return waiter

    def _check_fifo(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        """``event``'s job begins: no earlier waiter that could run is queued."""
        for waiter in _queue_order(before):
            if waiter.id == event.job_id:
                return
            if not _parked(before, waiter):
                self._violate(
                    6,
                    dom,
                    f"{event.job}#{event.job_id} began ahead of the earlier waiter "
                    f"{waiter.kind}#{waiter.id}, which could run (FIFO)",
                    waiter.wait,
                    event,
                )
                return

    def _check_async_action(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        ajob = before.async_job
        assert ajob is not None
        if event.kind not in _ASYNC_ACTIONS or not ajob.barrier_pending or ajob.destroy_requested:
            return
        pending = _begins(before, ajob.barrier_pending)
        names = ", ".join(f"{e.job}#{e.job_id}" for e in pending)
        closed = () if ajob.closed is None else (ajob.closed,)
        self._violate(
            4,
            dom,
            f"the async job acted ({event.kind.value}) after leaving its section while "
            f"{names} that began inside still ran (barrier)",
            *closed,
            *pending,
            event,
        )

    # -- checks: waiting -------------------------------------------------------

    def _on_wait(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        if before.waiter(event.job_id) is not None:
            self._violate(6, dom, "a request queued twice", event)

    def _on_wait_failed(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        if self._check_waited(dom, before, event) is None:
            self._violate(6, dom, "a request failed its wait without having queued", event)

    # -- checks: regular jobs --------------------------------------------------

    def _on_job_begin(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        self._check_fifo(dom, before, event)
        self._check_waited(dom, before, event)
        # 5: compatibility
        others = [j.begin for j in before.regular_jobs if event.job != _QUERY or j.kind != _QUERY]
        if others:
            self._violate(
                5,
                dom,
                f"{event.job}#{event.job_id} began while incompatible job(s) "
                + ", ".join(f"{e.job}#{e.job_id}" for e in others)
                + " were active",
                *others,
                event,
            )
        # 3: inside a section, of an allowed kind
        ajob = before.async_job
        section = None if ajob is None else ajob.section
        if ajob is not None:
            if section is None:
                where = ajob.begin if ajob.closed is None else ajob.closed
                self._violate(
                    3,
                    dom,
                    f"{event.job}#{event.job_id} began while async job "
                    f"{ajob.kind}#{ajob.id} was outside an interruptible section",
                    where,
                    event,
                )
            elif event.job != _DESTROY and event.job not in ajob.allowed:
                self._violate(
                    3,
                    dom,
                    f"{event.job}#{event.job_id} began in a section that allows only "
                    f"{sorted(ajob.allowed)}",
                    section.opened,
                    event,
                )
        in_section = bool(event.detail.get("in_section", False))
        if in_section != (section is not None):
            self._violate(
                3,
                dom,
                f"job.begin says in_section={in_section}, but the trace says the "
                "gate was " + ("open" if not in_section else "closed"),
                event,
            )

    def _on_job_end(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        if before.regular_job(event.job_id) is None:
            self._violate(7, dom, "a job ended that was not active", event)
        entered = before.monitor.entered
        if entered is not None and entered.job_id == event.job_id:
            self._violate(7, dom, "a job ended while still holding the monitor", entered, event)

    # -- checks: the async job -------------------------------------------------

    def _on_async_begin(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        self._check_fifo(dom, before, event)
        self._check_waited(dom, before, event)
        if before.async_job is not None:
            self._violate(
                5, dom, "a second async job began beside the first", before.async_job.begin, event
            )
        if before.regular_jobs:
            self._violate(
                2,
                dom,
                f"async job {event.job}#{event.job_id} began while regular job(s) were active",
                *(j.begin for j in before.regular_jobs),
                event,
            )
        dom.new_stretch()

    def _on_async_end(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        ajob = before.async_job
        if ajob is None or ajob.id != event.job_id:
            self._violate(7, dom, "an async job ended that was not active", event)
            return
        outcome = event.detail.get("outcome")
        if ajob.barrier_pending and outcome not in ("cancelled", "destroyed"):
            self._violate(
                4,
                dom,
                f"the async job ended ({outcome}) without waiting at its barrier",
                *_begins(before, ajob.barrier_pending),
                event,
            )

    def _on_gate_open(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        ajob = before.async_job
        if ajob is None or ajob.id != event.job_id:
            self._violate(3, dom, "a gate opened for a job that is not the async job", event)
            return
        if ajob.section is not None:
            self._violate(3, dom, "a gate opened twice", ajob.section.opened, event)
        if before.monitor_holder == ajob.id:
            self._violate(2, dom, "the async job opened a section while holding the monitor", event)
        dom.new_stretch()

    def _on_gate_close(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        ajob = before.async_job
        if ajob is None or ajob.id != event.job_id or ajob.section is None:
            self._violate(3, dom, "a gate closed that was not open", event)
            return
        dom.new_stretch()
        strays = [j.begin for j in before.regular_jobs if j.id not in ajob.section.jobs]
        if strays:
            self._violate(
                2,
                dom,
                "regular job(s) active when the section closed had not begun inside it",
                *strays,
                event,
            )

    def _on_barrier_start(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        ajob = before.async_job
        reported = frozenset(int(i) for i in event.detail.get("pending", ()))
        if ajob is not None and reported != ajob.barrier_pending:
            self._violate(
                4,
                dom,
                f"barrier.start reports pending {sorted(reported)}, but the jobs that "
                f"began in the section and still run are {sorted(ajob.barrier_pending)}",
                event,
            )

    def _on_barrier_end(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        ajob = before.async_job
        if ajob is not None and ajob.barrier_pending and not ajob.destroy_requested:
            self._violate(
                4,
                dom,
                "the barrier ended while jobs of its section still ran",
                *_begins(before, ajob.barrier_pending),
                event,
            )

    # -- checks: the monitor ---------------------------------------------------

    def _on_monitor_enter(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        entered = before.monitor.entered
        if entered is not None:
            self._violate(
                1,
                dom,
                f"{event.job}#{event.job_id} entered the monitor held by "
                f"{entered.job}#{entered.job_id}",
                entered,
                event,
            )
        ajob = before.async_job
        if ajob is not None and ajob.id == event.job_id and ajob.section is not None:
            self._violate(
                2,
                dom,
                "the async job entered the monitor inside its interruptible section",
                ajob.section.opened,
                event,
            )

    def _on_monitor_exit(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        monitor = before.monitor
        if monitor.holder is None or monitor.holder != event.job_id:
            self._violate(1, dom, "a job left the monitor it did not hold", event)
            return
        if monitor.command is not None and monitor.command.job_id == event.job_id:
            self._violate(
                1,
                dom,
                "the monitor was released before the reply to its command came back",
                monitor.command,
                event,
            )

    def _on_command_sent(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        monitor = before.monitor
        if monitor.command is not None:
            self._violate(
                1,
                dom,
                "a second command was sent while another was in flight",
                monitor.command,
                event,
            )
        if monitor.holder is None or monitor.holder != event.job_id:
            holder = () if monitor.entered is None else (monitor.entered,)
            self._violate(
                1, dom, "a command was sent by a job not holding the monitor", *holder, event
            )
        ajob = before.async_job
        if ajob is None or ajob.destroy_requested:
            return
        if event.job_id == ajob.id:
            if ajob.section is not None:
                self._violate(
                    2,
                    dom,
                    "the async job sent a command inside its interruptible section",
                    ajob.section.opened,
                    event,
                )
            elif dom.intruder is not None and dom.last_command is not None:
                self._violate(
                    4,
                    dom,
                    f"a command of {dom.intruder.job}#{dom.intruder.job_id} landed between "
                    "two commands of one non-interruptible stretch of the async job",
                    dom.last_command,
                    dom.intruder,
                    event,
                )
            dom.last_command = event
            dom.intruder = None
        elif ajob.section is None:
            if dom.last_command is not None and dom.intruder is None:
                dom.intruder = event
            if event.job_id not in ajob.barrier_pending:
                self._violate(
                    2,
                    dom,
                    f"{event.job}#{event.job_id} sent a command while the async job was "
                    "outside its sections",
                    event,
                )

    def _on_command_answered(self, dom: _Domain, before: TracedDomain, event: TraceEvent) -> None:
        sent = before.monitor.command
        if sent is None or sent.job_id != event.job_id:
            self._violate(1, dom, "a reply came back for no command in flight", event)


_CHECKS: Final[dict[TraceKind, _Check]] = {
    TraceKind.JOB_WAIT: InvariantChecker._on_wait,
    TraceKind.JOB_WAIT_FAILED: InvariantChecker._on_wait_failed,
    TraceKind.JOB_BEGIN: InvariantChecker._on_job_begin,
    TraceKind.JOB_END: InvariantChecker._on_job_end,
    TraceKind.ASYNC_BEGIN: InvariantChecker._on_async_begin,
    TraceKind.ASYNC_END: InvariantChecker._on_async_end,
    TraceKind.GATE_OPEN: InvariantChecker._on_gate_open,
    TraceKind.GATE_CLOSE: InvariantChecker._on_gate_close,
    TraceKind.BARRIER_START: InvariantChecker._on_barrier_start,
    TraceKind.BARRIER_END: InvariantChecker._on_barrier_end,
    TraceKind.MONITOR_ENTER: InvariantChecker._on_monitor_enter,
    TraceKind.MONITOR_EXIT: InvariantChecker._on_monitor_exit,
    TraceKind.COMMAND_SENT: InvariantChecker._on_command_sent,
    TraceKind.COMMAND_ANSWERED: InvariantChecker._on_command_answered,
}


def check_invariants(
    events: Iterable[TraceEvent],
    *,
    max_wait: float | None = None,
    domains: Iterable[str] | None = None,
    complete: bool = True,
) -> None:
    """Check a recorded trace; raise :class:`InvariantViolation` if it breaks
    any invariant. ``complete=False`` skips the end-of-run checks (for a
    trace cut off while jobs still run)."""
    checker = InvariantChecker(max_wait=max_wait, domains=domains)
    checker.feed_all(events)
    if complete:
        checker.finish()
    checker.check()
