"""A targeted interleaving that drawn schedules reach rarely: a monitor
handed over to a waiter that was just cancelled."""

from __future__ import annotations

import anyio
import pytest

import jobctl._core._domain
from jobctl import Domain, Job, TraceKind
from jobctl.testing import InvariantViolation, ScriptedMonitor, TraceRecorder

from ._bugs import plant_edit

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
    # B was handed the monitor (traced at the hand-off) and passed it on at once.
    enters = [(e.owner, e.detail["waited"]) for e in recorder.of(TraceKind.MONITOR_ENTER)]
    assert enters == [("a", False), ("b", True)]
    b_events = [e.kind for e in recorder.events if e.owner == "b" and "monitor" in e.kind.value]
    assert b_events == [TraceKind.MONITOR_WAIT, TraceKind.MONITOR_ENTER, TraceKind.MONITOR_EXIT]


async def test_the_checker_catches_an_untraced_hand_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the hand-off were not traced, B's release would show a monitor.exit
    for a job that never entered: invariant 1 must flag exactly that."""
    plant_edit(
        monkeypatch,
        jobctl._core._domain,
        '        self._emit(TraceKind.MONITOR_ENTER, session._job, {"waited": waited})',
        "        pass  # BUG: the hand-off is not traced",
    )
    with TraceRecorder() as recorder:
        await hand_the_monitor_to_a_cancelled_waiter(recorder)
    with pytest.raises(InvariantViolation, match="left the monitor it did not hold") as info:
        recorder.check()
    assert 1 in info.value.invariants
