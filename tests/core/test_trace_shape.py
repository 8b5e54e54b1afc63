# ruff: noqa: E501 (the pinned traces are one event a line)
"""The trace's shape, pinned: every event kind with its detail fields, as
``docs/CORE_API.md`` and ``jobctl/_core/_trace.py`` document them, on trio and
asyncio. Consumers (the feed, the checker, the metrics) read these fields by
name; a change here is a schema change (``TRACE_SCHEMA_VERSION``).

Also pinned: the holder descriptions in wait errors, ``info()`` and
``statistics()`` of a busy domain (exact values on trio's virtual clock)."""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest
import sniffio

import jobctl
from jobctl import AsyncJob, Job, TraceKind
from jobctl.testing import ErrorReply, FaultRule, ScriptedMonitor, ScriptedReplyError

from ._support import Recorder

pytestmark = pytest.mark.anyio


def shape(recorder: Recorder) -> list[str]:
    """The trace without times, sequence numbers and process-wide job ids."""
    ids: dict[int, int] = {}
    lines = []
    for e in recorder.events:
        job = "-" if e.job_id is None else f"#{ids.setdefault(e.job_id, len(ids) + 1)}"
        detail = dict(e.detail)
        for key in ("waited",):
            if isinstance(detail.get(key), float):
                detail[key] = "<s>"
        for key in ("pending", "abandoned"):
            if key in detail:
                detail[key] = [f"#{ids[i]}" for i in detail[key]]
        if "holder" in detail and detail["holder"] is not None:
            detail["holder"] = f"#{ids[detail['holder']]}"
        if "listener" in detail:
            detail["listener"] = "<listener>"
        text = " ".join(f"{k}={detail[k]!r}" for k in sorted(detail))
        lines.append(f"{e.domain} {e.kind.value} {job} {e.job} {e.owner} {text}".rstrip())
    return lines


async def cancel_hook(mon: jobctl.MonitorSession) -> None:
    await mon.execute("migrate_cancel")


async def busy_domain(recorder: Recorder) -> jobctl.Domain:
    """One domain through every kind of decision, each step forced in order."""
    # The first abort's migrate_cancel is refused, the second's is not.
    monitor = ScriptedMonitor(
        faults=[FaultRule(ErrorReply("refused"), command="migrate_cancel", nth=1)]
    )
    dom = jobctl.Domain("vm", monitor=monitor, trace=recorder.hub, wait_timeout=None, max_queued=2)
    in_section, leave, phase_two = anyio.Event(), anyio.Event(), anyio.Event()

    async def migrate() -> None:
        with pytest.raises(jobctl.JobAbortedError):
            async with dom.async_job(
                AsyncJob.MIGRATION_OUT, allowed={Job.QUERY, Job.ABORT}, owner="migrate"
            ) as ajob:
                ajob.set_abort_hook(cancel_hook)
                await ajob.set_phase("perform")
                async with ajob.monitor() as mon:
                    await mon.execute("migrate")
                ajob.set_progress({"transferred": 1})
                async with ajob.interruptible():
                    in_section.set()
                    await leave.wait()
                ajob.set_allowed({Job.QUERY, Job.ABORT, Job.MODIFY})
                async with ajob.interruptible():
                    phase_two.set()
                    await anyio.sleep_forever()

    async def query(name: str, hold: anyio.Event | None = None) -> None:
        async with dom.job(Job.QUERY, owner=name) as job:
            async with job.monitor() as mon:
                await mon.execute("query-status")
                if hold is not None:
                    await hold.wait()

    async def modify(name: str, nowait: bool = False, timeout: float | None = None) -> None:
        try:
            async with dom.job(Job.MODIFY, owner=name, nowait=nowait, timeout=timeout):
                pass
        except jobctl.JobError:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await in_section.wait()
        hold = anyio.Event()
        tg.start_soon(query, "q1", hold)  # holds the monitor
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(query, "q2")  # waits for the monitor
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(modify, "parked1")  # parked: MODIFY not allowed yet
        await anyio.wait_all_tasks_blocked()
        await modify("late", False, 0)  # waits, and times out at once
        tg.start_soon(modify, "parked2")
        await anyio.wait_all_tasks_blocked()
        await modify("full")  # max_queued=2: refused at once
        await modify("busy", True)  # refused at once
        hold.set()
        await anyio.wait_all_tasks_blocked()
        hold = anyio.Event()
        tg.start_soon(query, "q3", hold)
        await anyio.wait_all_tasks_blocked()
        leave.set()  # the gate closes: the barrier waits for q3
        await anyio.wait_all_tasks_blocked()
        hold.set()  # ... then the mask lets MODIFY in
        await phase_two.wait()
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(ScriptedReplyError):
            await dom.abort("refused")
        await dom.abort("user")
    return dom


