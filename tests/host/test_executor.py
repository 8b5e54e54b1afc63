from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from jobctl import JobError
from jobctl.host import (
    Command,
    CommandCancelledError,
    CommandContext,
    CommandExecutor,
    CommandHandle,
    CommandNotRunError,
    CommandQueueFullError,
    Entity,
    EntityLockBusyError,
    EntityLocks,
    EntityLockTimeoutError,
    ExecutionState,
    ExecutorClosedError,
)

from ._support import Overlaps, virtual_time

pytestmark = pytest.mark.anyio

VM = Entity("vm", "vm-07")

Body = Callable[[CommandContext], Awaitable[str]]


def state(command: CommandHandle[Any]) -> ExecutionState:
    """``command.state`` now (read through a call, so that a type checker
    keeps no narrowing from an earlier assertion on it)."""
    return command.state


def gated(gate: anyio.Event, overlaps: Overlaps | None = None) -> Body:
    """A command body that records itself in ``overlaps`` and waits for ``gate``."""

    async def body(ctx: CommandContext) -> str:
        if overlaps is not None:
            overlaps.enter(ctx.label, ctx.grant.needs)
        try:
            await gate.wait()
        finally:
            if overlaps is not None:
                overlaps.exit(ctx.label)
        return ctx.label

    return body


def sleeping(seconds: float, overlaps: Overlaps | None = None) -> Body:
    async def body(ctx: CommandContext) -> str:
        if overlaps is not None:
            overlaps.enter(ctx.label, ctx.grant.needs)
        try:
            await anyio.sleep(seconds)
        finally:
            if overlaps is not None:
                overlaps.exit(ctx.label)
        return ctx.label

    return body


async def test_at_most_workers_run_and_all_of_them_do() -> None:
    gate, overlaps = anyio.Event(), Overlaps()
    async with CommandExecutor(workers=3) as ex:
        handles = [ex.submit(Command(f"c{n}", gated(gate, overlaps))) for n in range(10)]
        await anyio.wait_all_tasks_blocked()
        stats = ex.statistics()
        assert (stats.running, stats.queued, stats.submitted) == (3, 7, 10)
        assert repr(ex) == "<CommandExecutor 'executor' running: 3/3 running, 7 queued>"
        assert repr(handles[0]) == "<CommandHandle c0 #1 running>"
        gate.set()
    assert overlaps.peak == 3
    assert [await h.result() for h in handles] == [f"c{n} #{n + 1}" for n in range(10)]
    assert ex.summary().ok and ex.statistics().succeeded == 10


async def test_kind_cap_keeps_workers_for_other_kinds() -> None:
    gate, started = anyio.Event(), []

    async def quick(ctx: CommandContext) -> str:
        started.append(ctx.command.name)
        return "ok"

    async with CommandExecutor(workers=4, kind_limits={"backup": 2}) as ex:
        for n in range(5):
            ex.submit(Command(f"backup {n}", gated(gate), kind="backup"))
        await anyio.wait_all_tasks_blocked()
        assert dict(ex.statistics().running_by_kind) == {"backup": 2}
        ex.submit(Command("start vm", quick, kind="start"))
        ex.submit(Command("stop vm", quick, kind="stop"))
        await anyio.wait_all_tasks_blocked()
        assert sorted(started) == ["start vm", "stop vm"]  # while 3 backups still wait
        assert ex.statistics().queued == 3
        gate.set()


async def test_sequential_commands_run_one_at_a_time_in_order() -> None:
    gates = [anyio.Event() for _ in range(3)]
    other_gate, overlaps = anyio.Event(), Overlaps()
    async with CommandExecutor(workers=4) as ex:
        for n in range(3):
            ex.submit(Command(f"seq {n}", gated(gates[n], overlaps), sequential=True))
            ex.submit(Command(f"par {n}", gated(other_gate, overlaps)))
        for n in range(3):
            await anyio.wait_all_tasks_blocked()
            running = sorted(overlaps.inside)
            assert [name for name in running if name.startswith("seq")] == [f"seq {n} #{2 * n + 1}"]
            gates[n].set()
        await anyio.wait_all_tasks_blocked()
        assert sorted(overlaps.inside) == ["par 0 #2", "par 1 #4", "par 2 #6"]  # beside the lane
        other_gate.set()
    assert [name for name in overlaps.order if name.startswith("seq")] == [
        "seq 0 #1",
        "seq 1 #3",
        "seq 2 #5",
    ]


