"""The scripted monitor: latency, faults, the wire across cancellation, the detector."""

from __future__ import annotations

import anyio
import pytest

from jobctl import JobError, Monitor
from jobctl.testing import (
    Die,
    Drop,
    ErrorReply,
    Fault,
    FaultPlan,
    FaultRule,
    Garbage,
    Latency,
    ScriptedMonitor,
    ScriptedMonitorClosedError,
    ScriptedReplyError,
    Stall,
)

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
    mon = ScriptedMonitor(faults=[FaultRule(ErrorReply(), nth=2)])
    assert await mon.execute("a") == {}
    with pytest.raises(ScriptedReplyError, match="'b'") as info:
        await mon.execute("b")
    assert not isinstance(info.value, JobError)  # the monitor's own error, not the core's
    assert await mon.execute("c") == {}
    assert mon.statistics().errors == 1


async def test_an_error_reply_says_what_its_fault_says() -> None:
    refusal = FaultRule(ErrorReply("refused", "DeviceNotActive"), command="migrate_cancel")
    mon = ScriptedMonitor(faults=[refusal])
    assert await mon.execute("query-status") == {}
    for _ in range(2):  # a rule without nth: every time
        with pytest.raises(ScriptedReplyError, match="refused") as info:
            await mon.execute("migrate_cancel")
        assert (info.value.command, info.value.error_class) == ("migrate_cancel", "DeviceNotActive")


async def test_rules_count_the_commands_they_name() -> None:
    mon = ScriptedMonitor(faults=[FaultRule(ErrorReply(), command="b", nth=2)])
    for command in ("b", "a", "a"):
        await mon.execute(command)
    with pytest.raises(ScriptedReplyError):
        await mon.execute("b")
    assert await mon.execute("b") == {}


async def test_a_plan_with_random_faults_is_a_monitors_faults_too() -> None:
    plan = FaultPlan.random(seed=1, probability=1.0, faults=[ErrorReply()])
    mon = ScriptedMonitor(faults=plan)
    for _ in range(3):
        with pytest.raises(ScriptedReplyError):
            await mon.execute("query-status")
    assert mon.statistics().errors == 3


@pytest.mark.parametrize("fault", [Latency(SHORT), Stall(SHORT)])
async def test_a_late_reply(fault: Fault) -> None:
    mon = ScriptedMonitor(faults=[FaultRule(fault, nth=2)])
    start = anyio.current_time()
    await mon.execute("a")
    middle = anyio.current_time()
    await mon.execute("b")
    assert anyio.current_time() - middle >= SHORT
    assert middle - start < SHORT


@pytest.mark.parametrize(
    ("fault", "ran"), [(Drop(), True), (Drop(execute=False), False), (Garbage(), True)]
)
async def test_a_dropped_or_garbled_reply_closes_the_channel(fault: Fault, ran: bool) -> None:
    seen: list[str] = []
    mon = ScriptedMonitor(faults=[FaultRule(fault, nth=1)], responder=lambda c, a: seen.append(c))
    with pytest.raises(ScriptedMonitorClosedError, match="'stop'"):
        await mon.execute("stop")
    assert mon.closed
    assert seen == (["stop"] if ran else [])


async def test_a_held_command_waits_for_the_release() -> None:
    mon = ScriptedMonitor(latency=SHORT)
    mon.hold()
    assert mon.held
    replies: list[object] = []

    async def call() -> None:
        replies.append(await mon.execute("query-status"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.sleep(SHORT * 3)
        assert replies == []
        released = anyio.current_time()
        mon.release()
    assert replies == [{}]
    assert anyio.current_time() - released >= SHORT
    assert not mon.held


async def test_a_cancelled_held_command_keeps_the_wire_busy_after_the_release() -> None:
    mon = ScriptedMonitor(latency=(SHORT * 5, 0.0))
    mon.hold()
    with anyio.move_on_after(SHORT):
        await mon.execute("held")
    mon.release()
    released = anyio.current_time()
    # The reply to "held" is due its latency after the release.
    await mon.execute("next")
    assert anyio.current_time() - released >= SHORT * 5
    assert mon.overlaps == ()


async def test_close_fails_a_held_command() -> None:
    mon = ScriptedMonitor()
    mon.hold()
    failures: list[BaseException] = []

    async def call() -> None:
        with pytest.raises(ScriptedMonitorClosedError) as info:
            await mon.execute("held")
        failures.append(info.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        mon.close()
    assert len(failures) == 1


async def test_a_stall_delays_one_reply() -> None:
    mon = ScriptedMonitor(faults=[FaultRule(Stall(SHORT), nth=1)])
    start = anyio.current_time()
    await mon.execute("a")
    assert anyio.current_time() - start >= SHORT


@pytest.mark.parametrize("fault", [Drop(), Die()])
async def test_a_dropped_or_dead_channel_stays_closed(fault: Fault) -> None:
    mon = ScriptedMonitor(faults=[FaultRule(fault, nth=1)])
    with pytest.raises(ScriptedMonitorClosedError):
        await mon.execute("a")
    with pytest.raises(ScriptedMonitorClosedError):
        await mon.execute("b")
    assert mon.closed


async def test_close_fails_the_command_in_flight() -> None:
    mon = ScriptedMonitor(latency=100)
    failures: list[BaseException] = []

    async def call() -> None:
        try:
            await mon.execute("slow")
        except ScriptedMonitorClosedError as exc:
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
        ScriptedMonitor(faults=[FaultRule(ErrorReply(), nth=1), FaultRule(Drop(), nth=1)])
    with pytest.raises(ValueError, match="counts from 1"):
        FaultRule(ErrorReply(), nth=0)
    with pytest.raises(TypeError, match="non-empty string"):
        await ScriptedMonitor().execute("")
