"""Edges that mutation testing found unpinned: the wait queue seen through a domain,
counters that add up over several events, abort corner cases, messages and
reprs. On trio (virtual time, exact values) and asyncio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio

import jobctl
from jobctl import AsyncJob, Job, TraceKind
from jobctl.testing import ScriptedMonitor

from ._support import Recorder, echo
from .test_decisions import checked, destroy_quietly, elsewhere

pytestmark = pytest.mark.anyio


def virtual() -> bool:
    return sniffio.current_async_library() == "trio"


# -- the wait queue ---------------------------------------------------------------


async def test_the_wait_queue_keeps_arrival_order_across_kinds() -> None:
    """The domain's wait queue: waiters of every kind are listed in arrival
    order and begin in that order, whatever their kinds; one that gives up
    leaves the others in place."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    quitter = anyio.CancelScope()

    async def gives_up() -> None:
        with quitter:
            async with dom.job(Job.MODIFY, owner="m1"):
                pass

    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY, owner="holder"):
            assert not dom.info().waiters and dom.statistics().waiting == 0
            for owner, kind in (("s1", Job.SUSPEND), ("m1", None), ("q1", Job.QUERY)):
                if kind is None:
                    tg.start_soon(gives_up)
                else:
                    tg.start_soon(elsewhere, dom.job(kind, owner=owner))
                await anyio.wait_all_tasks_blocked()
            for owner, kind in (("q2", Job.QUERY), ("s2", Job.SUSPEND)):
                tg.start_soon(elsewhere, dom.job(kind, owner=owner))
                await anyio.wait_all_tasks_blocked()
            assert [w.owner for w in dom.info().waiters] == ["s1", "m1", "q1", "q2", "s2"]
            assert dom.statistics().waiting == 5
            quitter.cancel()
            await anyio.wait_all_tasks_blocked()
            assert [w.owner for w in dom.info().waiters] == ["s1", "q1", "q2", "s2"]
            assert dom.statistics().waiting == 4
    began = [e.owner for e in recorder.of(TraceKind.JOB_BEGIN)]
    assert began == ["holder", "s1", "q1", "q2", "s2"]
    assert not dom.info().waiters and dom.statistics().waiting == 0
    checked(recorder, dom)


async def test_destroy_waiters_queue_behind_earlier_destroys_only() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY, owner="holder"):
            for name in ("q1", "q2"):
                tg.start_soon(elsewhere, dom.job(Job.QUERY, owner=name))
                await anyio.wait_all_tasks_blocked()
            for name in ("d1", "d2"):
                tg.start_soon(elsewhere, dom.job(Job.DESTROY, owner=name))
                await anyio.wait_all_tasks_blocked()
            assert [w.owner for w in dom.info().waiters] == ["q1", "q2", "d1", "d2"]
    positions = {e.owner: e.detail["position"] for e in recorder.of(TraceKind.JOB_WAIT)}
    assert positions == {"q1": 0, "q2": 1, "d1": 0, "d2": 1}
    begins = [e.owner for e in recorder.of(TraceKind.JOB_BEGIN)]
    assert begins == ["holder", "d1", "d2", "q1", "q2"]
    checked(recorder, dom)


# -- counters over several events ------------------------------------------------


