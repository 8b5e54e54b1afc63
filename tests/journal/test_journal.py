"""The journal's front end: commands, task transitions, end actions, entities."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import Entity
from jobctl.journal import (
    CommandState,
    EndContext,
    JournalNotFoundError,
    JournalStateError,
    TaskSpec,
    TaskState,
    TaskUpdate,
    follow_command,
)

from ._support import MemoryBackend, Stores, raw

pytestmark = pytest.mark.anyio


def disks(n: int) -> list[TaskSpec]:
    return [
        TaskSpec(f"disk-{i}", "mem", backend_id=f"rm-{i}", params={"disk": f"d{i}"})
        for i in range(n)
    ]


class EndLog:
    """An end action that records each call."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[EndContext] = []
        self.fail_times = fail_times

    async def __call__(self, ctx: EndContext) -> Mapping[str, Any] | None:
        self.calls.append(ctx)
        await anyio.lowlevel.checkpoint()
        if len(self.calls) <= self.fail_times:
            raise RuntimeError(f"boom {len(self.calls)}")
        return {"outcome": ctx.outcome.value, "attempt": ctx.attempt}


async def test_all_tasks_are_recorded_together_before_any_starts(
    tmp_path: Path, stores: Stores
) -> None:
    path = tmp_path / "j.db"
    async with stores.journal(path) as journal:
        command = await journal.begin_command(
            "remove_vm",
            disks(4),
            entities=[Entity("vm", "vm1").exclusive(), Entity("storage_domain", "sd1").shared()],
            data={"vm": "vm1"},
            command_id="rm-vm1",
        )
        assert [t.id for t in command.tasks] == [f"rm-vm1.{i}" for i in range(4)]
        assert all(t.state is TaskState.PENDING for t in command.tasks)
        if stores.kind == "sqlite":
            assert journal.store.statistics().transactions == 1  # type: ignore[attr-defined]
        stored = await journal.command("rm-vm1")
        assert stored == command
        assert stored.data == {"vm": "vm1"}
        assert stored.task("disk-2").params == {"disk": "d2"}
        assert stored.task("disk-2").backend_id == "rm-2"
    if stores.kind == "sqlite":
        assert raw(path, "SELECT count(*) FROM tasks WHERE command_id = 'rm-vm1'") == [(4,)]
        # On disk a need is its entity and a `shared` flag: 1 SHARED, 0 EXCLUSIVE.
        assert raw(path, "SELECT type, id, shared FROM entities ORDER BY type") == [
            ("storage_domain", "sd1", 1),
            ("vm", "vm1", 0),
        ]
    async with stores.journal(path) as journal:  # reopened: all of it is still there
        assert await journal.command("rm-vm1") == stored
    assert stored.entities == (
        Entity("storage_domain", "sd1").shared(),
        Entity("vm", "vm1").exclusive(),
    )


