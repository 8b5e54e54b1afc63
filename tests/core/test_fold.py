"""The fold of the trace (``jobctl.fold_event`` / ``fold_trace``): golden
sequences, the events it must leave alone, and a property: the fold of a real
run's trace is the state ``Domain.info()`` reports, at every quiet moment of
the run and at its end."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jobctl
from jobctl import (
    AsyncJob,
    Domain,
    DomainInfo,
    Job,
    TracedDomain,
    TraceEvent,
    TraceHub,
    TraceKind,
    fold_event,
    fold_trace,
)
from jobctl.testing import ScriptedMonitor, TraceRecorder, run_virtual

_seq = itertools.count(1)


def ev(
    kind: TraceKind,
    job_id: int | None = None,
    job: str | None = None,
    t: float = 0.0,
    *,
    domain: str = "vm",
    **detail: Any,
) -> TraceEvent:
    return TraceEvent(next(_seq), t, domain, kind, job_id, job, f"owner-{job_id}", detail)


def fold(*events: TraceEvent, state: TracedDomain | None = None) -> TracedDomain:
    state = TracedDomain("vm") if state is None else state
    for event in events:
        state = fold_event(state, event)
    return state


M = "MIGRATION_OUT"


def migration_in_a_window() -> list[TraceEvent]:
    """An async job opens a window; a QUERY waits, begins inside, takes the
    monitor; the window closes on it (the barrier)."""
    return [
        ev(TraceKind.ASYNC_BEGIN, 1, M, 1.0, allowed=["DESTROY", "QUERY"], waited=False),
        ev(TraceKind.ASYNC_PHASE, 1, M, 2.0, phase="perform"),
        ev(TraceKind.ASYNC_PROGRESS, 1, M, 2.5, progress={"done": 1}),
        ev(TraceKind.JOB_WAIT, 2, "QUERY", 2.6, position=0, timeout=None),
        ev(TraceKind.GATE_OPEN, 1, M, 3.0),
        ev(TraceKind.JOB_BEGIN, 2, "QUERY", 3.0, in_section=True, waited=True),
        ev(TraceKind.MONITOR_ENTER, 2, "QUERY", 3.1, waited=False),
        ev(TraceKind.COMMAND_SENT, 2, "QUERY", 3.2, command="query-stats"),
        ev(TraceKind.GATE_CLOSE, 1, M, 4.0),
        ev(TraceKind.BARRIER_START, 1, M, 4.0, pending=[2]),
    ]


def test_a_window_a_query_and_its_barrier() -> None:
    events = migration_in_a_window()
    begin, _, _, wait, gate_open, query, enter, sent, gate_close, barrier = events

    state = fold(*events[:5])
    assert state.waiters[0].wait == wait and state.waiters[0].since == 2.6
    assert state.async_job is not None and state.async_job.interruptible
    assert state.async_job.section is not None
    assert state.async_job.section.opened == gate_open

    state = fold(*events)
    assert state.waiters == ()
    (job,) = state.regular_jobs
    assert (job.id, job.kind, job.owner, job.started, job.in_section) == (
        2,
        "QUERY",
        "owner-2",
        3.0,
        True,
    )
    assert job.begin == query
    ajob = state.async_job
    assert ajob is not None
    assert (ajob.id, ajob.kind, ajob.started, ajob.begin) == (1, M, 1.0, begin)
    assert ajob.allowed == {"DESTROY", "QUERY"}
    assert (ajob.phase, ajob.phase_since, ajob.progress) == ("perform", 2.0, {"done": 1})
    assert not ajob.interruptible and ajob.closed == gate_close
    assert state.barrier_pending == ajob.barrier_pending == {2}
    assert ajob.barrier is not None
    assert (ajob.barrier.start, ajob.barrier.reported, ajob.barrier.since) == (barrier, (2,), 4.0)
    assert state.monitor_holder == 2 and state.monitor.entered == enter
    assert state.monitor.command == sent
    assert not state.idle

    answered = ev(TraceKind.COMMAND_ANSWERED, 2, "QUERY", 5.0, command="query-stats")
    exit_ = ev(TraceKind.MONITOR_EXIT, 2, "QUERY", 5.1)
    end = ev(TraceKind.JOB_END, 2, "QUERY", 5.2, outcome="ok")
    barrier_end = ev(TraceKind.BARRIER_END, 1, M, 5.2, waited=1.2)
    state = fold(answered, exit_, end, barrier_end, state=state)
    assert state.monitor == jobctl.TracedMonitor()
    assert state.regular_jobs == () and state.barrier_pending == frozenset()
    assert state.async_job is not None and state.async_job.barrier is None
    assert state.last_barrier == barrier_end

    async_end = ev(TraceKind.ASYNC_END, 1, M, 6.0, outcome="error", error="OSError: gone")
    state = fold(async_end, state=state)
    assert state.async_job is None and state.idle
    done = state.completed_async_job
    assert done is not None and done.id == 1 and done.end == async_end
    assert (done.outcome, done.error, done.ended, done.phase) == (
        "error",
        "OSError: gone",
        6.0,
        "perform",
    )


def test_waiters_keep_their_arrival_order_and_leave_on_begin_or_failure() -> None:
    is_async: dict[str, Any] = {"async": True}
    state = fold(
        ev(TraceKind.JOB_BEGIN, 1, "MODIFY", in_section=False, waited=False),
        ev(TraceKind.JOB_WAIT, 2, "QUERY", position=0),
        ev(TraceKind.JOB_WAIT, 3, "SAVE", position=1, **is_async),
        ev(TraceKind.JOB_WAIT, 4, "DESTROY", position=0),
        ev(TraceKind.JOB_WAIT, 5, "QUERY", position=3),
    )
    assert [(w.id, w.kind, w.is_async) for w in state.waiters] == [
        (2, "QUERY", False),
        (3, "SAVE", True),
        (4, "DESTROY", False),
        (5, "QUERY", False),
    ]
    state = fold(
        ev(TraceKind.JOB_WAIT_FAILED, 2, "QUERY", result="timeout"),
        ev(TraceKind.JOB_END, 1, "MODIFY", outcome="ok"),
        ev(TraceKind.JOB_BEGIN, 4, "DESTROY", in_section=False, waited=True),
        state=state,
    )
    assert [w.id for w in state.waiters] == [3, 5]
    assert [j.id for j in state.regular_jobs] == [4]
    assert state.waiter(3) is not None and state.waiter(2) is None
    assert state.regular_job(4) is not None and state.regular_job(1) is None


def test_the_monitor_goes_to_its_waiters() -> None:
    state = fold(
        ev(TraceKind.MONITOR_ENTER, 1, "QUERY", waited=False),
        ev(TraceKind.MONITOR_WAIT, 2, "QUERY", position=0),
        ev(TraceKind.MONITOR_WAIT, 3, "QUERY", position=1),
        ev(TraceKind.MONITOR_WAIT, 4, "QUERY", position=2),
        ev(TraceKind.MONITOR_REFUSED, 5, "QUERY", holder=1),
    )
    assert (state.monitor_holder, state.monitor.waiting) == (1, (2, 3, 4))
    state = fold(
        ev(TraceKind.MONITOR_WAIT_FAILED, 3, "QUERY", result="cancelled"),
        ev(TraceKind.MONITOR_EXIT, 1, "QUERY"),
        ev(TraceKind.MONITOR_ENTER, 2, "QUERY", waited=True),
        state=state,
    )
    assert (state.monitor_holder, state.monitor.waiting) == (2, (4,))
    assert not state.monitor.idle


def test_a_destroy_pre_empts_the_async_job() -> None:
    request = ev(TraceKind.DESTROY_REQUEST, 1, "SAVE", 1.0)
    state = fold(
        ev(TraceKind.ASYNC_BEGIN, 1, "SAVE", allowed=["DESTROY"], waited=False),
        ev(TraceKind.ABORT_REQUEST, 1, "SAVE", reason="operator"),
        ev(TraceKind.ABORT_FAILED, 1, "SAVE", reason="operator", error="x"),
        request,
        ev(TraceKind.DESTROY_REQUEST, 1, "SAVE", 1.5),  # the first one counts
        ev(TraceKind.DESTROY_DELIVERED, 1, "SAVE", 1.0),
    )
    ajob = state.async_job
    assert ajob is not None
    assert ajob.destroy_request == request and ajob.destroy_requested
    assert ajob.destroy_delivered
    assert ajob.abort_requested == "operator" and not ajob.abort_delivered
    state = fold(
        ev(TraceKind.ASYNC_END, 1, "SAVE", 1.0, outcome="destroyed", error="destroyed"),
        state=state,
    )
    assert state.async_job is None
    assert state.completed_async_job is not None
    assert state.completed_async_job.outcome == "destroyed"
    assert state.completed_async_job.destroy_requested


def test_a_job_that_ends_in_the_section_leaves_it_and_no_barrier_is_left() -> None:
    state = fold(
        ev(TraceKind.ASYNC_BEGIN, 1, M, allowed=["QUERY"], waited=False),
        ev(TraceKind.GATE_OPEN, 1, M),
        ev(TraceKind.JOB_BEGIN, 2, "QUERY", in_section=True, waited=False),
        ev(TraceKind.JOB_BEGIN, 3, "QUERY", in_section=True, waited=False),
        ev(TraceKind.JOB_END, 2, "QUERY", outcome="ok"),
    )
    assert state.async_job is not None and state.async_job.section is not None
    assert state.async_job.section.jobs == {3}
    state = fold(
        ev(TraceKind.JOB_END, 3, "QUERY", outcome="ok"),
        ev(TraceKind.GATE_CLOSE, 1, M),
        state=state,
    )
    assert state.barrier_pending == frozenset()
    assert state.async_job is not None and state.async_job.barrier is None


def test_events_that_do_not_fit_leave_the_state_alone() -> None:
    busy = fold(
        ev(TraceKind.ASYNC_BEGIN, 1, M, allowed=["QUERY"], waited=False),
        ev(TraceKind.JOB_WAIT, 2, "MODIFY", position=0),
        ev(TraceKind.MONITOR_ENTER, 1, M, waited=False),
        ev(TraceKind.COMMAND_SENT, 1, M, command="migrate"),
    )
    strays = [
        ev(TraceKind.JOB_END, 9, "QUERY", outcome="ok"),  # never began
        ev(TraceKind.ASYNC_END, 9, "SAVE", outcome="ok"),  # not the async job
        ev(TraceKind.ASYNC_PHASE, 9, "SAVE", phase="x"),
        ev(TraceKind.ASYNC_ALLOWED, 9, "SAVE", allowed=["MODIFY"]),
        ev(TraceKind.GATE_OPEN, 9, "SAVE"),
        ev(TraceKind.GATE_CLOSE, 1, M),  # no gate open
        ev(TraceKind.BARRIER_START, 9, "SAVE", pending=[]),
        ev(TraceKind.DESTROY_REQUEST, 9, "SAVE"),
        ev(TraceKind.MONITOR_EXIT, 2, "MODIFY"),  # not the holder
        ev(TraceKind.COMMAND_ANSWERED, 2, "MODIFY", command="x", outcome="ok"),
        ev(TraceKind.JOB_WAIT, 2, "MODIFY", position=1),  # queued twice
        ev(TraceKind.JOB_BEGIN, None, None, in_section=False),  # no job id
        # Kinds that change no state:
        ev(TraceKind.JOB_REFUSED, 5, "QUERY", reason="busy"),
        ev(TraceKind.ABORT_FAILED, 1, M, reason="r", error="e"),
        ev(TraceKind.MONITOR_REFUSED, 5, "QUERY", holder=1),
        ev(TraceKind.LISTENER_FAILED, 1, M, listener="l", error="e", event="job.end"),
    ]
    for stray in strays:
        assert fold_event(busy, stray) == busy, stray


def test_every_kind_is_either_read_or_documented_as_changing_nothing() -> None:
    """A kind added to the trace must be given a step, or be listed here as
    one that changes no state (then the fold ignores it)."""
    stateless = {
        TraceKind.JOB_REFUSED,
        TraceKind.ABORT_FAILED,
        TraceKind.MONITOR_REFUSED,
        TraceKind.LISTENER_FAILED,
    }
    read = {
        TraceKind.JOB_WAIT,
        TraceKind.JOB_WAIT_FAILED,
        TraceKind.JOB_BEGIN,
        TraceKind.JOB_END,
        TraceKind.ASYNC_BEGIN,
        TraceKind.ASYNC_END,
        TraceKind.ASYNC_PHASE,
        TraceKind.ASYNC_ALLOWED,
        TraceKind.ASYNC_PROGRESS,
        TraceKind.GATE_OPEN,
        TraceKind.GATE_CLOSE,
        TraceKind.BARRIER_START,
        TraceKind.BARRIER_END,
        TraceKind.MONITOR_WAIT,
        TraceKind.MONITOR_WAIT_FAILED,
        TraceKind.MONITOR_ENTER,
        TraceKind.MONITOR_EXIT,
        TraceKind.COMMAND_SENT,
        TraceKind.COMMAND_ANSWERED,
        TraceKind.ABORT_REQUEST,
        TraceKind.ABORT_DELIVERED,
        TraceKind.DESTROY_REQUEST,
        TraceKind.DESTROY_DELIVERED,
    }
    assert stateless | read == set(TraceKind) and not stateless & read
    assert jobctl.TRACE_SCHEMA_VERSION == 2  # the schema the fold reads


def test_the_fold_is_pure() -> None:
    events = migration_in_a_window()
    start = TracedDomain("vm")
    first = fold(*events, state=start)
    assert fold(*events, state=start) == first
    assert start == TracedDomain("vm")  # nothing folded into the start state
    assert fold_trace("vm", events) == first
    other = [attrs.evolve(e, domain="other") for e in events]
    assert fold_trace("vm", [*other, *events, *other]) == first  # other domains skipped


def test_an_event_of_another_domain_or_a_malformed_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="'other'"):
        fold_event(TracedDomain("vm"), ev(TraceKind.JOB_END, 1, "QUERY", domain="other"))
    with pytest.raises(TypeError):
        fold_event(TracedDomain("vm"), ev(TraceKind.BARRIER_START, 1, M, pending=5))


# -- the property: the fold of a real run is what Domain.info() reports ---------


@attrs.frozen
class RegularActor:
    start: float
    kind: Job
    hold: float
    #: Commands it sends through the monitor (one session), if any.
    commands: int
    timeout: float | None
    nowait: bool


@attrs.frozen
class AsyncActor:
    start: float
    allowed: frozenset[Job]
    #: ("phase" | "window" | "command" | "progress" | "allow" | "sleep", ...)
    steps: tuple[str, ...]


@attrs.frozen
class AbortActor:
    start: float


_times = st.sampled_from([0.0, 0.3, 0.5, 1.0, 1.6, 2.2])
regular_actors = st.builds(
    RegularActor,
    start=_times,
    kind=st.sampled_from([Job.QUERY, Job.QUERY, Job.MODIFY, Job.DESTROY]),
    hold=st.sampled_from([0.0, 0.4, 1.5]),
    commands=st.integers(0, 3),
    timeout=st.sampled_from([None, 0.3, 5.0]),
    nowait=st.booleans(),
)
async_actors = st.builds(
    AsyncActor,
    start=st.sampled_from([0.0, 0.3, 1.0]),
    allowed=st.frozensets(st.sampled_from([Job.QUERY, Job.MODIFY, Job.ABORT])),
    steps=st.lists(
        st.sampled_from(["phase", "window", "window", "command", "progress", "allow", "sleep"]),
        min_size=1,
        max_size=8,
    ).map(tuple),
)
actors = st.tuples(
    st.lists(regular_actors, max_size=6),
    st.lists(async_actors, max_size=2),
    st.lists(st.builds(AbortActor, start=_times), max_size=1),
)

#: When the run is compared with the fold (off the actors' times).
CHECKPOINTS = (0.17, 0.43, 0.77, 1.13, 1.37, 1.83, 2.41, 3.07, 4.33)


def agree(state: TracedDomain, info: DomainInfo) -> None:
    """``state`` (the fold) says what ``info`` (the core) says."""
    assert [(j.id, j.kind, j.owner, j.started, j.in_section) for j in state.regular_jobs] == [
        (j.id, j.kind.name, j.owner, j.started, j.in_section) for j in info.regular_jobs
    ]
    assert [(w.kind, w.owner, w.since) for w in state.waiters] == [
        (w.kind.name, w.owner, w.since) for w in info.waiters
    ]
    assert state.monitor_holder == info.monitor_holder
    assert tuple(sorted(state.barrier_pending)) == info.barrier_pending
    assert state.idle == info.idle
    traced, ajob = state.async_job, info.async_job
    assert (traced is None) == (ajob is None)
    if traced is not None and ajob is not None:
        assert (traced.id, traced.kind, traced.owner, traced.started) == (
            ajob.id,
            ajob.kind.name,
            ajob.owner,
            ajob.started,
        )
        # The trace names no phase until the job names one ("begin").
        assert (traced.phase or "begin") == ajob.phase
        assert traced.interruptible == ajob.interruptible
        assert traced.allowed == {k.name for k in ajob.allowed}
        assert dict(traced.progress or {}) == dict(ajob.progress)
    done, completed = state.completed_async_job, info.completed_async_job
    assert (done is None) == (completed is None)
    if done is not None and completed is not None:
        assert (done.id, done.outcome, done.ended, done.error) == (
            completed.id,
            completed.outcome,
            completed.ended,
            completed.error,
        )


async def play(
    dom: Domain, regular: list[RegularActor], async_: list[AsyncActor], aborts: list[AbortActor]
) -> None:
    async def at(start: float, body: Callable[[], Any]) -> None:
        await anyio.sleep(start)
        with contextlib.suppress(jobctl.JobError):  # refused, timed out, aborted: all traced
            await body()

    def regular_job(n: int, actor: RegularActor) -> Callable[[], Any]:
        async def body() -> None:
            async with dom.job(
                actor.kind, owner=f"r{n}", timeout=actor.timeout, nowait=actor.nowait
            ) as job:
                if actor.commands:
                    async with job.monitor() as mon:
                        for _ in range(actor.commands):
                            await mon.execute("query-status")
                await anyio.sleep(actor.hold)

        return body

    def async_job(actor: AsyncActor) -> Callable[[], Any]:
        async def body() -> None:
            async with dom.async_job(
                AsyncJob.MIGRATION_OUT, allowed=actor.allowed, owner="migrate", timeout=5.0
            ) as ajob:
                for n, step in enumerate(actor.steps):
                    if step == "phase":
                        await ajob.set_phase(f"phase-{n}")
                    elif step == "window":
                        async with ajob.interruptible():
                            await anyio.sleep(0.7)
                    elif step == "command":
                        async with ajob.monitor() as mon:
                            await mon.execute("migrate")
                    elif step == "progress":
                        ajob.set_progress({"step": n})
                    elif step == "allow":
                        ajob.set_allowed({Job.QUERY} if n % 2 else {Job.MODIFY, Job.ABORT})
                    else:
                        await anyio.sleep(0.3)

        return body

    def abort() -> Callable[[], Any]:
        async def body() -> None:
            await dom.abort("stop", timeout=1.0)

        return body

    async with anyio.create_task_group() as tg:
        for n, actor in enumerate(regular):
            tg.start_soon(at, actor.start, regular_job(n, actor))
        for ajob in async_:
            tg.start_soon(at, ajob.start, async_job(ajob))
        for aborter in aborts:
            tg.start_soon(at, aborter.start, abort())


@given(actors)
def test_the_fold_of_a_run_is_what_the_domain_reports(
    drawn: tuple[list[RegularActor], list[AsyncActor], list[AbortActor]],
) -> None:
    regular, async_, aborts = drawn
    compared: list[float] = []

    async def main() -> None:
        with TraceRecorder() as recorder:
            # The fold kept online, one event at a time, as a listener would.
            online = [TracedDomain("vm")]

            def follow(event: TraceEvent) -> None:
                online[0] = fold_event(online[0], event)

            hub: TraceHub = recorder.hub
            hub.subscribe(follow)
            dom = Domain("vm", monitor=ScriptedMonitor(latency=0.25), trace=hub)

            async def watch() -> None:
                for t in CHECKPOINTS:
                    await anyio.sleep(t - anyio.current_time())
                    state = recorder.state("vm")
                    assert state == online[0]
                    agree(state, dom.info())
                    compared.append(t)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await play(dom, regular, async_, aborts)
            end = recorder.state("vm")
            agree(end, dom.info())
            assert end.idle and end == online[0]

    run_virtual(main)
    assert compared == list(CHECKPOINTS)