async def test_counters_add_up() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)

    async def hook(mon: jobctl.MonitorSession) -> None:
        await mon.execute("migrate_cancel")

    async def run(*, destroy: bool) -> None:
        opened = anyio.Event()
        leave = anyio.Event()

        async def migrate() -> None:
            nonlocal opened, leave
            with pytest.raises(jobctl.JobAbortedError):
                async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="m") as ajob:
                    ajob.set_abort_hook(hook)
                    for _ in range(2):  # two barriers
                        async with ajob.interruptible():
                            opened.set()
                            await leave.wait()
                        opened, leave = anyio.Event(), anyio.Event()
                    async with ajob.interruptible():
                        opened.set()
                        await anyio.sleep_forever()

        async def query(release: anyio.Event) -> None:
            async with dom.job(Job.QUERY, owner="q"):
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate)
            for _ in range(2):
                await opened.wait()
                release = anyio.Event()
                tg.start_soon(query, release)
                await anyio.wait_all_tasks_blocked()
                leave.set()  # the gate closes; the barrier waits for the query
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(1.0 if virtual() else 0.01)
                release.set()
                await anyio.wait_all_tasks_blocked()
            await opened.wait()
            if destroy:
                async with dom.job(Job.DESTROY, owner="destroy"):
                    await anyio.wait_all_tasks_blocked()  # the migration unwinds meanwhile
            else:
                await dom.abort()

    await run(destroy=False)
    await run(destroy=True)
    await run(destroy=False)
    await run(destroy=True)
    stats = dom.statistics()
    # Two one-second barriers a run, and each DESTROY is at the barrier of
    # the section it began in (it still runs when the pre-empted job leaves
    # the section; the barrier is abandoned as the job ends).
    assert (stats.aborts, stats.destroys, stats.barrier_waits) == (2, 2, 10)
    if virtual():
        assert stats.barrier_wait_time == pytest.approx(8.0)
    else:
        assert stats.barrier_wait_time > 0
    aborts = recorder.of(TraceKind.ABORT_REQUEST)
    assert [e.detail["reason"] for e in aborts] == ["aborted", "aborted"]  # the default
    assert [e.owner for e in recorder.of(TraceKind.JOB_BEGIN) if e.job == "ABORT"] == [
        "abort:aborted",
        "abort:aborted",
    ]
    checked(recorder, dom)


async def test_a_timed_out_wait_reports_how_long_it_waited() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    job = dom.job(Job.MODIFY, owner="late", timeout=1.5)
    async with dom.job(Job.QUERY, owner="holder"):
        error = await elsewhere(job)
    assert isinstance(error, jobctl.JobTimeoutError)
    (failed,) = recorder.of(TraceKind.JOB_WAIT_FAILED)
    if virtual():
        assert failed.detail["waited"] == 1.5
    else:
        assert 1.5 <= failed.detail["waited"] < 2.5
    assert repr(job).endswith("(ended)>")
    assert not job.active
    checked(recorder, dom)


# -- aborts -------------------------------------------------------------------------


async def test_an_abort_waits_no_longer_than_its_timeout() -> None:
    dom = jobctl.Domain("vm", wait_timeout=None)
    started = anyio.Event()

    async def save() -> None:
        async with dom.async_job(AsyncJob.SAVE, owner="save"):
            started.set()
            await anyio.sleep(10.0)  # never interruptible

    async with anyio.create_task_group() as tg:
        tg.start_soon(save)
        await started.wait()
        before = anyio.current_time()
        with pytest.raises(jobctl.JobTimeoutError, match="cannot begin ABORT job"):
            await dom.abort("too late", timeout=1.0)
        if virtual():
            assert anyio.current_time() - before == 1.0
        tg.cancel_scope.cancel()


