"""The differential check: every decision the core traced, replayed on the
reference model (:mod:`jobctl.testing._spec`), must be the model's decision.

The trace carries each request's parameters (kind, ``nowait`` by its
outcome, ``timeout``, ``max_queued``) and every state change (a job's end, a
gate, a mask, a waiter giving up, the monitor's release). Fed those, the
model says what must happen next: the request begins, waits or is refused;
exactly these waiters are granted, in this order; the monitor goes to this
session. The core's next events must say the same, or the check reports
which decision differed (invariants 8 to 12 of
:data:`jobctl.testing.INVARIANTS`).

What the trace itself says (was the pre-emption requested and delivered, was
an abort delivered) is read from the fold of the trace
(:class:`jobctl.TracedDomain`) the invariant checker keeps, not tracked a
second time here; the model's state is the model's own.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Final, final

from jobctl._core._fold import TracedAsyncJob, TracedDomain
from jobctl._core._info import DomainStatistics
from jobctl._core._trace import TraceEvent, TraceKind
from jobctl.testing import _spec as spec

__all__ = ["INSTANT", "REAL_TIME_INSTANT", "DecisionChecker"]

#: What "at once" allows on a virtual clock (float rounding only).
INSTANT: Final = 1e-6
#: What "at once" allows on a real clock of a loaded machine: a bound that
#: flags a pre-emption or a timeout gone wrong, not a slow scheduler.
REAL_TIME_INSTANT: Final = 0.5

#: Events that report a decision the check expects, or that carry no input.
_PASSIVE: Final = frozenset(
    {TraceKind.BARRIER_START, TraceKind.BARRIER_END, TraceKind.LISTENER_FAILED}
)
#: What a pre-empted async job must not do: talk to the VM's monitor (the VM
#: is being destroyed, and the DESTROY job may hold it) or let jobs in. (It
#: may still name a clean-up phase or report progress.)
_ASYNC_ACTIONS: Final = frozenset(
    {
        TraceKind.COMMAND_SENT,
        TraceKind.GATE_OPEN,
        TraceKind.MONITOR_WAIT,
    }
)

Report = Callable[[int, str, str, tuple[TraceEvent, ...]], None]


def _names(value: object) -> frozenset[str]:
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(str(v) for v in value)
    return frozenset()


@final
class _Track:
    """The model's state for one domain, and what it expects next."""

    __slots__ = (
        "counts",
        "desynced",
        "expected",
        "late",
        "late_preempts",
        "state",
        "trigger",
    )

    def __init__(self) -> None:
        self.state = spec.DomainState()
        #: Decisions the model made that the core has still to trace, in
        #: order: ("grant", job) and ("enter", job) / ("dropped", job).
        self.expected: deque[tuple[str, int]] = deque()
        #: The event after which ``expected`` was computed.
        self.trigger: TraceEvent | None = None
        #: Waiters already reported for waiting past their deadline.
        self.late: set[int] = set()
        #: Async jobs already reported for outliving their pre-emption.
        self.late_preempts: set[int] = set()
        #: Event counts, for the statistics check.
        self.counts: Counter[str] = Counter()
        #: Set at the first disagreement: from there on the model no longer
        #: follows the domain (the first report is the one that matters).
        self.desynced = False