async def test_a_group_runs_in_order_beside_other_groups() -> None:
    overlaps = Overlaps()
    gates = {key: [anyio.Event() for _ in range(3)] for key in "ab"}
    async with CommandExecutor(workers=4) as ex:
        for n in range(3):
            for key in "ab":
                ex.submit(Command(f"{key}{n}", gated(gates[key][n], overlaps), group=key))
        for n in range(3):
            await anyio.wait_all_tasks_blocked()
            assert sorted(name.split()[0] for name in overlaps.inside) == [f"a{n}", f"b{n}"]
            gates["a"][n].set()
            gates["b"][n].set()
    names = [name.split()[0] for name in overlaps.order]
    assert [n for n in names if n[0] == "a"] == ["a0", "a1", "a2"]


@virtual_time
async def test_priority_lets_a_short_command_pass_long_ones() -> None:
    async with CommandExecutor(workers=1) as ex:
        first = ex.submit(Command("long 0", sleeping(100)))
        longs = [ex.submit(Command(f"long {n}", sleeping(100))) for n in range(1, 4)]
        short = ex.submit(Command("short", sleeping(1), priority=10))
    assert short.report().started_at == 100.0
    assert first.report().finished_at == 100.0
    assert [h.report().started_at for h in longs] == [101.0, 201.0, 301.0]


async def test_a_full_queue_refuses_with_a_clear_error() -> None:
    gate = anyio.Event()
    async with CommandExecutor(workers=1, max_queued=2, name="host-3") as ex:
        ex.submit(Command("running", gated(gate)))
        await anyio.wait_all_tasks_blocked()
        queued = [ex.submit(Command(f"q{n}", gated(gate))) for n in range(2)]
        with pytest.raises(CommandQueueFullError) as caught:
            ex.submit(Command("one too many", gated(gate)))
        assert not isinstance(caught.value, JobError)  # the executor's own, not the core's
        assert str(caught.value) == (
            "executor 'host-3' refused 'one too many': 2 commands are queued "
            "(max_queued=2), 1 running"
        )
        assert ex.statistics().rejected == 1
        gate.set()
    assert all(h.state is ExecutionState.SUCCEEDED for h in queued)
    assert ex.summary().submitted == 3 and "1 refused (queue full)" in ex.summary().format()


async def test_one_failure_does_not_lose_the_other_results() -> None:
    async def fine(ctx: CommandContext) -> str:
        await anyio.lowlevel.checkpoint()
        return f"done {ctx.command.name}"

    async def broken(ctx: CommandContext) -> str:
        await anyio.lowlevel.checkpoint()
        raise OSError("chain vm-03: parent file missing")

    async with CommandExecutor(workers=2) as ex:
        handles = [ex.submit(Command(f"delete {n}", broken if n == 2 else fine)) for n in range(5)]
    with pytest.raises(OSError, match="parent file missing"):
        await handles[2].result()
    assert [await h.result() for n, h in enumerate(handles) if n != 2] == [
        f"done delete {n}" for n in (0, 1, 3, 4)
    ]
    summary = ex.summary()
    assert (summary.succeeded, summary.failed, summary.ok) == (4, 1, False)
    [failure] = summary.in_state(ExecutionState.FAILED)
    assert failure.name == "delete 2" and isinstance(failure.error, OSError)
    assert "delete 2 #3 [command] failed" in summary.format()
    assert "OSError: chain vm-03: parent file missing" in summary.format()


async def test_stop_waits_for_running_and_reports_what_never_ran() -> None:
    gate = anyio.Event()
    async with CommandExecutor(workers=1) as ex:
        running = ex.submit(Command("running", gated(gate)))
        queued = [ex.submit(Command(f"queued {n}", gated(gate), group="g")) for n in range(3)]
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ex.stop)
            await anyio.wait_all_tasks_blocked()
            assert [h.state for h in queued] == [ExecutionState.NOT_RUN] * 3
            assert running.state is ExecutionState.RUNNING
            with pytest.raises(ExecutorClosedError, match="stopping: cannot submit 'late'"):
                ex.submit(Command("late", gated(gate)))
            gate.set()
        summary = await ex.stop()  # again: same outcome
    assert await running.result() == "running #1"
    with pytest.raises(
        CommandNotRunError, match="queued 0 #2 never ran: the executor stopped"
    ) as e:
        await queued[0].result()
    assert e.value.reason == "stopped"
    assert (summary.succeeded, summary.not_run) == (1, 3)
    assert "queued 2 #4 [command] not_run" in summary.format()
    assert ex.locks.statistics().grants == ex.locks.statistics().waiting == 0