async def test_an_abort_outliving_its_target_aborts_nothing_else() -> None:
    """The abort waits while its target runs outside sections; the target
    ends and another async job opens a section: the abort must not hit it."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub, wait_timeout=None)
    first_started, first_done, second_open = anyio.Event(), anyio.Event(), anyio.Event()
    second_aborted = False

    async def first() -> None:
        async with dom.async_job(AsyncJob.SAVE, owner="first"):
            first_started.set()
            await first_done.wait()

    async def second() -> None:
        nonlocal second_aborted
        try:
            async with dom.async_job(AsyncJob.BACKUP, owner="second") as ajob:
                async with ajob.interruptible():
                    second_open.set()
                    await anyio.sleep(1.0)
        except jobctl.JobAbortedError:
            second_aborted = True

    async def abort() -> None:
        with pytest.raises(jobctl.JobStateError, match="ended before it could be aborted"):
            await dom.abort("for the first")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await first_started.wait()
        tg.start_soon(second)  # queued behind the first
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(abort)  # aimed at the first; queued behind the second
        await anyio.wait_all_tasks_blocked()
        first_done.set()  # the second begins, and its section lets the ABORT in
    assert not second_aborted
    assert dom.statistics().aborts == 0
    checked(recorder, dom)


async def test_an_abort_whose_target_is_destroyed_during_the_hook_aborts_nothing() -> None:
    recorder = Recorder()
    monitor = ScriptedMonitor()
    dom = jobctl.Domain("vm", monitor=monitor, trace=recorder.hub)
    in_section, in_hook = anyio.Event(), anyio.Event()

    async def hook(mon: jobctl.MonitorSession) -> None:
        in_hook.set()
        await mon.execute("migrate_cancel")  # held at the monitor's gate

    async def migrate() -> None:
        with pytest.raises(jobctl.JobAbortedError) as info:
            async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="m") as ajob:
                ajob.set_abort_hook(hook)
                async with ajob.interruptible():
                    in_section.set()
                    await anyio.sleep_forever()
        assert info.value.reason == "destroyed"

    async def abort() -> None:
        with pytest.raises(jobctl.JobStateError, match="ended before it could be aborted"):
            await dom.abort("user")

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await in_section.wait()
        monitor.hold()
        tg.start_soon(abort)
        await in_hook.wait()
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(destroy_quietly, dom)  # waits for the ABORT job to end
        await anyio.wait_all_tasks_blocked()
        # DESTROY pre-empted the migration, which ended (its barrier abandoned).
        assert dom.info().async_job is None
        monitor.release()
    assert dom.statistics().aborts == 0
    assert "abort.delivered" not in recorder.kinds()
    checked(recorder, dom)


async def test_an_abort_is_raised_once_even_if_the_flow_goes_on() -> None:
    dom = jobctl.Domain("vm")
    ready = anyio.Event()
    raised = 0

    async def migrate() -> None:
        nonlocal raised
        async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="m") as ajob:
            try:
                async with ajob.interruptible():
                    ready.set()
                    await anyio.sleep_forever()
            except jobctl.JobAbortedError as exc:
                assert exc.reason == "aborted"
                raised += 1
            async with ajob.interruptible():  # the flow cleans up in a section
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await ready.wait()
        await dom.abort("user")
    assert raised == 1
    completed = dom.info().completed_async_job
    assert completed is not None and completed.outcome == "ok"


# -- messages and reprs -----------------------------------------------------------


async def test_misuse_is_refused_with_a_message() -> None:
    dom = jobctl.Domain("vm")
    async with dom.async_job(AsyncJob.SAVE, owner="save") as ajob:
        for bad in ("", None, 3):
            with pytest.raises(ValueError, match="a phase is a non-empty string"):
                await ajob.set_phase(bad)  # type: ignore[arg-type]
        section = ajob.interruptible()
        async with section:
            pass
        with pytest.raises(
            jobctl.JobStateError, match=r"^an interruptible section object cannot be entered twice$"
        ):
            async with section:
                pass
    with pytest.raises(jobctl.JobStateError, match=r"<ActiveAsyncJob SAVE #\d+ .* is not active"):
        ajob.set_progress({})
    assert repr(ajob).endswith("phase 'begin' (ended)>")
    job = dom.job(Job.QUERY, owner="q")
    assert repr(job) == f"<ActiveJob QUERY #{job.id} on 'vm' (new)>"
    async with job:
        assert repr(job) == f"<ActiveJob QUERY #{job.id} on 'vm' (active)>"


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_holder_times_count_from_each_jobs_start() -> None:
    dom = jobctl.Domain("vm", wait_timeout=None)
    started = anyio.Event()

    async def save() -> None:
        async with dom.async_job(AsyncJob.SAVE, owner="save"):
            started.set()
            await anyio.sleep(10.0)

    async with anyio.create_task_group() as tg:
        await anyio.sleep(5.0)
        tg.start_soon(save)
        await started.wait()
        await anyio.sleep(2.0)
        error = await elsewhere(dom.job(Job.QUERY, nowait=True))
        assert "(owner 'save', 2.0 s, phase 'begin', not interruptible)" in str(error)


async def test_a_cancelled_command_is_traced_as_cancelled() -> None:
    recorder = Recorder()
    monitor = ScriptedMonitor()
    monitor.hold()  # the command never answers
    dom = jobctl.Domain("vm", monitor=monitor, trace=recorder.hub)
    with anyio.move_on_after(1.0):
        async with dom.job(Job.QUERY, owner="q") as job, job.monitor() as mon:
            await mon.execute("query-status")
    (answered,) = recorder.of(TraceKind.COMMAND_ANSWERED)
    assert answered.detail["outcome"] == "cancelled"
    assert answered.detail["command"] == "query-status"
    (end,) = recorder.of(TraceKind.JOB_END)
    assert end.detail["outcome"] == "cancelled"
    monitor.release()
    async with dom.job(Job.QUERY) as job, job.monitor() as mon:
        await mon.execute("query-status")  # the session is usable again
    checked(recorder, dom)


# -- the monitor's less travelled paths --------------------------------------------


async def test_a_session_whose_job_ended_while_it_waited_is_dropped() -> None:
    """A task of the job waits for the monitor; the job's own block ends
    meanwhile: when the monitor is free, that session is dropped (traced),
    its task gets JobStateError (the session stays closed), and the next
    waiter gets the monitor. A dropped session that was cancelled at the
    same time just ends cancelled."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub)
    errors: list[str] = []
    cancelled = anyio.CancelScope()

    async def use(job: jobctl.ActiveJob, scope: anyio.CancelScope) -> None:
        session = job.monitor()
        try:
            with scope:
                async with session:
                    pass
        except jobctl.JobStateError as exc:
            errors.append(str(exc))
            # The dropped session is closed: using it again is a clear misuse.
            with pytest.raises(jobctl.JobStateError, match=r"outside its block \(closed\)$"):
                await session.execute("query-status")

    async def ends_with_a_waiting_task(
        outer: anyio.abc.TaskGroup, name: str, scope: anyio.CancelScope, done: anyio.Event
    ) -> None:
        async with dom.job(Job.QUERY, owner=name) as job:
            outer.start_soon(use, job, scope)
            await anyio.wait_all_tasks_blocked()
        done.set()

    async def later() -> None:
        async with dom.job(Job.QUERY, owner="later") as job, job.monitor() as mon:
            await mon.execute("query-status")

    async with anyio.create_task_group() as tg:
        async with dom.job(Job.QUERY, owner="holder") as holder:
            session = holder.monitor()
            await session.__aenter__()
            for name, scope in (("ended", anyio.CancelScope()), ("cancelled", cancelled)):
                done = anyio.Event()
                tg.start_soon(ends_with_a_waiting_task, tg, name, scope, done)
                await done.wait()
            tg.start_soon(later)
            await anyio.wait_all_tasks_blocked()
            cancelled.cancel()  # and, before its task runs, the release drops it
            await session.__aexit__(None, None, None)
    assert len(errors) == 1
    assert errors[0].endswith("ended while waiting for the monitor")
    failed = recorder.of(TraceKind.MONITOR_WAIT_FAILED)
    dropped = [e.owner for e in failed if e.detail["result"] == "job_ended"]
    assert dropped == ["ended", "cancelled"]
    enters = [e.owner for e in recorder.of(TraceKind.MONITOR_ENTER)]
    assert enters == ["holder", "later"]
    checked(recorder, dom)


