"""Regression tests for the decisions the core makes, on trio and asyncio:
the bugs found on 5c5f025 (each named), and the cases the property suite
reaches rarely. Every test also checks its trace with the invariant checker,
which replays it on the reference model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import sniffio

import jobctl
from jobctl import AsyncJob, Job, TraceKind
from jobctl.testing import (
    ErrorReply,
    FaultRule,
    InvariantChecker,
    ScriptedMonitor,
    ScriptedReplyError,
)

from ._support import Recorder

pytestmark = pytest.mark.anyio

#: Bound on anything that must happen "at once" (real seconds on asyncio,
#: virtual on trio): generous, it only turns a hang into a failure.
SOON = 2.0


def checked(recorder: Recorder, *domains: jobctl.Domain) -> None:
    """The trace keeps every invariant, decisions match the model, and the
    statistics agree with the trace."""
    # asyncio runs these on its real clock: "at once" gets a real bound there.
    virtual = sniffio.current_async_library() == "trio"
    checker = InvariantChecker(instant=1e-6 if virtual else 0.1)
    checker.feed_all(recorder.events)
    checker.finish()
    for dom in domains:
        checker.check_statistics(dom.name, dom.statistics())
    checker.check()


def kinds(recorder: Recorder) -> list[str]:
    return recorder.kinds()


async def elsewhere(job: Any) -> BaseException | None:
    """Enter and leave ``job`` in another task (jobs do not nest in one
    task); what it raised, or None."""
    raised: list[BaseException | None] = [None]

    async def run() -> None:
        try:
            async with job:
                pass
        except Exception as exc:
            raised[0] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
    return raised[0]


# -- bug 1: DESTROY pre-empts an async job granted but not yet resumed ------------


@pytest.mark.parametrize("delay", [0, 1, 2, 3])
async def test_destroy_preempts_an_async_job_granted_from_the_queue(delay: int) -> None:
    """The async job waits behind MODIFY; MODIFY ends (granting it) and
    DESTROY is requested before the async job's task has run again."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub, wait_timeout=10)
    queued = anyio.Event()
    body_done = False
    outcome: list[BaseException] = []

    async def migrate() -> None:
        nonlocal body_done
        try:
            async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="migrate"):
                await anyio.sleep(100)
                body_done = True
        except jobctl.JobAbortedError as exc:
            outcome.append(exc)

    async def modify_then_destroy() -> None:
        async with dom.job(Job.MODIFY, owner="modify"):
            await queued.wait()
            await anyio.wait_all_tasks_blocked()
        for _ in range(delay):
            await anyio.lowlevel.cancel_shielded_checkpoint()
        async with dom.job(Job.DESTROY, owner="destroy"):
            pass

    with anyio.fail_after(SOON):
        async with anyio.create_task_group() as tg:
            tg.start_soon(modify_then_destroy)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(migrate)
            await anyio.wait_all_tasks_blocked()
            queued.set()
    assert not body_done
    assert [e.reason for e in outcome] == ["destroyed"]  # type: ignore[attr-defined]
    assert dom.statistics().destroys == 1
    assert dom.info().idle
    checked(recorder, dom)


@pytest.mark.parametrize("delay", [0, 1, 2])
async def test_destroy_preempts_an_async_job_granted_on_the_fast_path(delay: int) -> None:
    """DESTROY is requested right after the backup's fast-path grant, before
    or after the backup's task resumes (``delay`` varies the interleaving)."""
    recorder = Recorder()
    granted = anyio.Event()

    def on_grant(event: jobctl.TraceEvent) -> None:
        if event.kind is TraceKind.ASYNC_BEGIN:
            granted.set()

    recorder.hub.subscribe(on_grant)
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)
    body_done = False
    reasons: list[str] = []

    async def backup() -> None:
        nonlocal body_done
        try:
            async with dom.async_job(AsyncJob.BACKUP, owner="backup"):
                await anyio.sleep(100)
                body_done = True
        except jobctl.JobAbortedError as exc:
            reasons.append(exc.reason)

    async def destroy() -> None:
        await granted.wait()
        for _ in range(delay):
            await anyio.lowlevel.cancel_shielded_checkpoint()
        async with dom.job(Job.DESTROY, owner="destroy"):
            pass

    with anyio.fail_after(SOON):
        async with anyio.create_task_group() as tg:
            tg.start_soon(destroy)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(backup)
    assert not body_done
    assert reasons == ["destroyed"]
    checked(recorder, dom)


