"""The isolation invariants, checked on a trace.

:class:`InvariantChecker` reads trace events one at a time (online, so a
stateful test can check after every step) and keeps a model of each domain
built from the trace alone: active jobs, the async job's gate and barrier,
the wait queue, the monitor's holder and the command in flight. Every event
is checked against that model. The checker never trusts the core's own
bookkeeping: a core that forgets to close its gate still emits the events
that show it.

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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, final

import attrs

from jobctl._core._info import DomainStatistics
from jobctl._core._trace import TraceEvent, TraceKind
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
        return (
            not self.regular_jobs
            and self.async_job is None
            and not self.waiters
            and self.monitor_holder is None
            and not self.command_in_flight
        )


@final
class _Waiter:
    __slots__ = ("event", "is_async", "kind")

    def __init__(self, event: TraceEvent, is_async: bool) -> None:
        self.event = event
        self.kind = event.job
        self.is_async = is_async


@final
class _Async:
    __slots__ = (
        "allowed",
        "begin",
        "closed",
        "destroyed",
        "gate",
        "id",
        "intruder",
        "last_command",
        "pending",
        "section",
    )

    def __init__(self, begin: TraceEvent, allowed: frozenset[str]) -> None:
        assert begin.job_id is not None
        self.id = begin.job_id
        self.begin = begin
        self.allowed = allowed
        #: The gate.open event of the open section, if any.
        self.gate: TraceEvent | None = None
        #: The gate.close event of the last section left.
        self.closed: TraceEvent | None = None
        #: Regular jobs that began in the open section.
        self.section: set[int] = set()
        #: Regular jobs of the section left last that have not ended (the barrier).
        self.pending: set[int] = set()
        self.destroyed = False
        #: The async job's last command of the current non-interruptible stretch.
        self.last_command: TraceEvent | None = None
        #: A command of another job sent after ``last_command`` in this stretch.
        self.intruder: TraceEvent | None = None


@final
class _Domain:
    __slots__ = ("async_", "holder", "in_flight", "name", "recent", "regular", "waiters")

    def __init__(self, name: str, context: int) -> None:
        self.name = name
        #: Active regular jobs: id -> their job.begin event.
        self.regular: dict[int, TraceEvent] = {}
        self.async_: _Async | None = None
        #: The wait queue as the rules order it (DESTROY first, then FIFO).
        self.waiters: list[_Waiter] = []
        #: The monitor.enter event of the monitor's holder.
        self.holder: TraceEvent | None = None
        #: The command.sent event of the command in flight.
        self.in_flight: TraceEvent | None = None
        self.recent: deque[TraceEvent] = deque(maxlen=context)

    def parked(self, waiter: _Waiter) -> bool:
        """Whether the waiter cannot begin before the async job ends (so it
        does not hold up the waiters behind it)."""
        ajob = self.async_
        if ajob is None:
            return False
        return waiter.is_async or (waiter.kind != _DESTROY and waiter.kind not in ajob.allowed)

    def model(self) -> DomainModel:
        ajob = self.async_
        return DomainModel(
            regular_jobs=frozenset(self.regular),
            async_job=None if ajob is None else ajob.id,
            interruptible=ajob is not None and ajob.gate is not None,
            waiters=tuple(w.event.job_id for w in self.waiters if w.event.job_id is not None),
            monitor_holder=None if self.holder is None else self.holder.job_id,
            barrier_pending=frozenset() if ajob is None else frozenset(ajob.pending),
            command_in_flight=self.in_flight is not None,
        )


def _names(detail_value: object) -> frozenset[str]:
    if isinstance(detail_value, list | tuple | set | frozenset):
        return frozenset(str(v) for v in detail_value)
    return frozenset()


@final
class InvariantChecker:
    """Checks the invariants on a stream of trace events, one at a time.

    ``feed`` never raises (it may be a trace listener); it records
    :class:`Violation` objects. ``finish`` adds the end-of-run checks
    (invariant 7 and unresolved waits). ``check`` raises
    :class:`InvariantViolation` if anything was recorded. ``max_wait``
    bounds how long (trace time) any request may wait before it begins or
    fails; None leaves waits unbounded. ``domains`` restricts the check to
    those domains (others on the same hub are ignored).
    """

    __slots__ = (
        "_context",
        "_decisions",
        "_domains",
        "_handlers",
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
        self._handlers: dict[TraceKind, Callable[[_Domain, TraceEvent], None]] = {
            TraceKind.JOB_WAIT: self._on_wait,
            TraceKind.JOB_WAIT_FAILED: self._on_wait_failed,
            TraceKind.JOB_BEGIN: self._on_job_begin,
            TraceKind.JOB_END: self._on_job_end,
            TraceKind.ASYNC_BEGIN: self._on_async_begin,
            TraceKind.ASYNC_END: self._on_async_end,
            TraceKind.ASYNC_ALLOWED: self._on_async_allowed,
            TraceKind.GATE_OPEN: self._on_gate_open,
            TraceKind.GATE_CLOSE: self._on_gate_close,
            TraceKind.BARRIER_START: self._on_barrier_start,
            TraceKind.BARRIER_END: self._on_barrier_end,
            TraceKind.MONITOR_ENTER: self._on_monitor_enter,
            TraceKind.MONITOR_EXIT: self._on_monitor_exit,
            TraceKind.COMMAND_SENT: self._on_command_sent,
            TraceKind.COMMAND_ANSWERED: self._on_command_answered,
            TraceKind.DESTROY_REQUEST: self._on_destroy_request,
        }

    # -- public ----------------------------------------------------------------

    @property
    def violations(self) -> tuple[Violation, ...]:
        """Everything found so far, in trace order."""
        return tuple(self._violations)

    def feed(self, event: TraceEvent) -> None:
        """Check one event against the model, then apply it. Never raises."""
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
        self._decisions.feed(event)
        if dom.async_ is not None and event.job_id == dom.async_.id:
            self._check_async_action(dom, event)
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(dom, event)
        dom.recent.append(event)

    def feed_all(self, events: Iterable[TraceEvent]) -> None:
        for event in events:
            self.feed(event)

    def model(self, domain: str) -> DomainModel:
        """The checker's current view of ``domain`` (idle if never seen)."""
        dom = self._domains.get(domain)
        if dom is None:
            dom = _Domain(domain, 0)
        return dom.model()

    def check_statistics(self, domain: str, statistics: DomainStatistics) -> None:
        """Check ``Domain.statistics()`` of ``domain`` against its trace
        (invariant 11); the trace must be complete from the domain's start."""
        self._decisions.check_statistics(domain, statistics)

    def finish(self) -> None:
        """The trace is complete: check that every domain ended idle and every
        wait was resolved."""
        self._decisions.finish()
        for dom in self._domains.values():
            for waiter in dom.waiters:
                self._violate(6, dom, "a request never began nor failed", waiter.event)
            dom.waiters.clear()
            leftovers = list(dom.regular.values())
            if dom.async_ is not None:
                leftovers.append(dom.async_.begin)
            if leftovers:
                self._violate(7, dom, "job(s) never ended", *leftovers)
            if dom.holder is not None:
                self._violate(7, dom, "the monitor's holder never left it", dom.holder)
            if dom.in_flight is not None:
                self._violate(7, dom, "a command was never answered", dom.in_flight)

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

    def _take_waiter(self, dom: _Domain, event: TraceEvent) -> _Waiter | None:
        for index, waiter in enumerate(dom.waiters):
            if waiter.event.job_id == event.job_id:
                del dom.waiters[index]
                if self.max_wait is not None and event.time - waiter.event.time > self.max_wait:
                    self._violate(
                        6,
                        dom,
                        f"a request waited {event.time - waiter.event.time:.3f} s, "
                        f"longer than max_wait={self.max_wait}",
                        waiter.event,
                        event,
                    )
                return waiter
        return None

    def _check_fifo(self, dom: _Domain, event: TraceEvent) -> None:
        """Called before ``event``'s waiter (if any) leaves the queue."""
        ahead: list[_Waiter] = []
        for waiter in dom.waiters:
            if waiter.event.job_id == event.job_id:
                break
            ahead.append(waiter)
        for waiter in ahead:
            if not dom.parked(waiter):
                self._violate(
                    6,
                    dom,
                    f"{event.job}#{event.job_id} began ahead of the earlier waiter "
                    f"{waiter.kind}#{waiter.event.job_id}, which could run (FIFO)",
                    waiter.event,
                    event,
                )
                return

    def _check_async_action(self, dom: _Domain, event: TraceEvent) -> None:
        ajob = dom.async_
        assert ajob is not None
        if event.kind not in _ASYNC_ACTIONS or not ajob.pending or ajob.destroyed:
            return
        pending = [dom.regular[i] for i in sorted(ajob.pending) if i in dom.regular]
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

    # -- handlers: waiting -----------------------------------------------------

    def _on_wait(self, dom: _Domain, event: TraceEvent) -> None:
        waiter = _Waiter(event, bool(event.detail.get("async", False)))
        if any(w.event.job_id == event.job_id for w in dom.waiters):
            self._violate(6, dom, "a request queued twice", event)
            return
        if waiter.kind == _DESTROY and not waiter.is_async:
            position = 0
            while position < len(dom.waiters) and dom.waiters[position].kind == _DESTROY:
                position += 1
            dom.waiters.insert(position, waiter)
        else:
            dom.waiters.append(waiter)

    def _on_wait_failed(self, dom: _Domain, event: TraceEvent) -> None:
        if self._take_waiter(dom, event) is None:
            self._violate(6, dom, "a request failed its wait without having queued", event)

    # -- handlers: regular jobs ------------------------------------------------

    def _on_job_begin(self, dom: _Domain, event: TraceEvent) -> None:
        assert event.job_id is not None
        self._check_fifo(dom, event)
        self._take_waiter(dom, event)
        # 5: compatibility
        if event.job == _QUERY:
            others = [e for e in dom.regular.values() if e.job != _QUERY]
        else:
            others = list(dom.regular.values())
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
        ajob = dom.async_
        in_section = bool(event.detail.get("in_section", False))
        if ajob is not None:
            if ajob.gate is None:
                where = [ajob.begin] if ajob.closed is None else [ajob.closed]
                self._violate(
                    3,
                    dom,
                    f"{event.job}#{event.job_id} began while async job "
                    f"{ajob.begin.job}#{ajob.id} was outside an interruptible section",
                    *where,
                    event,
                )
            elif event.job != _DESTROY and event.job not in ajob.allowed:
                self._violate(
                    3,
                    dom,
                    f"{event.job}#{event.job_id} began in a section that allows only "
                    f"{sorted(ajob.allowed)}",
                    ajob.gate,
                    event,
                )
            if ajob.gate is not None:
                ajob.section.add(event.job_id)
        if in_section != (ajob is not None and ajob.gate is not None):
            self._violate(
                3,
                dom,
                f"job.begin says in_section={in_section}, but the trace says the "
                "gate was " + ("open" if not in_section else "closed"),
                event,
            )
        dom.regular[event.job_id] = event

    def _on_job_end(self, dom: _Domain, event: TraceEvent) -> None:
        assert event.job_id is not None
        begin = dom.regular.pop(event.job_id, None)
        if begin is None:
            self._violate(7, dom, "a job ended that was not active", event)
        if dom.holder is not None and dom.holder.job_id == event.job_id:
            self._violate(7, dom, "a job ended while still holding the monitor", dom.holder, event)
        ajob = dom.async_
        if ajob is not None:
            ajob.section.discard(event.job_id)
            ajob.pending.discard(event.job_id)

    # -- handlers: the async job -----------------------------------------------

    def _on_async_begin(self, dom: _Domain, event: TraceEvent) -> None:
        self._check_fifo(dom, event)
        self._take_waiter(dom, event)
        if dom.async_ is not None:
            self._violate(
                5, dom, "a second async job began beside the first", dom.async_.begin, event
            )
        if dom.regular:
            self._violate(
                2,
                dom,
                f"async job {event.job}#{event.job_id} began while regular job(s) were active",
                *dom.regular.values(),
                event,
            )
        dom.async_ = _Async(event, _names(event.detail.get("allowed")))

    def _on_async_end(self, dom: _Domain, event: TraceEvent) -> None:
        ajob = dom.async_
        if ajob is None or ajob.id != event.job_id:
            self._violate(7, dom, "an async job ended that was not active", event)
            return
        outcome = event.detail.get("outcome")
        if ajob.pending and outcome not in ("cancelled", "destroyed"):
            pending = [dom.regular[i] for i in sorted(ajob.pending) if i in dom.regular]
            self._violate(
                4,
                dom,
                f"the async job ended ({outcome}) without waiting at its barrier",
                *pending,
                event,
            )
        dom.async_ = None

    def _on_async_allowed(self, dom: _Domain, event: TraceEvent) -> None:
        if dom.async_ is not None and dom.async_.id == event.job_id:
            dom.async_.allowed = _names(event.detail.get("allowed"))

    def _on_gate_open(self, dom: _Domain, event: TraceEvent) -> None:
        ajob = dom.async_
        if ajob is None or ajob.id != event.job_id:
            self._violate(3, dom, "a gate opened for a job that is not the async job", event)
            return
        if ajob.gate is not None:
            self._violate(3, dom, "a gate opened twice", ajob.gate, event)
        if dom.holder is not None and dom.holder.job_id == ajob.id:
            self._violate(2, dom, "the async job opened a section while holding the monitor", event)
        ajob.gate = event
        ajob.section = set()
        ajob.last_command = None
        ajob.intruder = None

    def _on_gate_close(self, dom: _Domain, event: TraceEvent) -> None:
        ajob = dom.async_
        if ajob is None or ajob.id != event.job_id or ajob.gate is None:
            self._violate(3, dom, "a gate closed that was not open", event)
            return
        ajob.gate = None
        ajob.closed = event
        ajob.pending = {i for i in ajob.section if i in dom.regular}
        ajob.section = set()
        ajob.last_command = None
        ajob.intruder = None
        strays = [e for i, e in dom.regular.items() if i not in ajob.pending]
        if strays:
            self._violate(
                2,
                dom,
                "regular job(s) active when the section closed had not begun inside it",
                *strays,
                event,
            )

    def _on_barrier_start(self, dom: _Domain, event: TraceEvent) -> None:
        ajob = dom.async_
        reported = frozenset(int(i) for i in event.detail.get("pending", ()))
        if ajob is not None and reported != ajob.pending:
            self._violate(
                4,
                dom,
                f"barrier.start reports pending {sorted(reported)}, but the jobs that "
                f"began in the section and still run are {sorted(ajob.pending)}",
                event,
            )

    def _on_barrier_end(self, dom: _Domain, event: TraceEvent) -> None:
        ajob = dom.async_
        if ajob is not None and ajob.pending and not ajob.destroyed:
            pending = [dom.regular[i] for i in sorted(ajob.pending) if i in dom.regular]
            self._violate(
                4, dom, "the barrier ended while jobs of its section still ran", *pending, event
            )

    def _on_destroy_request(self, dom: _Domain, event: TraceEvent) -> None:
        if dom.async_ is not None:
            dom.async_.destroyed = True

    # -- handlers: the monitor -------------------------------------------------

    def _on_monitor_enter(self, dom: _Domain, event: TraceEvent) -> None:
        if dom.holder is not None:
            self._violate(
                1,
                dom,
                f"{event.job}#{event.job_id} entered the monitor held by "
                f"{dom.holder.job}#{dom.holder.job_id}",
                dom.holder,
                event,
            )
        ajob = dom.async_
        if ajob is not None and ajob.id == event.job_id and ajob.gate is not None:
            self._violate(
                2,
                dom,
                "the async job entered the monitor inside its interruptible section",
                ajob.gate,
                event,
            )
        dom.holder = event

    def _on_monitor_exit(self, dom: _Domain, event: TraceEvent) -> None:
        if dom.holder is None or dom.holder.job_id != event.job_id:
            self._violate(1, dom, "a job left the monitor it did not hold", event)
            return
        if dom.in_flight is not None and dom.in_flight.job_id == event.job_id:
            self._violate(
                1,
                dom,
                "the monitor was released before the reply to its command came back",
                dom.in_flight,
                event,
            )
        dom.holder = None

    def _on_command_sent(self, dom: _Domain, event: TraceEvent) -> None:
        if dom.in_flight is not None:
            self._violate(
                1,
                dom,
                "a second command was sent while another was in flight",
                dom.in_flight,
                event,
            )
        if dom.holder is None or dom.holder.job_id != event.job_id:
            holder = () if dom.holder is None else (dom.holder,)
            self._violate(
                1, dom, "a command was sent by a job not holding the monitor", *holder, event
            )
        dom.in_flight = event
        ajob = dom.async_
        if ajob is None or ajob.destroyed:
            return
        if event.job_id == ajob.id:
            if ajob.gate is not None:
                self._violate(
                    2,
                    dom,
                    "the async job sent a command inside its interruptible section",
                    ajob.gate,
                    event,
                )
            elif ajob.intruder is not None and ajob.last_command is not None:
                self._violate(
                    4,
                    dom,
                    f"a command of {ajob.intruder.job}#{ajob.intruder.job_id} landed between "
                    "two commands of one non-interruptible stretch of the async job",
                    ajob.last_command,
                    ajob.intruder,
                    event,
                )
            ajob.last_command = event
            ajob.intruder = None
        elif ajob.gate is None:
            if ajob.last_command is not None and ajob.intruder is None:
                ajob.intruder = event
            if event.job_id not in ajob.pending:
                self._violate(
                    2,
                    dom,
                    f"{event.job}#{event.job_id} sent a command while the async job was "
                    "outside its sections",
                    event,
                )

    def _on_command_answered(self, dom: _Domain, event: TraceEvent) -> None:
        sent = dom.in_flight
        if sent is None or sent.job_id != event.job_id:
            self._violate(1, dom, "a reply came back for no command in flight", event)
            return
        dom.in_flight = None


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