async def destroy_domain(recorder: Recorder) -> jobctl.Domain:
    """Pre-emption, the monitor's refusals and give-ups, a failing listener."""
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=recorder.hub, wait_timeout=None)
    started = anyio.Event()

    def broken(event: jobctl.TraceEvent) -> None:
        if event.kind is TraceKind.MONITOR_REFUSED:
            raise RuntimeError("listener bug")

    recorder.hub.subscribe(broken)

    async def save() -> None:
        with pytest.raises(jobctl.JobAbortedError):
            async with dom.async_job(AsyncJob.SAVE, owner="save", allowed=()) as ajob:
                async with ajob.interruptible():
                    started.set()
                    await anyio.sleep_forever()

    async def query_monitor(name: str, nowait: bool, scope: anyio.CancelScope) -> None:
        with scope:
            async with dom.job(Job.QUERY, owner=name) as job:
                try:
                    async with job.monitor(nowait=nowait):
                        pass
                except jobctl.JobBusyError:
                    pass

    async with anyio.create_task_group() as tg:
        async with dom.job(Job.QUERY, owner="holder") as job, job.monitor():
            tg.start_soon(query_monitor, "refused", True, anyio.CancelScope())
            await anyio.wait_all_tasks_blocked()
            cancelled = anyio.CancelScope()
            tg.start_soon(query_monitor, "gave_up", False, cancelled)
            await anyio.wait_all_tasks_blocked()
            cancelled.cancel()
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(save)  # waits behind the QUERY jobs
            await anyio.wait_all_tasks_blocked()
        await started.wait()
        async with dom.job(Job.DESTROY, owner="destroy"):
            await anyio.wait_all_tasks_blocked()  # the save unwinds meanwhile
    return dom


DESTROY_EXPECTED = """\
vm job.begin #1 QUERY holder in_section=False waited=False
vm monitor.enter #1 QUERY holder waited=False
vm job.begin #2 QUERY refused in_section=False waited=False
vm monitor.refused #2 QUERY refused holder='#1'
vm trace.listener_failed #2 QUERY refused error='RuntimeError: listener bug' event='monitor.refused' listener='<listener>'
vm job.end #2 QUERY refused outcome='ok'
vm job.begin #3 QUERY gave_up in_section=False waited=False
vm monitor.wait #3 QUERY gave_up position=0
vm monitor.wait_failed #3 QUERY gave_up result='cancelled'
vm job.end #3 QUERY gave_up outcome='cancelled'
vm job.wait #4 SAVE save allowed=['DESTROY'] async=True counted=False max_queued=0 position=0 queued=0 timeout=None
vm monitor.exit #1 QUERY holder
vm job.end #1 QUERY holder outcome='ok'
vm async.begin #4 SAVE save allowed=['DESTROY'] waited=True
vm gate.open #4 SAVE save
vm destroy.request #4 SAVE save
vm destroy.delivered #4 SAVE save
vm job.begin #5 DESTROY destroy in_section=True waited=False
vm gate.close #4 SAVE save
vm barrier.start #4 SAVE save pending=['#5']
vm async.end #4 SAVE save error='destroyed' outcome='destroyed'
vm barrier.end #4 SAVE save abandoned=['#5'] waited='<s>'
vm job.end #5 DESTROY destroy outcome='ok'"""