# -- bug 3: one admission rule ---------------------------------------------------


async def section_with_a_parked_modify(
    dom: jobctl.Domain, ajob_ready: anyio.Event, release: anyio.Event
) -> None:
    async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="migrate") as ajob:
        async with ajob.interruptible():
            ajob_ready.set()
            await release.wait()


async def test_a_query_that_may_begin_is_not_refused_behind_a_parked_waiter() -> None:
    """The exporter case: ``nowait`` and ``max_queued=1`` with a MODIFY
    parked behind the async job, inside an open section."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub, max_queued=1)
    ready, release = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(section_with_a_parked_modify, dom, ready, release)
        await ready.wait()

        async def modify() -> None:
            async with dom.job(Job.MODIFY, owner="resize"):  # once the migration ended
                pass

        tg.start_soon(modify)
        await anyio.wait_all_tasks_blocked()
        assert len(dom.info().waiters) == 1
        async with dom.job(Job.QUERY, owner="exporter", nowait=True):
            pass
        async with dom.job(Job.QUERY, owner="stats"):  # max_queued=1 and one waiter
            pass
        release.set()
    assert dom.statistics().busy == 0
    assert dom.statistics().queue_full == 0
    checked(recorder, dom)


async def test_nowait_and_a_full_queue_refuse_with_a_trace_event() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub, max_queued=1)
    release = anyio.Event()

    async def waiter() -> None:
        async with dom.job(Job.QUERY, owner="waiter"):
            pass

    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY, owner="holder"):
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            busy = await elsewhere(dom.job(Job.QUERY, owner="busy", nowait=True))
            assert isinstance(busy, jobctl.JobBusyError)
            assert "held by MODIFY job" in str(busy)
            full = await elsewhere(dom.job(Job.QUERY, owner="full"))
            assert isinstance(full, jobctl.JobQueueFullError)
            assert "max_queued=1" in str(full)
            # Exempt from max_queued: DESTROY queues (and takes it after us).
            tg.start_soon(destroy_quietly, dom)
            await anyio.wait_all_tasks_blocked()
            assert len(dom.info().waiters) == 2
        release.set()
    refused = recorder.of(TraceKind.JOB_REFUSED)
    assert [(e.owner, e.detail["reason"]) for e in refused] == [
        ("busy", "busy"),
        ("full", "queue_full"),
    ]
    stats = dom.statistics()
    assert (stats.busy, stats.queue_full) == (1, 1)
    checked(recorder, dom)


async def destroy_quietly(dom: jobctl.Domain) -> None:
    async with dom.job(Job.DESTROY, owner="destroy"):
        pass


async def test_timeout_zero_fails_at_once_but_begins_when_free() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    async with dom.job(Job.QUERY, owner="free", timeout=0):
        pass

    async def late() -> None:
        with pytest.raises(jobctl.JobTimeoutError, match=r"waited 0\.0 s") as info:
            async with dom.job(Job.MODIFY, owner="late", timeout=0):
                pass
        assert not isinstance(info.value, jobctl.JobBusyError)

    async with dom.job(Job.QUERY, owner="holder"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(late)
    (failed,) = recorder.of(TraceKind.JOB_WAIT_FAILED)
    assert failed.detail["result"] == "timeout"
    checked(recorder, dom)


async def test_an_async_jobs_own_timeout_bounds_its_wait() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub, wait_timeout=None)

    async def save() -> None:
        with pytest.raises(jobctl.JobTimeoutError, match="cannot begin SAVE job"):
            async with dom.async_job(AsyncJob.SAVE, owner="save", timeout=1.0):
                pass

    async with dom.job(Job.MODIFY, owner="holder"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(save)
    (wait,) = recorder.of(TraceKind.JOB_WAIT)
    (failed,) = recorder.of(TraceKind.JOB_WAIT_FAILED)
    assert wait.detail["timeout"] == 1.0
    assert failed.time - wait.time == pytest.approx(1.0, abs=0.5)
    checked(recorder, dom)


# -- bug 4: statistics ----------------------------------------------------------


async def sits_in_a_section(
    dom: jobctl.Domain, kind: AsyncJob, owner: str, ready: anyio.Event
) -> None:
    """An async job that waits in a section until it is aborted or destroyed."""
    with pytest.raises(jobctl.JobAbortedError):
        async with dom.async_job(kind, owner=owner) as ajob:
            async with ajob.interruptible():
                ready.set()
                await anyio.sleep_forever()


async def test_statistics_count_destroys_and_aborts() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)
    for end in ("abort", "destroy"):
        ready = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sits_in_a_section, dom, AsyncJob.MIGRATION_OUT, "m", ready)
            await ready.wait()
            if end == "abort":
                await dom.abort("user")
            else:
                await destroy_quietly(dom)
    stats = dom.statistics()
    assert (stats.aborts, stats.destroys) == (1, 1)
    checked(recorder, dom)


# -- bug 5: a raising trace listener -------------------------------------------


async def test_a_raising_listener_is_dropped_and_loses_no_wakeup() -> None:
    recorder = Recorder()
    calls = 0

    def broken(event: jobctl.TraceEvent) -> None:
        nonlocal calls
        calls += 1
        if event.kind is TraceKind.JOB_END:
            raise RuntimeError("listener bug")

    subscription = recorder.hub.subscribe(broken)
    dom = jobctl.Domain("vm", trace=recorder.hub, wait_timeout=SOON)
    began = anyio.Event()

    async def waiter() -> None:
        async with dom.job(Job.QUERY, owner="waiter"):
            began.set()

    with anyio.fail_after(SOON):
        async with anyio.create_task_group() as tg:
            async with dom.job(Job.MODIFY, owner="holder"):
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
            await began.wait()  # the grant after MODIFY's end was not lost
    assert not subscription.active
    assert recorder.hub.failed_listeners == 1
    (failure,) = recorder.of(TraceKind.LISTENER_FAILED)
    assert failure.detail["error"] == "RuntimeError: listener bug"
    assert failure.detail["event"] == "job.end"
    calls_then = calls
    async with dom.job(Job.QUERY):
        pass
    assert calls == calls_then  # dropped: it is not called again
    checked(recorder, dom)


async def test_closing_one_subscription_keeps_the_others() -> None:
    hub = jobctl.TraceHub()
    first: list[str] = []
    second: list[str] = []
    sub_a = hub.subscribe(first.append)  # type: ignore[arg-type]
    hub.subscribe(second.append)  # type: ignore[arg-type]
    sub_twice = hub.subscribe(first.append)  # type: ignore[arg-type]
    dom = jobctl.Domain("vm", trace=hub)
    async with dom.job(Job.QUERY):
        pass
    sub_a.close()
    sub_a.close()  # idempotent
    assert sub_twice.active
    async with dom.job(Job.QUERY):
        pass
    assert len(second) == 4
    assert len(first) == 2 * 2 + 2  # both subscriptions, then the one left
    sub_twice.close()
    assert hub.active


# -- bug 6: an abort whose hook fails --------------------------------------------


async def test_an_abort_whose_hook_fails_aborts_nothing() -> None:
    recorder = Recorder()
    refusing = ScriptedMonitor(faults=[FaultRule(ErrorReply("refused"), command="migrate_cancel")])
    dom = jobctl.Domain("vm", monitor=refusing, trace=recorder.hub)
    ready, go_on = anyio.Event(), anyio.Event()
    finished = False

    async def cancel(mon: jobctl.MonitorSession) -> None:
        await mon.execute("migrate_cancel")

    async def migrate() -> None:
        nonlocal finished
        async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="m") as ajob:
            ajob.set_abort_hook(cancel)
            async with ajob.interruptible():
                ready.set()
                await go_on.wait()
            async with ajob.monitor() as mon:
                await mon.execute("query-migrate")
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await ready.wait()
        with pytest.raises(ScriptedReplyError, match="refused"):
            await dom.abort("user")
        go_on.set()
    assert finished
    assert dom.statistics().aborts == 0
    assert dom.info().completed_async_job is not None
    assert dom.info().completed_async_job is not None  # still there when read again
    assert kinds(recorder).count("abort.failed") == 1
    assert "abort.delivered" not in kinds(recorder)
    checked(recorder, dom)


# -- the monitor ----------------------------------------------------------------


async def test_the_monitor_goes_to_its_waiters_in_arrival_order() -> None:
    recorder = Recorder()
    monitor = ScriptedMonitor()
    monitor.hold()  # every command waits until the gate opens
    dom = jobctl.Domain("vm", monitor=monitor, trace=recorder.hub)
    order: list[str] = []

    async def query(name: str) -> None:
        async with dom.job(Job.QUERY, owner=name) as job:
            async with job.monitor() as mon:
                order.append(name)
                await mon.execute("query-status")

    async with anyio.create_task_group() as tg:
        for name in "abcdef":
            tg.start_soon(query, name)
            await anyio.wait_all_tasks_blocked()
        monitor.release()
    assert order == list("abcdef")
    assert len(recorder.of(TraceKind.MONITOR_WAIT)) == 5
    checked(recorder, dom)


async def test_a_nowait_monitor_entry_is_refused_with_a_trace_event() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)
    async with anyio.create_task_group() as tg:
        async with dom.job(Job.QUERY, owner="a") as job, job.monitor():

            async def other() -> None:
                async with dom.job(Job.QUERY, owner="b") as job_b:
                    with pytest.raises(jobctl.JobBusyError, match="monitor of domain 'vm'"):
                        async with job_b.monitor(nowait=True):
                            pass

            tg.start_soon(other)
            await anyio.wait_all_tasks_blocked()
    (refused,) = recorder.of(TraceKind.MONITOR_REFUSED)
    assert refused.owner == "b"
    checked(recorder, dom)


async def test_a_job_ending_while_holding_the_monitor_releases_it() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)
    job = dom.job(Job.QUERY, owner="sloppy")
    async with job:
        session = job.monitor()
        await session.__aenter__()
    assert dom.info().monitor_holder is None
    with pytest.raises(jobctl.JobStateError, match="outside its block"):
        await session.execute("query-status")
    async with dom.job(Job.MODIFY) as other, other.monitor(nowait=True) as mon:
        await mon.execute("query-status")
    checked(recorder, dom)


async def test_an_async_waiter_granted_and_cancelled_at_once_gives_the_job_back() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    scope = anyio.CancelScope()

    async def save() -> None:
        with scope:
            async with dom.async_job(AsyncJob.SAVE, owner="save"):
                pytest.fail("the cancelled waiter's body ran")

    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY, owner="holder"):
            tg.start_soon(save)
            await anyio.wait_all_tasks_blocked()
            # Cancel the waiting save; before its task runs, MODIFY's end
            # (leaving this block) grants it the domain.
            scope.cancel()
    ends = recorder.of(TraceKind.ASYNC_END)
    assert [e.detail["outcome"] for e in ends] == ["cancelled"]
    assert dom.info().idle
    async with dom.async_job(AsyncJob.SAVE, nowait=True):
        pass
    checked(recorder, dom)


# -- the barrier ----------------------------------------------------------------


async def test_a_barrier_cut_short_by_an_outer_scope_holds_the_next_entries() -> None:
    """The async job's barrier wait is cancelled by an outer scope it then
    leaves; its next section and its next monitor entry still wait for the
    job that began inside."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)
    began, release, cut_short = anyio.Event(), anyio.Event(), anyio.Event()
    events: list[str] = []

    async def query() -> None:
        async with dom.job(Job.QUERY, owner="q"):
            began.set()
            await release.wait()
            events.append("query ended")

    async def migrate() -> None:
        async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="m") as ajob:
            with anyio.move_on_after(0.5):
                async with ajob.interruptible():
                    await began.wait()
            events.append("barrier wait cut short")
            cut_short.set()
            async with ajob.monitor() as mon:
                events.append("monitor entered")
                await mon.execute("query-migrate")

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(query)
        await began.wait()
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(SOON):
            await cut_short.wait()
        await anyio.wait_all_tasks_blocked()
        assert "monitor entered" not in events
        release.set()
    assert events == ["barrier wait cut short", "query ended", "monitor entered"]
    checked(recorder, dom)


