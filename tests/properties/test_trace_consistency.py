"""A targeted interleaving that drawn schedules reach rarely: a monitor
handed over to a waiter that was just cancelled."""

from __future__ import annotations

import anyio
import pytest

from jobctl import Domain, Job, MonitorSession, TraceKind
from jobctl.testing import InvariantViolation, ScriptedMonitor, TraceRecorder

pytestmark = pytest.mark.anyio


async def hand_the_monitor_to_a_cancelled_waiter(recorder: TraceRecorder) -> Domain:
    """B waits for the monitor and is cancelled; before B runs, A leaves the
    monitor, which is handed to B, which must pass it on."""
    dom = Domain("vm", monitor=ScriptedMonitor(latency=0.01), trace=recorder.hub)
    b_scope = anyio.CancelScope()
    a_holds = anyio.Event()
    b_waiting = anyio.Event()

    async def a() -> None:
        async with dom.job(Job.QUERY, owner="a") as job:
            async with job.monitor() as mon:
                a_holds.set()
                await b_waiting.wait()
                await anyio.wait_all_tasks_blocked()
                await mon.execute("query-status")
                b_scope.cancel()  # B is woken up cancelled, but has not run yet
            # ... and the monitor A just left was handed to B.

    async def b() -> None:
        with b_scope:
            async with dom.job(Job.QUERY, owner="b") as job:
                await a_holds.wait()
                b_waiting.set()
                async with job.monitor() as mon:
                    await mon.execute("query-status")

    async with anyio.create_task_group() as tg:
        tg.start_soon(a)
        tg.start_soon(b)
    return dom


async def test_a_monitor_handed_to_a_cancelled_waiter_keeps_the_trace_consistent() -> None:
    with TraceRecorder() as recorder:
        dom = await hand_the_monitor_to_a_cancelled_waiter(recorder)
    recorder.check()
    assert dom.info().idle
    assert [e.owner for e in recorder.of(TraceKind.MONITOR_ENTER)] == ["a"]


async def test_the_checker_caught_the_old_trace_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix, the core emitted monitor.exit for B, which never
    entered: invariant 1 must flag exactly that."""

    def _release_monitor(self: Domain, session: MonitorSession) -> None:
        session._state = "closed"
        if self._monitor_session is not session:
            return
        self._emit(TraceKind.MONITOR_EXIT, session._job, None)  # even if never held
        self._monitor_session = None
        while self._monitor_queue:
            waiting, event = self._monitor_queue.popleft()
            event.set()
            if waiting._job._state == "active":
                self._monitor_session = waiting
                return

    monkeypatch.setattr(Domain, "_release_monitor", _release_monitor)
    with TraceRecorder() as recorder:
        await hand_the_monitor_to_a_cancelled_waiter(recorder)
    with pytest.raises(InvariantViolation, match="left the monitor it did not hold") as info:
        recorder.check()
    assert info.value.invariants == {1}