async def test_bad_commands_are_refused_before_anything_is_written(
    tmp_path: Path, stores: Stores
) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        with pytest.raises(ValueError, match="task name 'a' twice"):
            await journal.begin_command("k", [TaskSpec("a", "m"), TaskSpec("a", "m")])
        with pytest.raises(ValueError, match="backend id 'm:x' twice"):
            await journal.begin_command(
                "k", [TaskSpec("a", "m", backend_id="x"), TaskSpec("b", "m", backend_id="x")]
            )
        with pytest.raises(ValueError, match="entity 'vm/v' twice"):
            await journal.begin_command(
                "k", [], entities=[Entity("vm", "v").exclusive(), Entity("vm", "v").shared()]
            )
        with pytest.raises(TypeError, match=r"Need values.*use entity\.shared\(\)"):
            await journal.begin_command("k", [], entities=[Entity("vm", "v")])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="kind"):
            await journal.begin_command("", [])
        with pytest.raises(TypeError, match="TaskSpec"):
            await journal.begin_command("k", ["disk"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="non-empty string"):
            TaskSpec("", "m")
        with pytest.raises(TypeError, match="data of command 'c' must be a JSON object"):
            await journal.begin_command("k", [], data={"f": {1, 2}}, command_id="c")
        assert await journal.unfinished_commands() == ()
        await journal.begin_command("k", [], command_id="c")
        with pytest.raises(JournalStateError, match="'c' is already in the journal"):
            await journal.begin_command("k", [], command_id="c")


async def test_an_active_backend_id_belongs_to_one_task(tmp_path: Path, stores: Stores) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        first = await journal.begin_command("k", disks(1), command_id="c1")
        with pytest.raises(JournalStateError, match=r"'rm-0' on 'mem' is already used by .*c1.0"):
            await journal.begin_command("k", disks(1), command_id="c2")
        # Once the first is over, the id may be used again.
        await journal.update_task(first.tasks[0].id, TaskState.FAILED, error="gone")
        await journal.begin_command("k", disks(1), command_id="c2")


async def test_tasks_only_move_forward(tmp_path: Path, stores: Stores) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        command = await journal.begin_command(
            "k", [TaskSpec("a", "m"), TaskSpec("b", "m", backend_id="B")], command_id="c"
        )
        a, b = (t.id for t in command.tasks)
        rec = await journal.update_task(a, TaskState.STARTING)
        assert rec.state is TaskState.STARTING and rec.backend_id is None
        rec = await journal.update_task(a, TaskState.RUNNING, backend_id="A")
        assert rec.backend_id == "A"
        with pytest.raises(JournalStateError, match="cannot go from running to starting"):
            await journal.update_task(a, TaskState.STARTING)
        with pytest.raises(JournalStateError, match="cannot go from running to running"):
            await journal.update_task(a, TaskState.RUNNING)
        rec = await journal.update_task(a, TaskState.SUCCEEDED, result={"freed": 10})
        assert rec.result == {"freed": 10}
        with pytest.raises(JournalStateError, match="cannot go from succeeded to failed"):
            await journal.update_task(a, TaskState.FAILED, error="late")
        with pytest.raises(JournalStateError, match="already has backend id 'B', not 'C'"):
            await journal.update_task(b, TaskState.RUNNING, backend_id="C")
        with pytest.raises(JournalNotFoundError, match=r"no task 'c\.7'"):
            await journal.update_task("c.7", TaskState.RUNNING)
        with pytest.raises(ValueError, match="needs an error"):
            await journal.update_task(b, TaskState.FAILED)
        with pytest.raises(ValueError, match="only a succeeded task has a result"):
            await journal.update_task(b, TaskState.RUNNING, result={})
        # A batch is all or nothing.
        with pytest.raises(JournalStateError):
            await journal.update_tasks(
                [TaskUpdate(b, TaskState.RUNNING), TaskUpdate(a, TaskState.RUNNING)]
            )
        assert (await journal.command("c")).task("b").state is TaskState.PENDING
        stored = await journal.command("c")
        assert stored.task("a").state is TaskState.SUCCEEDED
        assert stored.task("a").result == {"freed": 10}


async def test_a_command_cannot_end_with_tasks_undone(tmp_path: Path, stores: Stores) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        command = await journal.begin_command("k", disks(3), command_id="c")
        await journal.update_task(command.tasks[0].id, TaskState.RUNNING)
        await journal.update_task(command.tasks[0].id, TaskState.SUCCEEDED)
        action = EndLog()
        with pytest.raises(JournalStateError, match=r"2 of its tasks are not over: disk-1 \(pe"):
            await journal.end_command("c", action)
        assert action.calls == []
        assert (await journal.command("c")).state is CommandState.RUNNING


async def test_end_action_runs_once_and_success_needs_every_task(
    tmp_path: Path, stores: Stores
) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        ok = await journal.begin_command("k", disks(2), command_id="ok")
        for task in ok.tasks:
            await journal.update_task(task.id, TaskState.SUCCEEDED)
        action = EndLog()
        final = await journal.end_command("ok", action)
        assert final.state is CommandState.SUCCEEDED
        assert final.result == {"outcome": "succeeded", "attempt": 1}
        assert final.error is None
        # Again: already final, the action does not run.
        assert await journal.end_command("ok", action) == final
        assert len(action.calls) == 1
        assert action.calls[0].key == "ok"
        with pytest.raises(JournalStateError, match="which is succeeded: its tasks can no longer"):
            await journal.update_task(ok.tasks[0].id, TaskState.FAILED, error="x")

        bad = await journal.begin_command("k", [TaskSpec("a", "m"), TaskSpec("b", "m")])
        await journal.update_task(bad.tasks[0].id, TaskState.SUCCEEDED)
        await journal.update_task(bad.tasks[1].id, TaskState.FAILED, error="disk busy")
        failed = await journal.end_command(bad.id, action)
        assert failed.state is CommandState.FAILED
        assert failed.outcome is CommandState.FAILED
        assert failed.error == "task 'b' failed: disk busy"
        assert action.calls[-1].outcome is CommandState.FAILED
        stats = journal.statistics()
        assert (stats.commands_ended, stats.end_action_runs, stats.ending) == (2, 2, 0)


async def test_end_action_retries_are_bounded(tmp_path: Path, stores: Stores, tick: float) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        await journal.begin_command("k", [], command_id="flaky")
        flaky = EndLog(fail_times=2)
        final = await journal.end_command("flaky", flaky, max_attempts=3, retry_delay=5 * tick)
        assert final.state is CommandState.SUCCEEDED
        assert [c.attempt for c in flaky.calls] == [1, 2, 3]
        assert final.end_attempts == 3

        await journal.begin_command("k", [], command_id="broken")
        broken = EndLog(fail_times=99)
        final = await journal.end_command("broken", broken, max_attempts=2, retry_delay=0)
        assert len(broken.calls) == 2
        assert final.state is CommandState.FAILED
        assert final.outcome is CommandState.SUCCEEDED
        assert final.error == (
            "end action did not complete in 2 attempts (last error: RuntimeError: boom 2)"
        )
        with pytest.raises(ValueError, match="max_attempts"):
            await journal.end_command("broken", broken, max_attempts=0)
        assert journal.statistics().end_action_errors == 4


async def test_concurrent_ends_of_one_command_run_the_action_once(
    tmp_path: Path, stores: Stores
) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        await journal.begin_command("k", [], command_id="c")
        action = EndLog()
        results = []

        async def end() -> None:
            results.append(await journal.end_command("c", action))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(end)
        assert len(action.calls) == 1
        assert len(results) == 3
        assert {r.state for r in results} == {CommandState.SUCCEEDED}


async def test_a_cancelled_end_action_is_claimed_and_runs_again(
    tmp_path: Path, stores: Stores
) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        await journal.begin_command("k", [], command_id="c")
        started = anyio.Event()

        async def hangs(ctx: EndContext) -> None:
            started.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.end_command, "c", hangs)
            await started.wait()
            tg.cancel_scope.cancel()
        claimed = await journal.command("c")
        assert (claimed.state, claimed.end_attempts) == (CommandState.ENDING, 1)
        assert await journal.unfinished_commands() == (claimed,)
        action = EndLog()
        final = await journal.end_command("c", action)
        assert [c.attempt for c in action.calls] == [2]
        assert final.state is CommandState.SUCCEEDED