async def test_an_async_job_ending_while_holding_the_monitor_releases_it() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(responder=echo), trace=recorder.hub)
    async with dom.async_job(AsyncJob.SAVE, owner="sloppy") as ajob:
        session = ajob.monitor()
        await session.__aenter__()
        assert dom.info().monitor_holder == ajob.id
    kinds = recorder.kinds()
    assert kinds.index("monitor.exit") < kinds.index("async.end")
    assert dom.info().monitor_holder is None
    async with dom.job(Job.MODIFY) as job, job.monitor(nowait=True) as mon:
        assert await mon.execute("query-status", {"a": 1}) == {
            "command": "query-status",
            "arguments": {"a": 1},
        }
    checked(recorder, dom)


async def test_monitor_misuse_messages() -> None:
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor())
    async with dom.job(Job.QUERY, owner="q") as job:
        session = job.monitor()
        async with session:
            pass
        with pytest.raises(
            jobctl.JobStateError, match=r"^a monitor session cannot be entered twice$"
        ):
            async with session:
                pass
        async with job.monitor():
            # A second job of this task cannot exist (jobs do not nest), so the
            # "this task already holds the monitor" refusal needs a session of
            # this job entered again while held:
            with pytest.raises(jobctl.JobStateError, match="already holds the monitor"):
                async with job.monitor():
                    pass