EXPECTED = """\
vm async.begin #1 MIGRATION_OUT migrate allowed=['ABORT', 'DESTROY', 'QUERY'] waited=False
vm async.phase #1 MIGRATION_OUT migrate phase='perform'
vm monitor.enter #1 MIGRATION_OUT migrate waited=False
vm command.sent #1 MIGRATION_OUT migrate command='migrate'
vm command.answered #1 MIGRATION_OUT migrate command='migrate' outcome='ok'
vm monitor.exit #1 MIGRATION_OUT migrate
vm async.progress #1 MIGRATION_OUT migrate progress={'transferred': 1}
vm gate.open #1 MIGRATION_OUT migrate
vm job.begin #2 QUERY q1 in_section=True waited=False
vm monitor.enter #2 QUERY q1 waited=False
vm command.sent #2 QUERY q1 command='query-status'
vm command.answered #2 QUERY q1 command='query-status' outcome='ok'
vm job.begin #3 QUERY q2 in_section=True waited=False
vm monitor.wait #3 QUERY q2 position=0
vm job.wait #4 MODIFY parked1 async=False counted=True max_queued=2 position=0 queued=0 timeout=None
vm job.wait #5 MODIFY late async=False counted=True max_queued=2 position=1 queued=1 timeout=0
vm job.wait_failed #5 MODIFY late result='timeout' waited='<s>'
vm job.wait #6 MODIFY parked2 async=False counted=True max_queued=2 position=1 queued=1 timeout=None
vm job.refused #7 MODIFY full async=False max_queued=2 queued=2 reason='queue_full'
vm job.refused #8 MODIFY busy async=False max_queued=2 queued=2 reason='busy'
vm monitor.exit #2 QUERY q1
vm monitor.enter #3 QUERY q2 waited=True
vm job.end #2 QUERY q1 outcome='ok'
vm command.sent #3 QUERY q2 command='query-status'
vm command.answered #3 QUERY q2 command='query-status' outcome='ok'
vm monitor.exit #3 QUERY q2
vm job.end #3 QUERY q2 outcome='ok'
vm job.begin #9 QUERY q3 in_section=True waited=False
vm monitor.enter #9 QUERY q3 waited=False
vm command.sent #9 QUERY q3 command='query-status'
vm command.answered #9 QUERY q3 command='query-status' outcome='ok'
vm gate.close #1 MIGRATION_OUT migrate
vm barrier.start #1 MIGRATION_OUT migrate pending=['#9']
vm monitor.exit #9 QUERY q3
vm job.end #9 QUERY q3 outcome='ok'
vm barrier.end #1 MIGRATION_OUT migrate waited='<s>'
vm async.allowed #1 MIGRATION_OUT migrate allowed=['ABORT', 'DESTROY', 'MODIFY', 'QUERY']
vm gate.open #1 MIGRATION_OUT migrate
vm job.begin #4 MODIFY parked1 in_section=True waited=True
vm job.end #4 MODIFY parked1 outcome='ok'
vm job.begin #6 MODIFY parked2 in_section=True waited=True
vm job.end #6 MODIFY parked2 outcome='ok'
vm abort.request #1 MIGRATION_OUT migrate reason='refused'
vm job.begin #10 ABORT abort:refused in_section=True waited=False
vm monitor.enter #10 ABORT abort:refused waited=False
vm command.sent #10 ABORT abort:refused command='migrate_cancel'
vm command.answered #10 ABORT abort:refused command='migrate_cancel' error="ScriptedReplyError: scripted error reply to 'migrate_cancel': refused" outcome='error'
vm monitor.exit #10 ABORT abort:refused
vm abort.failed #1 MIGRATION_OUT migrate error="ScriptedReplyError: scripted error reply to 'migrate_cancel': refused" reason='refused'
vm job.end #10 ABORT abort:refused outcome='error'
vm abort.request #1 MIGRATION_OUT migrate reason='user'
vm job.begin #11 ABORT abort:user in_section=True waited=False
vm monitor.enter #11 ABORT abort:user waited=False
vm command.sent #11 ABORT abort:user command='migrate_cancel'
vm command.answered #11 ABORT abort:user command='migrate_cancel' outcome='ok'
vm monitor.exit #11 ABORT abort:user
vm abort.delivered #1 MIGRATION_OUT migrate reason='user'
vm job.end #11 ABORT abort:user outcome='ok'
vm gate.close #1 MIGRATION_OUT migrate
vm async.end #1 MIGRATION_OUT migrate error='user' outcome='aborted'"""


