"""jobctl.blocking.BlockingJournal: the task journal from plain threads, on a
real SQLite file, with trio and asyncio loops.

Threads wait for each other with barriers and futures, never with sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jobctl import Entity
from jobctl.blocking import BlockingJournal, EventLoopThread, LoopThreadError
from jobctl.journal import (
    BackendState,
    BackendStatus,
    CommandState,
    EndContext,
    TaskSpec,
    TaskState,
    open_journal,
)

WAIT = 60.0


@pytest.fixture(params=["trio", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[EventLoopThread]:
    with EventLoopThread(request.param) as running:
        yield running


def test_64_threads_record_their_commands_and_each_end_action_runs_once(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.db"
    ran: list[str] = []
    ran_lock = threading.Lock()
    start = threading.Barrier(64, timeout=WAIT)

    def end(ctx: EndContext) -> Mapping[str, Any]:
        # A plain end action runs on a worker thread: it may block.
        with ran_lock:
            ran.append(ctx.key)
        return {"removed": ctx.key}

    with loop.enter(open_journal(path)) as journal:
        bj = BlockingJournal(loop, journal)

        def manager_thread(n: int) -> str:
            start.wait()
            cmd = bj.begin_command(
                "remove_vm",
                [TaskSpec("disk0", "storage"), TaskSpec("disk1", "storage")],
                entities=[Entity("vm", f"vm{n}").exclusive()],
                command_id=f"c{n}",
            )
            assert bj.entity_busy("vm", f"vm{n}")
            for task in cmd.tasks:
                bj.update_task(task.id, TaskState.RUNNING, backend_id=f"{task.id}-job")
                bj.update_task(task.id, TaskState.SUCCEEDED, result={"ok": True})
            final = bj.end_command(cmd.id, end)
            assert final.state is CommandState.SUCCEEDED
            assert final.result == {"removed": cmd.id}
            # Ending again does not run the action again.
            assert bj.end_command(cmd.id, end).state is CommandState.SUCCEEDED
            assert not bj.entity_busy("vm", f"vm{n}")
            return cmd.id

        with ThreadPoolExecutor(64) as pool:
            ids = list(pool.map(manager_thread, range(64)))
        assert bj.unfinished_commands() == ()
        stats = bj.statistics()
    assert sorted(ran) == sorted(ids) and len(ran) == 64
    assert stats.commands_begun == 64
    # Durable: a new journal on the same file sees every command final.
    with EventLoopThread("trio") as other, other.enter(open_journal(path)) as journal:
        again = BlockingJournal(other, journal)
        assert all(again.command(i).state is CommandState.SUCCEEDED for i in ids)


class _Backend:
    """A backend that says every task it is asked about finished."""

    def __init__(self) -> None:
        self.released: list[str] = []

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        await anyio.lowlevel.checkpoint()
        return {i: BackendStatus(BackendState.SUCCEEDED, result={"id": i}) for i in backend_ids}

    async def release(self, backend_ids: Sequence[str]) -> None:
        await anyio.lowlevel.checkpoint()
        self.released.extend(backend_ids)


def test_recover_from_a_thread_ends_what_a_dead_manager_left(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.db"
    with loop.enter(open_journal(path)) as journal:
        bj = BlockingJournal(loop, journal)
        for n in range(3):
            cmd = bj.begin_command("backup", [TaskSpec("copy", "storage")], command_id=f"b{n}")
            bj.update_task(cmd.tasks[0].id, TaskState.RUNNING, backend_id=f"job{n}")
    ended: list[str] = []
    backend = _Backend()
    with loop.enter(open_journal(path)) as journal:
        bj = BlockingJournal(loop, journal)
        assert [c.id for c in bj.unfinished_commands()] == ["b0", "b1", "b2"]
        report = bj.recover(
            backends={"storage": backend},
            end_actions={"backup": lambda ctx: ended.append(ctx.key)},
            poll_interval=0.01,
        )
        assert bj.unfinished_commands() == ()
        assert all(bj.command(f"b{n}").state is CommandState.SUCCEEDED for n in range(3))
    assert sorted(ended) == ["b0", "b1", "b2"]
    assert sorted(backend.released) == ["job0", "job1", "job2"]
    assert report is not None


def test_a_failing_plain_end_action_is_retried_then_the_command_fails(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    attempts: list[int] = []

    def end(ctx: EndContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("storage said no")

    with loop.enter(open_journal(tmp_path / "tasks.db")) as journal:
        bj = BlockingJournal(loop, journal)
        cmd = bj.begin_command("remove_vm", [], command_id="c1")
        final = bj.end_command(cmd.id, end, max_attempts=2, retry_delay=0)
    assert attempts == [1, 2]
    assert final.state is CommandState.FAILED
    assert final.error is not None and "storage said no" in final.error


def test_an_end_action_that_returns_an_awaitable_is_a_typed_error(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    async def later(ctx: EndContext) -> None:
        await anyio.lowlevel.checkpoint()

    with loop.enter(open_journal(tmp_path / "tasks.db")) as journal:
        bj = BlockingJournal(loop, journal)
        cmd = bj.begin_command("remove_vm", [], command_id="c1")
        final = bj.end_command(cmd.id, lambda ctx: later(ctx), max_attempts=1, retry_delay=0)
    assert final.state is CommandState.FAILED
    assert final.error is not None and "returned an awaitable" in final.error


def test_a_coroutine_end_action_runs_in_the_loop(loop: EventLoopThread, tmp_path: Path) -> None:
    seen: list[str] = []

    async def end(ctx: EndContext) -> Mapping[str, Any]:
        await anyio.lowlevel.checkpoint()
        seen.append(ctx.key)
        return {"n": 1}

    with loop.enter(open_journal(tmp_path / "tasks.db")) as journal:
        bj = BlockingJournal(loop, journal)
        cmd = bj.begin_command("k", [], command_id="c1")
        assert bj.end_command_soon(cmd.id, end).result(timeout=WAIT).result == {"n": 1}
    assert seen == ["c1"]


def test_the_journal_facade_refuses_calls_from_the_loop_thread(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    with loop.enter(open_journal(tmp_path / "tasks.db")) as journal:
        bj = BlockingJournal(loop, journal)
        with pytest.raises(LoopThreadError):
            loop.run_sync(bj.unfinished_commands)
    with pytest.raises(TypeError, match=r"wraps a jobctl\.journal\.Journal"):
        BlockingJournal(loop, object())  # type: ignore[arg-type]
