"""Unit tests for the job core, one rule at a time, on trio (virtual time) and asyncio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import sniffio

import jobctl
from jobctl import AsyncJob, Job, TraceKind
from jobctl.qmp import QMPClosedError
from jobctl.testing import ScriptedMonitor, ScriptedMonitorClosedError

from ._support import Recorder, echo

pytestmark = pytest.mark.anyio


def unit() -> float:
    """One second on trio's virtual clock; a few milliseconds of real time on asyncio."""
    return 1.0 if sniffio.current_async_library() == "trio" else 0.005


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


async def attempt(cm: Any) -> BaseException | None:
    """Enter and leave ``cm`` in another task (jobs do not nest in one task);
    return what it raised."""
    result: list[BaseException | None] = []

    async def run() -> None:
        try:
            async with cm:
                pass
        except Exception as exc:
            result.append(exc)
        else:
            result.append(None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
    return result[0]


class Started:
    """Records which jobs are running, to check who overlaps whom."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.log: list[str] = []


async def hold(dom: jobctl.Domain, kind: Job, name: str, gate: anyio.Event, seen: Started) -> None:
    async with dom.job(kind, owner=name):
        seen.running.add(name)
        seen.log.append(name)
        await gate.wait()
        seen.running.discard(name)


# -- rule 1: domains -----------------------------------------------------------


def test_domain_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        jobctl.Domain("")
    with pytest.raises(ValueError, match="wait_timeout"):
        jobctl.Domain("vm", wait_timeout=-1)
    with pytest.raises(ValueError, match="max_queued"):
        jobctl.Domain("vm", max_queued=-1)
    dom = jobctl.Domain("vm")
    with pytest.raises(TypeError, match=r"jobctl\.Job"):
        dom.job(AsyncJob.BACKUP)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"jobctl\.AsyncJob"):
        dom.async_job(Job.QUERY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="allowed"):
        dom.async_job(AsyncJob.BACKUP, allowed=["query"])  # type: ignore[list-item]


async def test_domains_are_independent() -> None:
    a, b = jobctl.Domain("a"), jobctl.Domain("b")
    async with a.job(Job.MODIFY), b.job(Job.MODIFY, nowait=True):
        pass


# -- rule 2: regular job compatibility ----------------------------------------


async def test_queries_share_and_exclusive_jobs_do_not() -> None:
    dom = jobctl.Domain("vm")
    seen = Started()
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, dom, Job.QUERY, "q1", gate, seen)
        tg.start_soon(hold, dom, Job.QUERY, "q2", gate, seen)
        await settle()
        assert seen.running == {"q1", "q2"}
        tg.start_soon(hold, dom, Job.MODIFY, "m", gate, seen)
        await settle()
        assert "m" not in seen.running
        gate.set()
    assert seen.log[-1] == "m"
    assert dom.info().idle


@pytest.mark.parametrize("kind", [k for k in Job if k is not Job.QUERY])
async def test_every_other_kind_is_exclusive(kind: Job) -> None:
    dom = jobctl.Domain("vm")

    async def try_now(other: Job, outcome: list[str]) -> None:
        try:
            async with dom.job(other, nowait=True):
                outcome.append("began")
        except jobctl.JobBusyError:
            outcome.append("busy")

    for first, second in [(kind, Job.QUERY), (Job.QUERY, kind), (kind, kind)]:
        outcome: list[str] = []
        async with dom.job(first), anyio.create_task_group() as tg:
            tg.start_soon(try_now, second, outcome)
        assert outcome == ["busy"], (first, second)
    assert dom.statistics().busy == 3


# -- rule 3: async jobs ---------------------------------------------------------


async def test_one_async_job_per_domain() -> None:
    dom = jobctl.Domain("vm", wait_timeout=5)
    async with dom.async_job(AsyncJob.BACKUP, owner="b1"):
        error = await attempt(dom.async_job(AsyncJob.SAVE, timeout=0))
        busy = await attempt(dom.async_job(AsyncJob.SAVE, nowait=True))
    assert isinstance(error, jobctl.JobTimeoutError)
    assert "held by async job BACKUP (owner 'b1'" in str(error)
    assert isinstance(busy, jobctl.JobBusyError)


async def test_default_mask_and_destroy_always_allowed() -> None:
    dom = jobctl.Domain("vm")
    async with dom.async_job(AsyncJob.MIGRATION_OUT) as ajob:
        assert ajob.allowed == {Job.QUERY, Job.DESTROY, Job.ABORT}
        ajob.set_allowed([])
        assert ajob.allowed == {Job.DESTROY}
    async with dom.async_job(AsyncJob.MIGRATION_OUT, allowed={Job.MODIFY}) as ajob:
        assert ajob.allowed == {Job.MODIFY, Job.DESTROY}


async def test_async_job_waits_for_regular_jobs_and_blocks_new_ones() -> None:
    dom = jobctl.Domain("vm")
    seen = Started()
    gate = anyio.Event()
    order: list[str] = []

    async def migrate() -> None:
        async with dom.async_job(AsyncJob.MIGRATION_OUT):
            order.append("migrate")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, dom, Job.QUERY, "q1", gate, seen)
        await settle()
        tg.start_soon(migrate)
        await settle()
        assert order == []
        # A later query queues behind the async job: no barging.
        tg.start_soon(hold, dom, Job.QUERY, "q2", gate, seen)
        await settle()
        assert seen.running == {"q1"}
        gate.set()
    assert order == ["migrate"]
    assert seen.log == ["q1", "q2"]


# -- rule 4: interruptible sections and the barrier -----------------------------


async def test_regular_jobs_only_inside_sections_and_barrier_waits() -> None:
    rec = Recorder()
    dom = jobctl.Domain("vm", trace=rec.hub)
    seen = Started()
    gate = anyio.Event()
    after_barrier: list[set[str]] = []
    async with anyio.create_task_group() as tg, dom.async_job(AsyncJob.MIGRATION_OUT) as ajob:
        tg.start_soon(hold, dom, Job.QUERY, "q1", gate, seen)
        await settle()
        assert seen.running == set()
        async with ajob.interruptible():
            await settle()
            assert seen.running == {"q1"}
            assert dom.info().async_job is not None
            assert dom.info().async_job.interruptible  # type: ignore[union-attr]

            async def release_later() -> None:
                await anyio.sleep(5 * unit())
                gate.set()

            tg.start_soon(release_later)
        after_barrier.append(set(seen.running))
        # A query arriving now waits: the gate is closed.
        tg.start_soon(hold, dom, Job.QUERY, "q2", anyio.Event(), seen)
        await settle()
        assert "q2" not in seen.running
        error = await attempt(dom.job(Job.QUERY, nowait=True))
        assert isinstance(error, jobctl.JobBusyError)
        assert "not interruptible" in str(error)
        tg.cancel_scope.cancel()
    assert after_barrier == [set()]
    kinds = rec.kinds()
    assert kinds.index("gate.close") < kinds.index("barrier.start") < kinds.index("barrier.end")
    (end,) = rec.of(TraceKind.BARRIER_END)
    assert end.detail["waited"] >= 5 * unit()
    assert dom.statistics().barrier_waits == 1


async def test_disallowed_kind_waits_for_async_end_without_blocking_allowed_ones() -> None:
    dom = jobctl.Domain("vm")
    seen = Started()
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with dom.async_job(AsyncJob.BACKUP) as ajob:
            tg.start_soon(hold, dom, Job.MODIFY, "modify", gate, seen)
            await settle()
            tg.start_soon(hold, dom, Job.QUERY, "query", gate, seen)
            await settle()
            async with ajob.interruptible():
                await settle()
                assert seen.running == {"query"}
                gate.set()
                await settle()
            assert "modify" not in seen.log
        await settle()
    assert seen.log == ["query", "modify"]


async def test_set_allowed_admits_waiters_at_once() -> None:
    dom = jobctl.Domain("vm")
    seen = Started()
    gate = anyio.Event()
    gate.set()
    async with anyio.create_task_group() as tg, dom.async_job(AsyncJob.BACKUP) as ajob:
        tg.start_soon(hold, dom, Job.SUSPEND, "suspend", gate, seen)
        async with ajob.interruptible():
            await settle()
            assert seen.log == []
            ajob.set_allowed({Job.SUSPEND})
            await settle()
            assert seen.log == ["suspend"]


async def test_sections_do_not_nest_and_monitor_is_closed_inside() -> None:
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor())
    async with dom.async_job(AsyncJob.BACKUP) as ajob:
        async with ajob.interruptible():
            with pytest.raises(jobctl.JobStateError, match="already inside"):
                async with ajob.interruptible():
                    pass
            with pytest.raises(jobctl.JobStateError, match="may not enter the monitor"):
                async with ajob.monitor():
                    pass
        async with ajob.monitor():
            with pytest.raises(jobctl.JobStateError, match="holds the monitor"):
                async with ajob.interruptible():
                    pass
    assert dom.info().idle


# -- rule 5: the monitor --------------------------------------------------------


async def test_monitor_one_holder_one_command() -> None:
    mon = ScriptedMonitor(latency=0.5 * unit())
    dom = jobctl.Domain("vm", monitor=mon)

    async def query(i: int) -> None:
        async with dom.job(Job.QUERY) as job, job.monitor() as m:
            await m.execute("query-status", {"i": i})
            await m.execute("query-blockstats")

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(query, i)
    assert mon.statistics().max_in_flight == 1
    assert len(mon.log) == 10
    # Each holder's two commands are adjacent.
    assert mon.log == ["query-status", "query-blockstats"] * 5


async def test_monitor_misuse_raises_instead_of_deadlocking() -> None:
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(responder=echo))
    async with dom.job(Job.QUERY) as job:
        async with job.monitor() as mon:
            with pytest.raises(jobctl.JobStateError, match="already holds the monitor"):
                async with job.monitor():
                    pass
            assert await mon.execute("query-status") == {
                "command": "query-status",
                "arguments": {},
            }
        with pytest.raises(jobctl.JobStateError, match="outside its block"):
            await mon.execute("query-status")
        session = job.monitor()
        async with session:
            pass
        with pytest.raises(jobctl.JobStateError, match="entered twice"):
            async with session:
                pass
    with pytest.raises(jobctl.JobStateError, match="only an active job"):
        async with job.monitor():
            pass
    nomon = jobctl.Domain("bare")
    async with nomon.job(Job.QUERY) as job:
        with pytest.raises(jobctl.JobStateError, match="has no monitor"):
            async with job.monitor():
                pass
    assert dom.info().idle and nomon.info().idle


async def test_concurrent_commands_on_one_session_are_refused() -> None:
    mon = ScriptedMonitor(latency=unit())
    dom = jobctl.Domain("vm", monitor=mon)
    errors: list[BaseException] = []
    async with dom.job(Job.QUERY) as job, job.monitor() as session:

        async def second() -> None:
            try:
                await session.execute("two")
            except jobctl.JobStateError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(session.execute, "one")
            await settle()
            tg.start_soon(second)
    assert len(errors) == 1 and "already in flight" in str(errors[0])
    assert mon.statistics().max_in_flight == 1


async def test_monitor_errors_propagate_and_release() -> None:
    mon = ScriptedMonitor()
    mon.close()
    dom = jobctl.Domain("vm", monitor=mon)
    rec = Recorder()
    dom = jobctl.Domain("vm", monitor=mon, trace=rec.hub)
    with pytest.raises(ScriptedMonitorClosedError):
        async with dom.job(Job.QUERY) as job, job.monitor() as m:
            await m.execute("query-status")
    (answered,) = rec.of(TraceKind.COMMAND_ANSWERED)
    assert answered.detail["outcome"] == "error"
    assert dom.info().idle


async def test_jobs_do_not_nest_in_one_task() -> None:
    dom = jobctl.Domain("vm")
    async with dom.job(Job.QUERY):
        with pytest.raises(jobctl.JobStateError, match="do not nest"):
            async with dom.job(Job.QUERY):
                pass
    async with dom.async_job(AsyncJob.BACKUP):
        with pytest.raises(jobctl.JobStateError, match="do not nest"):
            async with dom.job(Job.DESTROY):
                pass
    assert dom.info().idle


# -- rule 6: fairness, timeouts, queue limits -----------------------------------


async def test_query_stream_cannot_starve_exclusive_waiter() -> None:
    dom = jobctl.Domain("vm")
    order: list[str] = []

    async def query(i: int) -> None:
        async with dom.job(Job.QUERY):
            order.append(f"q{i}")
            await anyio.sleep(1 * unit())

    async def modify() -> None:
        async with dom.job(Job.MODIFY):
            order.append("modify")

    async with anyio.create_task_group() as tg:
        tg.start_soon(query, 0)
        await settle()
        tg.start_soon(modify)
        await settle()
        for i in range(1, 4):
            tg.start_soon(query, i)
            await settle()
    assert order[:2] == ["q0", "modify"]


async def test_timeout_names_the_holder() -> None:
    dom = jobctl.Domain("vm1", wait_timeout=2 * unit())
    async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="migrate") as ajob:
        await ajob.set_phase("perform")
        error = await attempt(dom.job(Job.QUERY))
    assert isinstance(error, jobctl.JobTimeoutError)
    message = str(error)
    assert message.startswith("cannot begin QUERY job on domain 'vm1': held by async job")
    assert "MIGRATION_OUT (owner 'migrate'" in message
    assert "phase 'perform', not interruptible" in message
    assert dom.statistics().timeouts == 1
    assert dom.info().idle


async def test_max_queued_refuses_but_exempts_async_and_destroy() -> None:
    dom = jobctl.Domain("vm", max_queued=1)
    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY):
            tg.start_soon(hold, dom, Job.QUERY, "q", _set_event(), Started())
            await settle()
            error = await attempt(dom.job(Job.QUERY))
            assert isinstance(error, jobctl.JobQueueFullError)
            assert "max_queued=1" in str(error)

            async def async_begin() -> None:
                async with dom.async_job(AsyncJob.BACKUP):
                    pass

            tg.start_soon(async_begin)
            tg.start_soon(hold, dom, Job.DESTROY, "d", _set_event(), Started())
            await settle()
            assert len(dom.info().waiters) == 3
    assert dom.statistics().queue_full == 1
    assert dom.info().idle


def _set_event() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


# -- rule 7: DESTROY pre-empts ------------------------------------------------------


async def test_destroy_preempts_async_job() -> None:
    rec = Recorder()
    mon = ScriptedMonitor()
    mon.hold()  # the async job's command never answers
    dom = jobctl.Domain("vm", monitor=mon, trace=rec.hub)
    outcome: list[BaseException] = []

    async def migrate() -> None:
        try:
            async with dom.async_job(AsyncJob.MIGRATION_OUT) as ajob, ajob.monitor() as m:
                await m.execute("migrate")
        except jobctl.JobAbortedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await settle()
        started = anyio.current_time()
        async with dom.job(Job.DESTROY):
            assert dom.info().async_job is None
        assert anyio.current_time() - started < unit()
    assert len(outcome) == 1 and outcome[0].reason == "destroyed"  # type: ignore[attr-defined]
    assert dom.info().idle
    assert "destroy.request" in rec.kinds()
    completed = [e for e in rec.of(TraceKind.ASYNC_END)]
    assert completed[0].detail["outcome"] == "destroyed"


async def test_destroy_goes_first_in_the_queue() -> None:
    dom = jobctl.Domain("vm")
    seen = Started()
    gate = _set_event()
    async with anyio.create_task_group() as tg:
        async with dom.job(Job.MODIFY):
            tg.start_soon(hold, dom, Job.QUERY, "q", gate, seen)
            await settle()
            tg.start_soon(hold, dom, Job.DESTROY, "d", gate, seen)
            await settle()
    assert seen.log == ["d", "q"]


# -- rule 8: abort ------------------------------------------------------------------


async def test_abort_calls_hook_and_async_job_fails_with_aborted() -> None:
    mon = ScriptedMonitor()
    dom = jobctl.Domain("vm", monitor=mon)
    hooked: list[str] = []
    outcome: list[BaseException] = []

    async def hook(session: jobctl.MonitorSession) -> None:
        hooked.append(session.job.kind.name)
        await session.execute("migrate_cancel")

    async def migrate() -> None:
        try:
            async with dom.async_job(AsyncJob.MIGRATION_OUT) as ajob:
                ajob.set_abort_hook(hook)
                async with ajob.interruptible():
                    await anyio.sleep_forever()
        except jobctl.JobAbortedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await settle()
        await dom.abort("operator")
    assert hooked == ["ABORT"]
    assert mon.log == ["migrate_cancel"]
    assert len(outcome) == 1 and "operator" in str(outcome[0])
    first = dom.info().completed_async_job
    assert first is not None and first.outcome == "aborted"
    assert dom.info().completed_async_job == first  # reading does not consume it
    assert dom.statistics().aborts == 1


async def test_abort_without_async_job() -> None:
    dom = jobctl.Domain("vm")
    with pytest.raises(jobctl.JobStateError, match="no async job"):
        await dom.abort()


async def test_abort_of_job_that_ends_first() -> None:
    dom = jobctl.Domain("vm")
    errors: list[BaseException] = []

    async def abort() -> None:
        try:
            await dom.abort()
        except jobctl.JobStateError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, dom.async_job(AsyncJob.BACKUP) as ajob:
        ajob.set_allowed([])  # ABORT not allowed in this phase
        tg.start_soon(abort)
        await settle()
        async with ajob.interruptible():
            await settle()
    assert errors and "ended before" in str(errors[0])


# -- rule 9: cancellation leaves the domain consistent ------------------------------


async def test_cancel_while_waiting_unblocks_those_behind() -> None:
    dom = jobctl.Domain("vm")
    seen = Started()
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, dom, Job.QUERY, "q1", gate, seen)
        await settle()
        scope = anyio.CancelScope()

        async def modify() -> None:
            with scope:
                async with dom.job(Job.MODIFY):
                    seen.log.append("m")

        tg.start_soon(modify)
        await settle()
        tg.start_soon(hold, dom, Job.QUERY, "q2", gate, seen)
        await settle()
        assert seen.running == {"q1"}
        # q2 queued behind the modify; cancelling modify lets q2 in.
        scope.cancel()
        await settle()
        assert seen.running == {"q1", "q2"}
        gate.set()
    assert dom.info().idle
    assert dom.statistics().cancelled_waits == 1


async def test_cancel_inside_monitor_and_barrier() -> None:
    mon = ScriptedMonitor()
    mon.hold()
    dom = jobctl.Domain("vm", monitor=mon)

    async def stuck_query() -> None:
        async with dom.job(Job.QUERY) as job, job.monitor() as m:
            await m.execute("query-status")

    async with anyio.create_task_group() as tg:
        async with dom.async_job(AsyncJob.BACKUP) as ajob:
            tg.start_soon(stuck_query)
            with anyio.move_on_after(10 * unit()):
                async with ajob.interruptible():
                    await settle()
                # the barrier waits for the stuck query until the timeout cancels it
            assert dom.info().barrier_pending
        tg.cancel_scope.cancel()
    assert dom.info().idle


async def test_cancel_waiting_for_monitor() -> None:
    mon = ScriptedMonitor()
    mon.hold()
    dom = jobctl.Domain("vm", monitor=mon)

    async def query() -> None:
        async with dom.job(Job.QUERY) as job, job.monitor() as m:
            await m.execute("query-status")

    async with anyio.create_task_group() as tg:
        tg.start_soon(query)
        tg.start_soon(query)
        await settle()
        assert len(dom.info().regular_jobs) == 2
        tg.cancel_scope.cancel()
    assert dom.info().idle


# -- rule 10: info and statistics -----------------------------------------------


async def test_info_snapshot() -> None:
    dom = jobctl.Domain("vm")
    async with dom.async_job(AsyncJob.SAVE, owner="saver") as ajob:
        await ajob.set_phase("write")
        ajob.set_progress({"bytes": 10})
        info = dom.info()
        assert info.async_job is not None
        assert (info.async_job.kind, info.async_job.owner, info.async_job.phase) == (
            AsyncJob.SAVE,
            "saver",
            "write",
        )
        assert info.async_job.progress == {"bytes": 10}
        assert not info.idle
        with pytest.raises(AttributeError):
            info.name = "x"  # type: ignore[misc]
    done = dom.info().completed_async_job
    assert done is not None and done.outcome == "ok" and done.ended is not None
    stats = dom.statistics()
    assert stats.async_begins == 1 and stats.begins == 0


# -- rule 11: trace -------------------------------------------------------------


async def test_trace_costs_nothing_without_listeners() -> None:
    hub = jobctl.TraceHub()
    assert not hub.active
    seen: list[jobctl.TraceEvent] = []
    with hub.subscribe(seen.append):
        assert hub.active
        dom = jobctl.Domain("vm", trace=hub, monitor=ScriptedMonitor())
        async with dom.job(Job.QUERY, owner="o") as job, job.monitor() as m:
            await m.execute("query-status")
    assert not hub.active
    assert [e.kind.value for e in seen] == [
        "job.begin",
        "monitor.enter",
        "command.sent",
        "command.answered",
        "monitor.exit",
        "job.end",
    ]
    assert all(e.job_id == job.id and e.owner == "o" for e in seen)
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    as_json = seen[2].to_json()
    assert as_json["v"] == jobctl.TRACE_SCHEMA_VERSION
    assert as_json["detail"] == {"command": "query-status"}


# -- persistence hook ----------------------------------------------------------


class MemoryPersister:
    def __init__(self) -> None:
        self.saved: list[tuple[str, str, dict[str, Any]]] = []
        self.cleared: list[str] = []

    async def save_async_job(
        self, domain: str, info: jobctl.AsyncJobInfo, private: Mapping[str, Any]
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self.saved.append((domain, info.phase, dict(private)))

    async def clear_async_job(self, domain: str, info: jobctl.AsyncJobInfo) -> None:
        await anyio.lowlevel.checkpoint()
        self.cleared.append(info.outcome or "")


async def test_persister_sees_every_phase() -> None:
    persister = MemoryPersister()
    dom = jobctl.Domain("vm", persister=persister)
    async with dom.async_job(AsyncJob.MIGRATION_OUT) as ajob:
        ajob.private["uri"] = "tcp:dst"
        await ajob.set_phase("perform")
    assert persister.saved == [("vm", "begin", {}), ("vm", "perform", {"uri": "tcp:dst"})]
    assert persister.cleared == ["ok"]


# -- rule 12: errors ----------------------------------------------------------------


def test_error_hierarchy() -> None:
    for name in (
        "JobTimeoutError",
        "JobBusyError",
        "JobQueueFullError",
        "JobStateError",
        "JobAbortedError",
    ):
        assert getattr(jobctl, name).__bases__[0] is jobctl.JobError
    # Waiting too long is a timeout; being refused at once is not.
    assert issubclass(jobctl.JobTimeoutError, TimeoutError)
    assert not issubclass(jobctl.JobBusyError, TimeoutError | jobctl.JobTimeoutError)
    # What the monitor raises is the monitor's, not the core's.
    assert not issubclass(QMPClosedError, jobctl.JobError)
    assert not hasattr(jobctl, "MonitorError") and not hasattr(jobctl, "MonitorClosedError")


async def test_monitor_nowait() -> None:
    mon = ScriptedMonitor()
    mon.hold()
    dom = jobctl.Domain("vm", monitor=mon)
    errors: list[BaseException] = []

    async def query(nowait: bool) -> None:
        async with dom.job(Job.QUERY) as job:
            try:
                async with job.monitor(nowait=nowait) as m:
                    await m.execute("query-status")
            except jobctl.JobBusyError as exc:
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(query, False)
        await settle()
        tg.start_soon(query, True)
        await settle()
        assert len(errors) == 1 and "is held by" in str(errors[0])
        mon.release()
    assert dom.info().idle