# -- outcomes ------------------------------------------------------------------------


class Persister:
    def __init__(self, *, fail_first_save: bool = False) -> None:
        self.fail_first_save = fail_first_save
        self.saved: list[tuple[str, str]] = []
        self.cleared: list[tuple[str, str | None, str | None]] = []

    async def save_async_job(
        self, domain: str, info: jobctl.AsyncJobInfo, private: Mapping[str, Any]
    ) -> None:
        await anyio.lowlevel.checkpoint()
        if self.fail_first_save and not self.saved:
            self.saved.append((domain, "failed"))
            raise OSError("disk full")
        self.saved.append((domain, info.phase))

    async def clear_async_job(self, domain: str, info: jobctl.AsyncJobInfo) -> None:
        await anyio.lowlevel.checkpoint()
        self.cleared.append((domain, info.outcome, info.error))


async def test_outcomes_and_their_errors() -> None:
    recorder = Recorder()
    persister = Persister()
    dom = jobctl.Domain("vm7", monitor=ScriptedMonitor(), trace=recorder.hub, persister=persister)
    with pytest.raises(ValueError, match="flow failed"):
        async with dom.async_job(AsyncJob.SAVE, owner="failing") as ajob:
            assert ajob.preempted is False
            raise ValueError("flow failed")
    failed = dom.info().completed_async_job
    assert failed is not None
    assert (failed.outcome, failed.error, failed.interruptible) == (
        "error",
        "ValueError: flow failed",
        False,
    )
    assert not ajob.in_section

    ready = anyio.Event()

    async def aborted_then_failing() -> None:
        with pytest.raises(RuntimeError):
            async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="after-abort") as ajob:
                try:
                    async with ajob.interruptible():
                        ready.set()
                        await anyio.sleep_forever()
                except jobctl.JobAbortedError:
                    pass
                raise RuntimeError("clean-up failed")

    async with anyio.create_task_group() as tg:
        tg.start_soon(aborted_then_failing)
        await ready.wait()
        await dom.abort("user")
    after = dom.info().completed_async_job
    assert after is not None
    assert (after.outcome, after.error) == ("error", "RuntimeError: clean-up failed")
    assert [domain for domain, *_ in persister.cleared] == ["vm7", "vm7"]
    assert [outcome for _, outcome, _ in persister.cleared] == ["error", "error"]
    ends = [e.detail["outcome"] for e in recorder.of(TraceKind.ASYNC_END)]
    assert ends == ["error", "error"]
    checked(recorder, dom)


async def test_a_persister_failing_at_begin_fails_the_job() -> None:
    recorder = Recorder()
    persister = Persister(fail_first_save=True)
    dom = jobctl.Domain("vm", trace=recorder.hub, persister=persister)
    with pytest.raises(OSError, match="disk full"):
        async with dom.async_job(AsyncJob.SAVE, owner="save"):
            pytest.fail("the body ran")
    (end,) = recorder.of(TraceKind.ASYNC_END)
    assert (end.detail["outcome"], end.detail["error"]) == ("error", "OSError: disk full")
    assert persister.cleared == [("vm", "error", "OSError: disk full")]
    assert dom.info().idle
    checked(recorder, dom)