@final
class DecisionChecker:
    """Replays each domain's trace on the reference model and reports every
    decision of the core that the model would not have made."""

    __slots__ = ("_instant", "_report", "_tracks")

    def __init__(self, report: Report, *, instant: float = INSTANT) -> None:
        self._report = report
        #: How much trace time "at once" may take (a deadline's firing, a
        #: pre-emption's scheduling round).
        self._instant = instant
        self._tracks: dict[str, _Track] = {}

    def feed(self, event: TraceEvent, seen: TracedDomain) -> None:
        """Check ``event``; ``seen`` is its domain as the trace told it
        before ``event`` (the checker's fold)."""
        track = self._tracks.get(event.domain)
        if track is None:
            track = self._tracks[event.domain] = _Track()
        self._count(track, event)
        if track.desynced:
            return
        self._check_time(track, event, seen)
        if event.kind in _PASSIVE:
            return
        if self._expected_decision(track, event):
            return
        if track.expected:
            self._lost(track, event)
            return
        self._check_preempted(track, event, seen)
        handler = _HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, track, event, seen)

    def finish(self) -> None:
        """End of the trace: every decision the model expected was made."""
        for domain, track in self._tracks.items():
            if track.expected and not track.desynced:
                self._lost(track, None, domain)

    def check_statistics(self, domain: str, stats: DomainStatistics, *, waiting: int) -> None:
        """``Domain.statistics()`` agrees with the domain's trace (invariant
        11); ``waiting`` is how many requests the trace leaves queued."""
        counts = self._tracks.get(domain, _Track()).counts
        expected = {
            "begins": counts["begins"],
            "async_begins": counts["async_begins"],
            "waits": counts["waits"],
            "timeouts": counts["timeouts"],
            "busy": counts["busy"],
            "queue_full": counts["queue_full"],
            "cancelled_waits": counts["cancelled_waits"],
            "aborts": counts["aborts"],
            "destroys": counts["destroys"],
            "commands": counts["commands"],
            "waiting": waiting,
        }
        wrong = {
            name: (getattr(stats, name), value)
            for name, value in expected.items()
            if getattr(stats, name) != value
        }
        if wrong:
            text = ", ".join(
                f"{k}={got} (the trace says {want})" for k, (got, want) in wrong.items()
            )
            self._report(11, domain, f"statistics() disagree with the trace: {text}", ())

    # -- bookkeeping ---------------------------------------------------------

    def _disagree(
        self, track: _Track, invariant: int, event: TraceEvent, message: str, *events: TraceEvent
    ) -> None:
        """Report a decision the model would not have made; stop following."""
        self._report(invariant, event.domain, message, events or (event,))
        track.desynced = True
        track.expected.clear()

    @staticmethod
    def _count(track: _Track, event: TraceEvent) -> None:
        kind, detail = event.kind, event.detail
        name = {
            TraceKind.JOB_BEGIN: "begins",
            TraceKind.ASYNC_BEGIN: "async_begins",
            TraceKind.JOB_WAIT: "waits",
            TraceKind.ABORT_DELIVERED: "aborts",
            TraceKind.DESTROY_REQUEST: "destroys",
            TraceKind.COMMAND_SENT: "commands",
        }.get(kind)
        if kind is TraceKind.JOB_WAIT_FAILED:
            name = "timeouts" if detail.get("result") == "timeout" else "cancelled_waits"
        elif kind is TraceKind.JOB_REFUSED:
            name = str(detail.get("reason"))
        if name is not None:
            track.counts[name] += 1

    def _check_time(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        for waiter in track.state.waiters:
            if (
                waiter.deadline is not None
                and event.time > waiter.deadline + self._instant
                and waiter.job not in track.late
            ):
                track.late.add(waiter.job)
                self._report(
                    10,
                    event.domain,
                    f"{waiter.kind}#{waiter.job} was still queued at t={event.time:.6f}, past "
                    f"its deadline t={waiter.deadline:.6f} (timeout not honoured)",
                    (event,),
                )
        traced = seen.async_job
        preempt = None if traced is None else traced.destroy_request
        ajob = track.state.async_job
        if (
            traced is not None
            and preempt is not None
            and ajob is not None
            and ajob.destroyed
            and traced.id not in track.late_preempts
            and event.time > preempt.time + self._instant
        ):
            track.late_preempts.add(traced.id)
            self._report(
                8,
                event.domain,
                f"async job #{ajob.job} was still running at t={event.time:.6f}, after the "
                f"DESTROY request at t={preempt.time:.6f} (not pre-empted within one "
                "scheduling round)",
                (preempt, event),
            )

    def _expect(self, track: _Track, event: TraceEvent, decisions: list[tuple[str, int]]) -> None:
        if decisions:
            track.expected.extend(decisions)
            track.trigger = event

    def _expected_decision(self, track: _Track, event: TraceEvent) -> bool:
        """Consume ``event`` if it is the decision the model expects next."""
        if not track.expected:
            return False
        want, job = track.expected[0]
        kind = event.kind
        got: tuple[str, int | None] | None = None
        if kind in (TraceKind.JOB_BEGIN, TraceKind.ASYNC_BEGIN) and event.detail.get("waited"):
            got = ("grant", event.job_id)
        elif kind is TraceKind.MONITOR_ENTER and event.detail.get("waited"):
            got = ("enter", event.job_id)
        elif kind is TraceKind.MONITOR_WAIT_FAILED and event.detail.get("result") == "job_ended":
            got = ("dropped", event.job_id)
        if got is None:
            return False
        if got != (want, job):
            trigger = () if track.trigger is None else (track.trigger,)
            self._disagree(
                track,
                9 if want in ("enter", "dropped") else 12,
                event,
                f"after {_describe(track.trigger)} the model's next decision is {want} "
                f"#{job}, but the core traced {got[0]} #{got[1]}",
                *trigger,
                event,
            )
        else:
            track.expected.popleft()
        return True

    def _lost(self, track: _Track, event: TraceEvent | None, domain: str = "") -> None:
        pending = ", ".join(f"{want} #{job}" for want, job in track.expected)
        trigger = () if track.trigger is None else (track.trigger,)
        where = "the trace ended" if event is None else f"the core went on with {_describe(event)}"
        invariant = 9 if track.expected[0][0] in ("enter", "dropped") else 12
        self._report(
            invariant,
            domain if event is None else event.domain,
            f"after {_describe(track.trigger)} the model decides {pending}, but {where} "
            "(a decision the core never made: a lost wakeup)",
            (*trigger, *(() if event is None else (event,))),
        )
        track.desynced = True
        track.expected.clear()

    def _check_preempted(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        ajob = track.state.async_job
        if ajob is None or not ajob.destroyed or event.job_id != ajob.job:
            return
        own_request = event.kind is TraceKind.MONITOR_ENTER and not event.detail.get("waited")
        if event.kind in _ASYNC_ACTIONS or own_request:
            traced = _traced(seen, ajob.job)
            preempt = None if traced is None else traced.destroy_request
            self._report(
                8,
                event.domain,
                f"async job #{ajob.job} acted ({event.kind.value}) after a DESTROY request "
                "pre-empted it",
                (*(() if preempt is None else (preempt,)), event),
            )

    # -- requests --------------------------------------------------------------

    def _arrive(self, track: _Track, event: TraceEvent, *, nowait: bool) -> str:
        """Apply the request ``event`` reports to the model; its decision."""
        detail = event.detail
        is_async = event.kind is TraceKind.ASYNC_BEGIN or bool(detail.get("async", False))
        kind = str(event.job)
        ajob = track.state.async_job
        if kind == spec.DESTROY and not is_async and ajob is not None and not ajob.destroyed:
            self._report(
                8,
                event.domain,
                f"DESTROY#{event.job_id} was requested while async job #{ajob.job} ran, "
                "but did not pre-empt it",
                (event,),
            )
            track.state = spec.destroy_requested(track.state)
        timeout = detail.get("timeout")
        track.state, decision = spec.arrive(
            track.state,
            _job(event),
            kind,
            is_async,
            nowait=nowait,
            max_queued=int(detail.get("max_queued", 0) or 0),
            since=event.time,
            timeout=None if timeout is None else float(timeout),
            allowed=_names(detail.get("allowed")),
        )
        return decision

    def _on_begin(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if event.detail.get("waited"):
            self._disagree(
                track,
                12,
                event,
                f"{event.job}#{event.job_id} was granted, but the model grants nobody here",
            )
            return
        before = track.state
        if self._arrive(track, event, nowait=False) != spec.BEGIN:
            self._disagree(
                track,
                12,
                event,
                f"{event.job}#{event.job_id} began at once, but the model says it must not "
                f"begin now ({_why(before, event)})",
            )

    def _on_wait(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        detail = event.detail
        before = track.state
        is_async = bool(detail.get("async", False))
        counted = spec.counts(str(event.job), is_async)
        if detail.get("counted") != counted or detail.get("queued") != before.counted_waiters:
            self._report(
                11,
                event.domain,
                f"{event.job}#{event.job_id} queued with counted={detail.get('counted')} and "
                f"{detail.get('queued')} counted waiters before it; the model counts "
                f"counted={counted} and {before.counted_waiters}",
                (event,),
            )
        decision = self._arrive(track, event, nowait=False)
        if decision == spec.QUEUE_FULL:
            self._disagree(
                track,
                11,
                event,
                f"{event.job}#{event.job_id} queued with {before.counted_waiters} counted "
                f"waiters already queued (max_queued={detail.get('max_queued')})",
            )
        elif decision == spec.BEGIN:
            self._disagree(
                track,
                12,
                event,
                f"{event.job}#{event.job_id} had to wait, but the model lets it begin at once",
            )

    def _on_refused(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        reason = event.detail.get("reason")
        before = track.state
        decision = self._arrive(track, event, nowait=reason == spec.BUSY)
        if decision == reason:
            return
        if decision == spec.BEGIN:
            self._disagree(
                track,
                12,
                event,
                f"{event.job}#{event.job_id} was refused ({reason}), but the model lets it "
                "begin at once",
            )
        else:
            self._disagree(
                track,
                11,
                event,
                f"{event.job}#{event.job_id} was refused ({reason}) with "
                f"{before.counted_waiters} counted waiters (max_queued="
                f"{event.detail.get('max_queued')}); the model says {decision}",
            )

    def _on_wait_failed(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        job = _job(event)
        waiter = next((w for w in track.state.waiters if w.job == job), None)
        if waiter is None:
            return  # invariant 6 reports a wait that never began
        if event.detail.get("result") == "timeout":
            if waiter.deadline is None:
                self._report(
                    10, event.domain, f"#{job} timed out, but its wait had no limit", (event,)
                )
            elif event.time < waiter.deadline - self._instant:
                self._report(
                    10,
                    event.domain,
                    f"#{job} timed out at t={event.time:.6f}, before its deadline "
                    f"t={waiter.deadline:.6f}",
                    (event,),
                )
        track.state, grants = spec.wait_ended(track.state, job)
        self._expect(track, event, [("grant", w.job) for w in grants])

    # -- changes ---------------------------------------------------------------

    def _on_job_end(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        track.state, grants = spec.job_ended(track.state, _job(event))
        self._expect(track, event, [("grant", w.job) for w in grants])

    def _on_async_end(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        ajob = track.state.async_job
        if ajob is None or ajob.job != event.job_id:
            return  # invariant 7 reports it
        outcome = event.detail.get("outcome")
        traced = _traced(seen, ajob.job)
        problem = None
        if ajob.destroyed and outcome != "destroyed":
            problem = f"was pre-empted by DESTROY but ended {outcome!r}"
        elif ajob.destroyed and (traced is None or not traced.destroy_delivered):
            problem = "ended destroyed, but the pre-emption was never delivered to its body"
        elif outcome == "destroyed" and not ajob.destroyed:
            problem = "ended destroyed with no DESTROY request"
        elif outcome == "aborted" and (traced is None or not traced.abort_delivered):
            problem = "ended aborted, but no abort was delivered to it"
        if problem is not None:
            self._report(8, event.domain, f"async job #{ajob.job} {problem}", (event,))
        track.state, grants = spec.async_ended(track.state)
        self._expect(track, event, [("grant", w.job) for w in grants])

    def _on_gate_open(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if track.state.async_job is None:
            return  # invariant 3 reports it
        track.state, grants = spec.gate_opened(track.state)
        self._expect(track, event, [("grant", w.job) for w in grants])

    def _on_gate_close(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if track.state.async_job is not None:
            track.state = spec.gate_closed(track.state)

    def _on_allowed(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if track.state.async_job is None:
            return
        track.state, grants = spec.allowed_changed(track.state, _names(event.detail["allowed"]))
        self._expect(track, event, [("grant", w.job) for w in grants])

    def _on_destroy_request(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        ajob = track.state.async_job
        if ajob is None or ajob.destroyed:
            self._report(
                8,
                event.domain,
                "a DESTROY request pre-empted no running async job, or one pre-empted already",
                (event,),
            )
            return
        track.state = spec.destroy_requested(track.state)

    def _on_destroy_delivered(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        traced = _traced(seen, event.job_id)
        if traced is None or traced.destroy_request is None or traced.id in track.late_preempts:
            return  # no pre-emption traced, or it was reported late already
        preempt = traced.destroy_request
        if event.time > preempt.time + self._instant:
            self._report(
                8,
                event.domain,
                f"the pre-emption was delivered at t={event.time:.6f}, after the DESTROY "
                f"request at t={preempt.time:.6f} (not within one scheduling round)",
                (preempt, event),
            )

    # -- the monitor -------------------------------------------------------------

    def _monitor_arrival(self, track: _Track, event: TraceEvent, *, nowait: bool, got: str) -> None:
        before = track.state
        track.state, decision = spec.monitor_arrive(before, _job(event), nowait=nowait)
        if decision != got:
            self._disagree(
                track,
                9,
                event,
                f"#{event.job_id}'s monitor session was traced as {got!r}, but the model says "
                f"{decision!r} (holder: {before.monitor_holder}, waiting: "
                f"{list(before.monitor_queue)})",
            )

    def _on_monitor_wait(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        self._monitor_arrival(track, event, nowait=False, got="wait")

    def _on_monitor_refused(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        self._monitor_arrival(track, event, nowait=True, got="refused")

    def _on_monitor_enter(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if event.detail.get("waited"):
            self._disagree(
                track,
                9,
                event,
                f"the monitor was handed to #{event.job_id}, but the model hands it to nobody here",
            )
            return
        self._monitor_arrival(track, event, nowait=False, got="enter")

    def _on_monitor_exit(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if track.state.monitor_holder != event.job_id:
            return  # invariant 1 reports it
        track.state, handoffs = spec.monitor_left(track.state)
        self._expect(track, event, list(handoffs))

    def _on_monitor_wait_failed(self, track: _Track, event: TraceEvent, seen: TracedDomain) -> None:
        if event.detail.get("result") == "job_ended":
            self._disagree(
                track,
                9,
                event,
                f"#{event.job_id}'s monitor session was dropped, but the model drops none here",
            )
            return
        track.state = spec.monitor_wait_ended(track.state, _job(event))


def _traced(seen: TracedDomain, job: int | None) -> TracedAsyncJob | None:
    """The running async job as the trace tells it, if it is job ``job``."""
    ajob = seen.async_job
    return ajob if ajob is not None and ajob.id == job else None


def _job(event: TraceEvent) -> int:
    assert event.job_id is not None
    return event.job_id


def _why(state: spec.DomainState, event: TraceEvent) -> str:
    is_async = event.kind is TraceKind.ASYNC_BEGIN
    kind = str(event.job)
    order = spec.queue_order(state)
    ahead = [w for w in order if not spec.parked(state, w.kind, w.is_async)]
    if ahead:
        return f"{ahead[0].kind}#{ahead[0].job} waits ahead of it"
    if not spec.compatible(state, kind, is_async):
        return "it is not compatible with what runs"
    return "the model disagrees"


def _describe(event: TraceEvent | None) -> str:
    if event is None:
        return "the start"
    who = f" {event.job}#{event.job_id}" if event.job_id is not None else ""
    return f"{event.kind.value}{who} at t={event.time:.6f}"


_Handler = Callable[[DecisionChecker, _Track, TraceEvent, TracedDomain], None]
_HANDLERS: Final[dict[TraceKind, _Handler]] = {
    TraceKind.JOB_BEGIN: DecisionChecker._on_begin,
    TraceKind.ASYNC_BEGIN: DecisionChecker._on_begin,
    TraceKind.JOB_WAIT: DecisionChecker._on_wait,
    TraceKind.JOB_REFUSED: DecisionChecker._on_refused,
    TraceKind.JOB_WAIT_FAILED: DecisionChecker._on_wait_failed,
    TraceKind.JOB_END: DecisionChecker._on_job_end,
    TraceKind.ASYNC_END: DecisionChecker._on_async_end,
    TraceKind.GATE_OPEN: DecisionChecker._on_gate_open,
    TraceKind.GATE_CLOSE: DecisionChecker._on_gate_close,
    TraceKind.ASYNC_ALLOWED: DecisionChecker._on_allowed,
    TraceKind.DESTROY_REQUEST: DecisionChecker._on_destroy_request,
    TraceKind.DESTROY_DELIVERED: DecisionChecker._on_destroy_delivered,
    TraceKind.MONITOR_WAIT: DecisionChecker._on_monitor_wait,
    TraceKind.MONITOR_REFUSED: DecisionChecker._on_monitor_refused,
    TraceKind.MONITOR_ENTER: DecisionChecker._on_monitor_enter,
    TraceKind.MONITOR_EXIT: DecisionChecker._on_monitor_exit,
    TraceKind.MONITOR_WAIT_FAILED: DecisionChecker._on_monitor_wait_failed,
}