async def test_every_decision_has_its_documented_shape() -> None:
    recorder = Recorder()
    dom = await busy_domain(recorder)
    assert "\n".join(shape(recorder)) == EXPECTED
    stats = dom.statistics()
    assert attrs.evolve(stats, barrier_wait_time=0.0) == jobctl.DomainStatistics(
        begins=7,
        async_begins=1,
        waits=3,
        timeouts=1,
        busy=1,
        queue_full=1,
        cancelled_waits=0,
        barrier_waits=1,
        barrier_wait_time=0.0,
        aborts=1,
        destroys=0,
        commands=6,
        waiting=0,
    )
    if sniffio.current_async_library() == "trio":
        assert stats.barrier_wait_time == 0.0  # q3 ended at once, in virtual time
    else:
        assert 0 < stats.barrier_wait_time < 1


async def test_preemption_and_the_monitors_refusals_have_their_shape() -> None:
    recorder = Recorder()
    dom = await destroy_domain(recorder)
    assert "\n".join(shape(recorder)) == DESTROY_EXPECTED
    assert recorder.hub.failed_listeners == 1
    stats = dom.statistics()
    assert (stats.begins, stats.async_begins, stats.waits, stats.destroys) == (4, 1, 1, 1)
    assert stats.barrier_waits == 1


async def raised(job: Any) -> str:
    """The message of what entering ``job`` in another task raised ("" if
    it began)."""
    message: list[str] = []

    async def run() -> None:
        try:
            async with job:
                pass
        except jobctl.JobError as exc:
            message.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
    return message[0] if message else ""


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_wait_errors_name_the_holders_and_info_shows_the_state() -> None:
    dom = jobctl.Domain("vm1", monitor=ScriptedMonitor(), wait_timeout=3.0, max_queued=1)
    in_section, leave, done = anyio.Event(), anyio.Event(), anyio.Event()

    async def migrate() -> None:
        async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="migrate") as ajob:
            await ajob.set_phase("perform")
            ajob.set_progress({"remaining": 5})
            await anyio.sleep(2.0)
            async with ajob.interruptible():
                in_section.set()
                await leave.wait()
            await done.wait()

    async def query() -> None:
        async with dom.job(Job.QUERY, owner="stats"):
            await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        await anyio.sleep(1.0)
        assert await raised(dom.job(Job.QUERY, owner="x", nowait=True)) == (
            "cannot begin QUERY job on domain 'vm1': held by async job MIGRATION_OUT "
            "(owner 'migrate', 1.0 s, phase 'perform', not interruptible) (nowait)"
        )
        await in_section.wait()
        tg.start_soon(query)
        await anyio.sleep(1.0)
        assert await raised(dom.job(Job.MODIFY, owner="y")) == (
            "cannot begin MODIFY job on domain 'vm1': held by async job MIGRATION_OUT "
            "(owner 'migrate', 6.0 s, phase 'perform', interruptible), QUERY job (owner "
            "'stats', 4.0 s); waited 3.0 s"
        )
        info = dom.info()
        assert info.name == "vm1"
        ajob = info.async_job
        assert ajob is not None
        assert (ajob.kind, ajob.owner, ajob.phase, ajob.interruptible) == (
            AsyncJob.MIGRATION_OUT,
            "migrate",
            "perform",
            True,
        )
        assert ajob.allowed == {Job.QUERY, Job.ABORT, Job.DESTROY}
        assert (ajob.started, ajob.progress, ajob.outcome, ajob.ended) == (
            0.0,
            {"remaining": 5},
            None,
            None,
        )
        (regular,) = info.regular_jobs
        assert (regular.kind, regular.owner, regular.started, regular.in_section) == (
            Job.QUERY,
            "stats",
            2.0,
            True,
        )
        assert (info.waiters, info.monitor_holder, info.barrier_pending) == ((), None, ())
        assert not info.idle
        leave.set()
        await anyio.wait_all_tasks_blocked()
        # The gate closed; the QUERY job holds the barrier.
        info = dom.info()
        assert info.barrier_pending == (regular.id,)
        assert info.async_job is not None and not info.async_job.interruptible
        tg.start_soon(raised, dom.job(Job.MODIFY, owner="waiting", timeout=10.0))
        await anyio.wait_all_tasks_blocked()
        (waiter,) = dom.info().waiters
        assert (waiter.kind, waiter.owner, waiter.since) == (Job.MODIFY, "waiting", 6.0)
        assert await raised(dom.job(Job.MODIFY, owner="z")) == (
            "cannot begin MODIFY job on domain 'vm1': 1 waiters queued (max_queued=1); held "
            "by async job MIGRATION_OUT (owner 'migrate', 6.0 s, phase 'perform', not "
            "interruptible), QUERY job (owner 'stats', 4.0 s), a barrier of 1 job(s)"
        )
        await anyio.sleep(1.0)
        done.set()
    info = dom.info()
    completed = info.completed_async_job
    assert completed is not None
    assert (completed.outcome, completed.ended, completed.error) == ("ok", 7.0, None)
    assert dom.info().completed_async_job == completed  # reading does not consume it
    assert dom.info().idle