async def test_a_destroyed_job_says_why() -> None:
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor())
    ready = anyio.Event()
    messages: list[str] = []

    async def save() -> None:
        try:
            async with dom.async_job(AsyncJob.SAVE, owner="save") as ajob:
                async with ajob.interruptible():
                    ready.set()
                    await anyio.sleep_forever()
        except jobctl.JobAbortedError as exc:
            messages.append(str(exc))
            assert ajob.preempted

    async with anyio.create_task_group() as tg:
        tg.start_soon(save)
        await ready.wait()
        await destroy_quietly(dom)
    assert messages == ["async job SAVE on domain 'vm' was pre-empted by DESTROY"]


async def test_a_task_holding_the_monitor_cannot_enter_it_for_another_job() -> None:
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor())
    other_ready, release = anyio.Event(), anyio.Event()
    jobs: list[jobctl.ActiveJob] = []

    async def other() -> None:
        async with dom.job(Job.QUERY, owner="other") as job:
            jobs.append(job)
            other_ready.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await other_ready.wait()
        async with dom.job(Job.QUERY, owner="mine") as mine, mine.monitor():
            with pytest.raises(
                jobctl.JobStateError,
                match=r"^this task already holds the monitor of 'vm' through <ActiveJob QUERY",
            ):
                async with jobs[0].monitor():
                    pass
        release.set()


async def test_a_refused_or_cancelled_session_is_closed() -> None:
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor())
    async with anyio.create_task_group() as tg:
        async with dom.job(Job.QUERY, owner="holder") as job, job.monitor():
            sessions: list[jobctl.MonitorSession] = []

            async def refused() -> None:
                async with dom.job(Job.QUERY, owner="refused") as job:
                    session = job.monitor(nowait=True)
                    sessions.append(session)
                    with pytest.raises(jobctl.JobBusyError, match="held by <ActiveJob QUERY"):
                        await session.__aenter__()
                    with pytest.raises(jobctl.JobStateError, match=r"outside its block \(closed\)"):
                        await session.execute("query-status")

            async def cancelled(scope: anyio.CancelScope) -> None:
                async with dom.job(Job.QUERY, owner="cancelled") as job:
                    session = job.monitor()
                    with scope:
                        await session.__aenter__()
                    with pytest.raises(jobctl.JobStateError, match=r"outside its block \(closed\)"):
                        await session.execute("query-status")

            tg.start_soon(refused)
            scope = anyio.CancelScope()
            tg.start_soon(cancelled, scope)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()


async def test_a_cancelled_async_job_says_so_and_starts_with_no_progress() -> None:
    dom = jobctl.Domain("vm")
    with anyio.move_on_after(1.0):
        async with dom.async_job(AsyncJob.SAVE, owner="save"):
            info = dom.info().async_job
            assert info is not None and info.progress == {}
            await anyio.sleep_forever()
    completed = dom.info().completed_async_job
    assert completed is not None
    assert completed.outcome == "cancelled"
    assert completed.error is not None and completed.error.startswith("Cancelled")


# -- refusals, waits and what they leave behind ------------------------------


async def test_a_domain_starts_empty_with_its_documented_defaults() -> None:
    dom = jobctl.Domain("vm")
    assert dom.wait_timeout == 30.0
    info = dom.info()
    assert (info.async_job, info.completed_async_job, info.monitor_holder) == (None, None, None)
    assert info.idle
    assert jobctl.Domain("vm", wait_timeout=0).wait_timeout == 0
    with pytest.raises(ValueError, match=r"^wait_timeout must be >= 0 or None, not -1$"):
        jobctl.Domain("vm", wait_timeout=-1)
    with pytest.raises(ValueError, match=r"^a job's timeout must be >= 0 or None, not -0\.5$"):
        async with dom.job(Job.QUERY, timeout=-0.5):
            pass


async def test_a_zero_wait_timeout_times_out_at_once() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", wait_timeout=0, trace=recorder.hub)
    async with dom.job(Job.MODIFY, owner="holder"):
        started = anyio.current_time()
        error = await elsewhere(dom.job(Job.MODIFY, owner="late"))
        assert isinstance(error, jobctl.JobTimeoutError), error
        assert "held by MODIFY job" in str(error)
        assert anyio.current_time() - started < 0.5
    assert [e.detail["result"] for e in recorder.of(TraceKind.JOB_WAIT_FAILED)] == ["timeout"]
    checked(recorder, dom)