@virtual_time
async def test_stop_cancels_what_outlives_the_grace_period() -> None:
    async def stubborn(ctx: CommandContext) -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async with CommandExecutor(workers=2) as ex:
        quick = ex.submit(Command("quick", sleeping(3)))
        slow = ex.submit(Command("stubborn", stubborn, [VM.exclusive()]))
        summary = await ex.stop(grace=5)
        assert anyio.current_time() == 5.0
    assert quick.state is ExecutionState.SUCCEEDED
    report = slow.report()
    assert (report.state, report.ran_for) == (ExecutionState.CANCELLED, 5.0)
    with pytest.raises(CommandCancelledError, match="stubborn #2 was cancelled while running"):
        await slow.result()
    assert summary.cancelled == 1 and ex.locks.holders(VM) == ()


async def test_cancel_a_queued_and_a_running_command() -> None:
    gate = anyio.Event()
    async with CommandExecutor(workers=1) as ex:
        running = ex.submit(Command("running", gated(gate), [VM.exclusive()]))
        behind = ex.submit(Command("behind", gated(gate), [VM.exclusive()]))
        after = ex.submit(Command("after", gated(gate), [VM.exclusive()]))
        await anyio.wait_all_tasks_blocked()
        behind.cancel()
        running.cancel()
        await anyio.wait_all_tasks_blocked()
        assert after.state is ExecutionState.RUNNING
        gate.set()
    assert running.state is ExecutionState.CANCELLED
    assert behind.state is ExecutionState.NOT_RUN
    with pytest.raises(CommandNotRunError, match="cancelled before it started"):
        await behind.result()
    assert state(after) is ExecutionState.SUCCEEDED
    after.cancel()  # over: no-op
    assert state(after) is ExecutionState.SUCCEEDED


async def test_lock_timeout_zero_fails_at_once_naming_the_holder() -> None:
    async with CommandExecutor(workers=2) as ex:
        async with ex.locks.hold([VM.exclusive()], owner="maintenance of vm-07"):
            handle = ex.submit(
                Command("backup", gated(anyio.Event()), [VM.shared()], lock_timeout=0)
            )
            assert handle.state is ExecutionState.FAILED
    with pytest.raises(EntityLockBusyError) as caught:
        await handle.result()
    assert "'backup #1' could not lock vm:vm-07 (shared) at once (lock_timeout=0)" in str(
        caught.value
    )
    assert "held exclusive by 'maintenance of vm-07'" in str(caught.value)


@virtual_time
async def test_lock_timeout_expires_and_the_group_moves_on() -> None:
    async with CommandExecutor(workers=2) as ex:
        holder = ex.submit(Command("restore", sleeping(100), [VM.exclusive()]))
        await anyio.wait_all_tasks_blocked()
        waiting = ex.submit(
            Command("backup", sleeping(1), [VM.shared()], group="g", lock_timeout=30)
        )
        nxt = ex.submit(Command("list", sleeping(1), group="g"))
    report = waiting.report()
    assert (report.state, report.finished_at) == (ExecutionState.FAILED, 30.0)
    assert isinstance(report.error, EntityLockTimeoutError)
    assert "vm:vm-07 is held exclusive by 'restore #1' for 30.0s" in str(report.error)
    assert nxt.report().started_at == 30.0
    assert holder.state is ExecutionState.SUCCEEDED


@virtual_time
async def test_lock_timeout_does_not_count_the_wait_for_a_worker() -> None:
    async with CommandExecutor(workers=1) as ex:
        ex.submit(Command("long", sleeping(100)))
        patient = ex.submit(Command("free entity", sleeping(1), [VM.shared()], lock_timeout=1))
    assert patient.state is ExecutionState.SUCCEEDED
    assert patient.report().started_at == 100.0