async def test_a_section_error_is_raised_only_after_the_barrier() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    began, release = anyio.Event(), anyio.Event()
    events: list[str] = []

    async def query() -> None:
        async with dom.job(Job.QUERY, owner="q"):
            began.set()
            await release.wait()
            events.append("query ended")

    async def migrate() -> None:
        try:
            async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="m") as ajob:
                async with ajob.interruptible():
                    await began.wait()
                    raise ValueError("flow failed")
        except ValueError:
            events.append("error delivered")

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(query)
        await anyio.wait_all_tasks_blocked()
        assert events == []
        release.set()
    assert events == ["query ended", "error delivered"]
    checked(recorder, dom)


# -- persistence ----------------------------------------------------------------


class Persister:
    def __init__(self, *, stuck: bool = False) -> None:
        #: Saving never ends (only a cancellation gets out of it).
        self.stuck = stuck
        self.saved: list[str] = []
        self.cleared: list[str | None] = []

    async def save_async_job(
        self, domain: str, info: jobctl.AsyncJobInfo, private: Mapping[str, Any]
    ) -> None:
        if self.stuck:
            await anyio.sleep_forever()
        await anyio.sleep(0.01)
        self.saved.append(info.phase)

    async def clear_async_job(self, domain: str, info: jobctl.AsyncJobInfo) -> None:
        await anyio.sleep(0.01)  # shielded: must complete even when cancelled
        self.cleared.append(info.outcome)