async def test_refused_and_waiting_jobs_say_so_and_every_refusal_counts() -> None:
    recorder = Recorder()
    dom = jobctl.Domain("vm", max_queued=1, trace=recorder.hub)

    async def cancelled(owner: str) -> None:
        with anyio.move_on_after(0.5):
            async with dom.job(Job.MODIFY, owner=owner, timeout=10.0):
                pass

    async with dom.job(Job.MODIFY, owner="holder"):
        refused = dom.job(Job.MODIFY, owner="busy", nowait=True)
        assert isinstance(await elsewhere(refused), jobctl.JobBusyError)
        assert repr(refused) == f"<ActiveJob MODIFY #{refused.id} on 'vm' (ended)>"
        again = await elsewhere(refused)
        assert isinstance(again, jobctl.JobStateError)
        assert str(again) == f"{refused!r} cannot be entered twice"
        async with anyio.create_task_group() as tg:
            waiting = dom.job(Job.MODIFY, owner="waiting", timeout=1.0)
            outcome: list[BaseException | None] = []

            async def waits() -> None:
                outcome.append(await elsewhere(waiting))

            tg.start_soon(waits)
            await anyio.wait_all_tasks_blocked()
            assert repr(waiting) == f"<ActiveJob MODIFY #{waiting.id} on 'vm' (waiting)>"
            for owner in ("full-1", "full-2"):
                full = await elsewhere(dom.job(Job.MODIFY, owner=owner))
                assert isinstance(full, jobctl.JobQueueFullError), full
        assert isinstance(outcome[0], jobctl.JobTimeoutError)
        # A second timeout and two cancelled waits count one by one too.
        late = await elsewhere(dom.job(Job.MODIFY, owner="again", timeout=0.5))
        assert isinstance(late, jobctl.JobTimeoutError)
        for owner in ("cancelled-1", "cancelled-2"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled, owner)
    stats = dom.statistics()
    assert (stats.busy, stats.queue_full, stats.timeouts, stats.cancelled_waits) == (1, 2, 2, 2)
    failed = [(e.owner, e.detail["result"]) for e in recorder.of(TraceKind.JOB_WAIT_FAILED)]
    assert failed == [
        ("waiting", "timeout"),
        ("again", "timeout"),
        ("cancelled-1", "cancelled"),
        ("cancelled-2", "cancelled"),
    ]
    checked(recorder, dom)


async def test_a_waiter_granted_and_cancelled_at_once_gives_the_job_back() -> None:
    """The holder's end grants the waiter; the waiter is cancelled before its
    task resumes: the job it was granted ends ``cancelled`` at once (traced),
    its body never runs, and the next waiter gets the domain."""
    recorder = Recorder()
    dom = jobctl.Domain("vm", trace=recorder.hub)
    ran: list[str] = []
    scope = anyio.CancelScope()

    async def waiter(owner: str, cancel_scope: anyio.CancelScope) -> None:
        with cancel_scope:
            async with dom.job(Job.MODIFY, owner=owner):
                ran.append(owner)

    def on_grant(event: jobctl.TraceEvent) -> None:
        # The grant is traced as it is made, before the task resumes.
        if event.kind is TraceKind.JOB_BEGIN and event.owner == "granted":
            scope.cancel()

    recorder.hub.subscribe(on_grant)
    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY, owner="holder"):
            tg.start_soon(waiter, "granted", scope)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter, "next", anyio.CancelScope())
            await anyio.wait_all_tasks_blocked()
    assert ran == ["next"]
    ends = [(e.owner, e.detail["outcome"]) for e in recorder.of(TraceKind.JOB_END)]
    assert ends == [("holder", "ok"), ("granted", "cancelled"), ("next", "ok")]
    checked(recorder, dom)