async def test_conflicting_commands_start_in_submission_order() -> None:
    overlaps = Overlaps()
    gates = [anyio.Event() for _ in range(4)]
    chain, other = Entity("chain", "vm-1"), Entity("chain", "vm-2")
    async with CommandExecutor(workers=4) as ex:
        ex.submit(Command("delete 1", gated(gates[0], overlaps), [chain.exclusive()]))
        ex.submit(Command("restore 1", gated(gates[1], overlaps), [chain.shared()]))
        ex.submit(Command("delete 2", gated(gates[2], overlaps), [other.exclusive()]))
        ex.submit(Command("delete 1 again", gated(gates[3], overlaps), [chain.exclusive()]))
        await anyio.wait_all_tasks_blocked()
        assert sorted(overlaps.inside) == ["delete 1 #1", "delete 2 #3"]
        gates[0].set()
        await anyio.wait_all_tasks_blocked()
        assert sorted(overlaps.inside) == ["delete 2 #3", "restore 1 #2"]
        gates[1].set()
        gates[2].set()
        gates[3].set()
    assert overlaps.conflicts == []
    assert overlaps.order.index("restore 1 #2") < overlaps.order.index("delete 1 again #4")


async def test_an_outside_waiter_queues_behind_a_waiting_command() -> None:
    locks = EntityLocks()
    gate, got = anyio.Event(), []
    holder = locks.acquire_nowait([VM.shared()], owner="outside reader")
    async with CommandExecutor(workers=2, locks=locks) as ex:
        command = ex.submit(Command("restore", gated(gate), [VM.exclusive()]))
        async with anyio.create_task_group() as tg:

            async def outsider() -> None:
                async with locks.hold([VM.shared()], owner="outside reader 2"):
                    got.append(command.state)

            tg.start_soon(outsider)
            await anyio.wait_all_tasks_blocked()
            assert got == [] and command.state is ExecutionState.QUEUED
            locks.release(holder)
            await anyio.wait_all_tasks_blocked()
            assert state(command) is ExecutionState.RUNNING
            gate.set()
    assert got == [ExecutionState.SUCCEEDED]


async def test_leaving_the_block_with_an_error_cancels_everything() -> None:
    gate = anyio.Event()
    with pytest.raises(RuntimeError, match="manager bug"):
        async with CommandExecutor(workers=1) as ex:
            running = ex.submit(Command("running", gated(gate), [VM.exclusive()]))
            queued = ex.submit(Command("queued", gated(gate), [VM.exclusive()]))
            await anyio.wait_all_tasks_blocked()
            raise RuntimeError("manager bug")
    assert running.state is ExecutionState.CANCELLED
    assert queued.state is ExecutionState.NOT_RUN
    assert "the executor's block raised" in str(queued.report().error)
    assert ex.locks.statistics().grants == ex.locks.statistics().waiting == 0
    with pytest.raises(ExecutorClosedError, match="stopped"):
        ex.submit(Command("late", gated(gate)))


async def test_an_outer_cancel_ends_every_command() -> None:
    gate = anyio.Event()
    with anyio.CancelScope() as scope:
        async with CommandExecutor(workers=2) as ex:
            handles = [ex.submit(Command(f"c{n}", gated(gate), [VM.exclusive()])) for n in range(4)]
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert [h.state for h in handles] == [ExecutionState.CANCELLED] + [ExecutionState.NOT_RUN] * 3
    assert ex.locks.statistics().grants == ex.locks.statistics().waiting == 0


@virtual_time
async def test_reports_time_the_queue_and_the_run_and_keep_progress() -> None:
    async def backup(ctx: CommandContext) -> str:
        for percent in (25, 50, 100):
            await anyio.sleep(10)
            ctx.set_progress({"copied": percent})
        return "b1"

    async with CommandExecutor(workers=1) as ex:
        ex.submit(Command("first", sleeping(5), [VM.exclusive()]))
        handle = ex.submit(Command("backup", backup, [VM.shared()], kind="backup"))
        await anyio.sleep(16)
        assert handle.progress == {"copied": 25}
        assert handle.state is ExecutionState.RUNNING
    report = await handle.wait()
    assert (report.submitted_at, report.started_at, report.finished_at) == (0.0, 5.0, 35.0)
    assert (report.queued_for, report.ran_for) == (5.0, 30.0)
    assert report.progress == {"copied": 100}
    assert report.describe() == "backup #2 [backup] succeeded, queued 5.0s, ran 30.0s"