async def test_entity_queries_see_only_unfinished_commands(tmp_path: Path, stores: Stores) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        vm = Entity("vm", "vm1").exclusive()
        await journal.begin_command("remove", [], entities=[vm], command_id="a")
        await journal.begin_command(
            "stats", [], entities=[Entity("vm", "vm1").shared()], command_id="b"
        )
        await journal.begin_command(
            "other", [], entities=[Entity("vm", "vm2").exclusive()], command_id="c"
        )
        assert await journal.active_commands("vm", "vm1") == ("a", "b")
        assert await journal.entity_busy("vm", "vm1")
        assert not await journal.entity_busy("disk", "vm1")
        assert (await journal.command("b")).entities == (Entity("vm", "vm1").shared(),)
        await journal.end_command("a", EndLog())
        assert await journal.active_commands("vm", "vm1") == ("b",)
        await journal.end_command("b", EndLog())
        assert not await journal.entity_busy("vm", "vm1")
        assert await journal.entity_busy("vm", "vm2")


async def test_follow_command_records_outcomes_before_releasing(
    tmp_path: Path, stores: Stores, tick: float
) -> None:
    backend = MemoryBackend()
    async with stores.journal(tmp_path / "j.db") as journal:
        command = await journal.begin_command("k", disks(3), command_id="c")
        for task in command.tasks:
            assert task.backend_id is not None
            backend.start(task.backend_id)
            await journal.update_task(task.id, TaskState.RUNNING)

        async def finish_later() -> None:
            await anyio.sleep(1.5 * tick)
            backend.finish("rm-0", freed=1)
            backend.finish("rm-1", error="I/O error")
            await anyio.sleep(2 * tick)
            del backend.jobs["rm-2"]  # the backend lost it

        async with anyio.create_task_group() as tg:
            tg.start_soon(finish_later)
            final = await follow_command(journal, "c", {"mem": backend}, poll_interval=tick)
        assert [t.state for t in final.tasks] == [
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.FAILED,
        ]
        assert final.task("disk-0").result == {"freed": 1}
        assert final.task("disk-1").error == "I/O error"
        assert "no longer knows 'rm-2'" in (final.task("disk-2").error or "")
        assert backend.released == ["rm-0", "rm-1"]
        assert backend.jobs == {}
        ended = await journal.end_command("c", EndLog())
        assert ended.state is CommandState.FAILED