async def test_an_emitted_event_keeps_the_detail_it_was_given() -> None:
    """``TraceHub.emit`` copies ``detail``: a caller that changes its dict
    afterwards changes no event (the core hands its own fresh dicts over
    without a copy), and an event's detail cannot be changed through it."""
    hub = jobctl.TraceHub()
    events: list[jobctl.TraceEvent] = []
    detail: dict[str, Any] = {"command": "query-status"}
    with hub.subscribe(events.append):
        hub.emit("vm", TraceKind.COMMAND_SENT, 1, "QUERY", "me", detail)
    detail["command"] = "changed"
    assert dict(events[0].detail) == {"command": "query-status"}
    with pytest.raises(TypeError):
        events[0].detail["command"] = "x"  # type: ignore[index]
    assert events[0].time <= anyio.current_time()  # the loop's clock


async def test_a_listener_of_some_kinds_gets_those_and_spares_the_rest() -> None:
    """``subscribe(kinds=...)`` delivers only those kinds, and the hub's
    ``wanted`` is what some listener takes: an event of a kind nobody takes
    is not even built (no sequence number is spent on it)."""
    hub = jobctl.TraceHub()
    assert not hub.wanted and not hub.wants(TraceKind.JOB_BEGIN)
    with pytest.raises(TypeError, match="TraceKind"):
        hub.subscribe(lambda event: None, kinds=["job.begin"])  # type: ignore[list-item]
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=hub, wait_timeout=None)
    begins: list[jobctl.TraceEvent] = []
    everything: list[jobctl.TraceEvent] = []
    with hub.subscribe(begins.append, kinds={TraceKind.JOB_BEGIN}) as some:
        assert some.kinds == frozenset({TraceKind.JOB_BEGIN})
        assert hub.wanted == {TraceKind.JOB_BEGIN} and hub.active
        for _ in range(2):
            async with dom.job(Job.QUERY) as job, job.monitor() as mon:
                await mon.execute("query-status")
            # Emitted by hand, of a kind nobody takes: not built either.
            hub.emit("vm", TraceKind.GATE_OPEN)
            hub.emit_owned("vm", TraceKind.GATE_CLOSE, None, None, None, {"x": 1})
        assert [e.kind for e in begins] == [TraceKind.JOB_BEGIN] * 2
        # Between the two begins the monitor, the command and the end were
        # not built: the sequence numbers are consecutive.
        assert begins[1].seq == begins[0].seq + 1
        with hub.subscribe(everything.append):
            assert hub.wanted == frozenset(TraceKind)
            async with dom.job(Job.QUERY) as job, job.monitor() as mon:
                await mon.execute("query-status")
        assert len(begins) == 3
        assert TraceKind.COMMAND_SENT in {e.kind for e in everything}
        assert hub.wanted == {TraceKind.JOB_BEGIN}
    assert not hub.wanted and not hub.active