async def test_history_bounds_the_kept_reports_not_the_counts() -> None:
    async def fine(ctx: CommandContext) -> int:
        await anyio.lowlevel.checkpoint()
        return ctx.id

    async with CommandExecutor(workers=2, history=3) as ex:
        for n in range(10):
            ex.submit(Command(f"c{n}", fine))
    summary = ex.summary()
    assert summary.succeeded == 10 and len(summary.reports) == 3
    assert "(reports kept for the last 3 of 10)" in summary.format()


async def test_commands_may_submit_more_commands() -> None:
    results: list[str] = []

    async with CommandExecutor(workers=2) as ex:

        async def parent(ctx: CommandContext) -> str:
            await anyio.lowlevel.checkpoint()
            ex.submit(Command("child", child))
            return "parent"

        async def child(ctx: CommandContext) -> str:
            await anyio.lowlevel.checkpoint()
            results.append("child ran")
            return "child"

        ex.submit(Command("parent", parent))
    assert results == ["child ran"]  # leaving the block waited for it too


async def test_bad_configuration_and_commands_are_named() -> None:
    async def body(ctx: CommandContext) -> None:
        pass  # pragma: no cover

    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        CommandExecutor(workers=0)
    with pytest.raises(ValueError, match=r"kind_limits\['backup'\] must be >= 1"):
        CommandExecutor(workers=1, kind_limits={"backup": 0})
    with pytest.raises(ValueError, match="max_queued must be an int >= 0"):
        CommandExecutor(workers=1, max_queued=-1)
    with pytest.raises(ValueError, match="cannot also be in group 'g'"):
        Command("x", body, sequential=True, group="g")
    with pytest.raises(ValueError, match=r"Command\.lock_timeout must be >= 0"):
        Command("x", body, lock_timeout=-1)
    with pytest.raises(TypeError, match=r"Command\.run must be an async callable"):
        Command("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use entity\.shared"):
        Command("x", body, [VM])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"Command\.group must be hashable"):
        Command("x", body, group=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Command\.priority must be an int"):
        Command("x", body, priority="high")  # type: ignore[arg-type]
    ex = CommandExecutor(workers=1)
    with pytest.raises(ExecutorClosedError, match="is new: cannot submit 'x'"):
        ex.submit(Command("x", body))
    with pytest.raises(ExecutorClosedError, match="never started"):
        await ex.stop()
    async with ex:
        with pytest.raises(TypeError, match="submit\\(\\) takes a Command"):
            ex.submit(body)  # type: ignore[arg-type]
    with pytest.raises(ExecutorClosedError, match="entered once"):
        async with ex:
            pass  # pragma: no cover
    assert issubclass(ExecutorClosedError, RuntimeError)  # as concurrent.futures has it


async def test_a_group_member_cannot_deadlock_its_group_by_priority() -> None:
    # Unchecked, the urgent second member would queue ahead of the first,
    # wait for it as its group's head, and hold back the entity it needs.
    chain = Entity("chain", "vm-1")
    with anyio.fail_after(5):
        async with CommandExecutor(workers=2) as ex:
            holder = ex.locks.acquire_nowait([chain.shared()], owner="reader")
            first = ex.submit(Command("first", sleeping(0), [chain.exclusive()], group="g"))
            urgent = ex.submit(
                Command("urgent", sleeping(0), [chain.exclusive()], group="g", priority=9)
            )
            ex.locks.release(holder)
    assert first.report().finished_at is not None
    assert first.state is urgent.state is ExecutionState.SUCCEEDED


async def test_nowait_group_member_is_judged_after_its_predecessor_let_go() -> None:
    gate = anyio.Event()
    async with CommandExecutor(workers=2) as ex:
        first = ex.submit(Command("first", gated(gate), [VM.exclusive()], group="g"))
        second = ex.submit(
            Command("second", gated(gate), [VM.exclusive()], group="g", lock_timeout=0)
        )
        await anyio.wait_all_tasks_blocked()
        assert second.state is ExecutionState.QUEUED  # behind its group: no verdict yet
        gate.set()
    assert state(first) is state(second) is ExecutionState.SUCCEEDED


@virtual_time
async def test_nowait_does_not_fail_a_command_that_only_waits_for_a_worker() -> None:
    async with CommandExecutor(workers=1) as ex:
        ex.submit(Command("long", sleeping(100)))
        patient = ex.submit(Command("free entity", sleeping(1), [VM.shared()], lock_timeout=0))
    assert patient.state is ExecutionState.SUCCEEDED
    assert patient.report().started_at == 100.0
