"""The scripted monitor: latency, faults, the wire across cancellation, the detector."""

from __future__ import annotations

import anyio
import pytest

from jobctl import Monitor, MonitorClosedError, MonitorError
from jobctl.testing import FaultKind, MonitorFault, ScriptedMonitor, ScriptedReplyError

pytestmark = pytest.mark.anyio

# On asyncio the clock is real: keep latencies tiny there.
SHORT = 0.01


async def test_it_is_a_monitor_and_answers_after_its_latency() -> None:
    mon = ScriptedMonitor(latency=SHORT, responder=lambda c, a: {"echo": c, **a})
    assert isinstance(mon, Monitor)
    start = anyio.current_time()
    assert await mon.execute("query-status", {"x": 1}) == {"echo": "query-status", "x": 1}
    assert anyio.current_time() - start >= SHORT
    assert mon.log == ["query-status"]
    assert mon.statistics().commands == 1


async def test_latencies_are_used_in_turn() -> None:
    mon = ScriptedMonitor(latency=(0.0, SHORT))
    start = anyio.current_time()
    await mon.execute("a")
    middle = anyio.current_time()
    await mon.execute("b")
    assert anyio.current_time() - middle >= SHORT
    assert middle - start < SHORT


async def test_an_error_reply() -> None:
    mon = ScriptedMonitor(faults=[MonitorFault(FaultKind.ERROR, at=1)])
    assert await mon.execute("a") == {}
    with pytest.raises(ScriptedReplyError, match="'b'") as info:
        await mon.execute("b")
    assert isinstance(info.value, MonitorError)
    assert await mon.execute("c") == {}
    assert mon.statistics().errors == 1


async def test_a_stall_delays_one_reply() -> None:
    mon = ScriptedMonitor(faults=[MonitorFault(FaultKind.STALL, at=0, seconds=SHORT)])
    start = anyio.current_time()
    await mon.execute("a")
    assert anyio.current_time() - start >= SHORT


@pytest.mark.parametrize("kind", [FaultKind.DROP, FaultKind.DEATH])
async def test_a_dropped_or_dead_channel_stays_closed(kind: FaultKind) -> None:
    mon = ScriptedMonitor(faults=[MonitorFault(kind, at=0)])
    with pytest.raises(MonitorClosedError):
        await mon.execute("a")
    with pytest.raises(MonitorClosedError):
        await mon.execute("b")
    assert mon.closed


async def test_close_fails_the_command_in_flight() -> None:
    mon = ScriptedMonitor(latency=100)
    failures: list[BaseException] = []

    async def call() -> None:
        try:
            await mon.execute("slow")
        except MonitorClosedError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        mon.close()
    assert len(failures) == 1


async def test_a_cancelled_command_keeps_the_wire_busy() -> None:
    mon = ScriptedMonitor(latency=(SHORT * 5, 0.0))
    start = anyio.current_time()
    with anyio.move_on_after(SHORT):
        await mon.execute("slow")
    # The reply to "slow" is still due: the next command is written after it.
    await mon.execute("next")
    assert anyio.current_time() - start >= SHORT * 5
    assert mon.overlaps == ()


async def test_the_detector_sees_two_commands_in_flight() -> None:
    mon = ScriptedMonitor(latency=SHORT)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mon.execute, "a")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(mon.execute, "b")
    (overlap,) = mon.overlaps
    assert overlap.command == "b"
    assert overlap.in_flight == ("a",)
    assert mon.statistics().max_in_flight == 2


async def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="latency"):
        ScriptedMonitor(latency=-1)
    with pytest.raises(ValueError, match="latency"):
        ScriptedMonitor(latency=())
    with pytest.raises(ValueError, match="two faults"):
        ScriptedMonitor(faults=[MonitorFault(FaultKind.ERROR, 0), MonitorFault(FaultKind.DROP, 0)])
    with pytest.raises(ValueError, match=">= 0"):
        MonitorFault(FaultKind.ERROR, at=-1)
    with pytest.raises(TypeError, match="non-empty string"):
        await ScriptedMonitor().execute("")