async def test_the_async_job_is_cleared_when_cancelled_or_destroyed() -> None:
    recorder = Recorder()
    persister = Persister()
    dom = jobctl.Domain("vm", trace=recorder.hub, persister=persister)
    with anyio.move_on_after(0.5):
        async with dom.async_job(AsyncJob.SAVE, owner="cancelled") as ajob:
            await ajob.set_phase("write")
            await anyio.sleep_forever()
    ready = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sits_in_a_section, dom, AsyncJob.BACKUP, "destroyed", ready)
        await ready.wait()
        await destroy_quietly(dom)
    assert persister.cleared == ["cancelled", "destroyed"]
    assert dom.info().idle
    checked(recorder, dom)


async def test_a_destroy_during_the_first_save_ends_the_job_destroyed() -> None:
    """Pre-empted while its begin is being persisted: no raw Cancelled escapes."""
    recorder = Recorder()
    persister = Persister(stuck=True)
    dom = jobctl.Domain("vm", trace=recorder.hub, persister=persister)
    reasons: list[str] = []

    async def save() -> None:
        try:
            async with dom.async_job(AsyncJob.SAVE, owner="save"):
                pytest.fail("the body ran")
        except jobctl.JobAbortedError as exc:
            reasons.append(exc.reason)

    async with anyio.create_task_group() as tg:
        tg.start_soon(save)
        await anyio.wait_all_tasks_blocked()  # in save_async_job's sleep
        await destroy_quietly(dom)
    assert reasons == ["destroyed"]
    assert persister.cleared == ["destroyed"]
    checked(recorder, dom)
