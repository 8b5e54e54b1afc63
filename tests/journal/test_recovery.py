"""recover(): reconcile the journal with the backends, per rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from jobctl import AsyncJob, AsyncJobInfo, Domain, Job
from jobctl.host import Entity, EntityLockBusyError, EntityLocks
from jobctl.journal import (
    AsyncJobRecord,
    BackendState,
    BackendStatus,
    CommandState,
    EndContext,
    Journal,
    JournalStateError,
    RecoveryError,
    TaskSpec,
    TaskState,
    by_phase,
    recover,
)

from ._support import MemoryBackend, Stores

pytestmark = pytest.mark.anyio


class Ends:
    """End actions that log (command id, outcome, attempt)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, CommandState, int]] = []

    async def __call__(self, ctx: EndContext) -> Mapping[str, Any] | None:
        self.calls.append((ctx.key, ctx.outcome, ctx.attempt))
        await anyio.lowlevel.checkpoint()
        return None


async def crashed_run(journal: Journal, backend: MemoryBackend) -> None:
    """What a dead manager left behind, one command per recovery rule."""
    spec = TaskSpec
    # Never started: tasks recorded with backend ids the backend never saw.
    await journal.begin_command(
        "remove_vm",
        [spec("d0", "mem", backend_id="fresh-0"), spec("d1", "mem", backend_id="fresh-1")],
        entities=[Entity("vm", "fresh").exclusive()],
        command_id="fresh",
    )
    # Handed to a backend that assigns ids, but the id was never recorded.
    orphan = await journal.begin_command("remove_vm", [spec("d0", "mem")], command_id="orphan")
    await journal.update_task(orphan.tasks[0].id, TaskState.STARTING)
    # One task ended while the manager was down, one still runs.
    adopt = await journal.begin_command(
        "remove_vm",
        [spec("d0", "mem", backend_id="adopt-0"), spec("d1", "mem", backend_id="adopt-1")],
        entities=[Entity("vm", "adopt").exclusive(), Entity("sd", "sd1").shared()],
        command_id="adopt",
    )
    for task in adopt.tasks:
        assert task.backend_id is not None
        backend.start(task.backend_id)
        await journal.update_task(task.id, TaskState.RUNNING)
    backend.finish("adopt-0", freed=5)
    # Started (PENDING in the journal: the crash came before RUNNING was written).
    await journal.begin_command(
        "remove_vm", [spec("d0", "mem", backend_id="late-0")], command_id="late"
    )
    backend.start("late-0")
    backend.finish("late-0", error="disk locked")
    # Running in the journal, unknown to the backend: lost.
    lost = await journal.begin_command(
        "remove_vm", [spec("d0", "mem", backend_id="lost-0")], command_id="lost"
    )
    await journal.update_task(lost.tasks[0].id, TaskState.RUNNING)
    # The end action was claimed, then the process died during it.
    await journal.begin_command("snapshot", [], command_id="ending")
    with anyio.CancelScope() as scope:

        async def dies(ctx: EndContext) -> None:
            scope.cancel()
            await anyio.sleep_forever()

        await journal.end_command("ending", dies)
    # Already done: recovery must leave it alone.
    await journal.begin_command("snapshot", [], command_id="done")
    await journal.end_command("done", Ends())


async def test_recovery_applies_each_rule(tmp_path: Path, stores: Stores, tick: float) -> None:
    path = tmp_path / "j.db"
    backend = MemoryBackend()
    async with stores.journal(path) as journal:
        await crashed_run(journal, backend)

    locks = EntityLocks()
    ends = Ends()
    async with stores.journal(path) as journal, anyio.create_task_group() as tg:
        report = await tg.start(
            partial(
                recover,
                journal,
                backends={"mem": backend},
                end_actions={"remove_vm": ends, "snapshot": ends},
                locker=locks,
                poll_interval=tick,
            )
        )
        assert report.commands == ("fresh", "orphan", "adopt", "late", "lost", "ending")
        assert report.adopted == ("adopt.1",)
        assert report.concluded == ("adopt.0", "late.0")
        assert report.failed == ("fresh.0", "fresh.1", "orphan.0", "lost.0")
        assert report.async_jobs == ()
        # Concluded jobs were journaled, then released; the adopted one runs.
        assert backend.released == ["adopt-0", "late-0"]
        # The adopted command holds its entities again until it ends.
        with pytest.raises(EntityLockBusyError):
            locks.acquire_nowait([Entity("vm", "adopt").shared()], owner="intruder")
        shared = locks.acquire_nowait([Entity("sd", "sd1").shared()], owner="reader")
        locks.release(shared)
        adopt = await journal.command("adopt")
        assert adopt.state is CommandState.RUNNING
        assert adopt.task("d0").result == {"freed": 5}
        backend.finish("adopt-1", freed=7)
    assert locks.statistics().grants == 0

    async with stores.journal(path) as journal:
        final = {c.id: c for c in [await journal.command(i) for i in report.commands]}
        assert await journal.unfinished_commands() == ()
    assert {i: c.state for i, c in final.items()} == {
        "fresh": CommandState.FAILED,
        "orphan": CommandState.FAILED,
        "adopt": CommandState.SUCCEEDED,
        "late": CommandState.FAILED,
        "lost": CommandState.FAILED,
        "ending": CommandState.SUCCEEDED,
    }
    assert "never reached backend 'mem'" in (final["fresh"].tasks[0].error or "")
    assert "backend id was never recorded" in (final["orphan"].tasks[0].error or "")
    assert final["late"].tasks[0].error == "disk locked"
    assert "no longer knows 'lost-0'" in (final["lost"].tasks[0].error or "")
    assert [t.result for t in final["adopt"].tasks] == [{"freed": 5}, {"freed": 7}]
    assert sorted(ends.calls) == [
        ("adopt", CommandState.SUCCEEDED, 1),
        ("ending", CommandState.SUCCEEDED, 2),
        ("fresh", CommandState.FAILED, 1),
        ("late", CommandState.FAILED, 1),
        ("lost", CommandState.FAILED, 1),
        ("orphan", CommandState.FAILED, 1),
    ]
    assert backend.jobs == {}


async def test_recovery_twice_changes_nothing_more(
    tmp_path: Path, stores: Stores, tick: float
) -> None:
    path = tmp_path / "j.db"
    backend = MemoryBackend()
    async with stores.journal(path) as journal:
        await crashed_run(journal, backend)
    backend.finish("adopt-1")
    ends = Ends()
    kinds = {"remove_vm": ends, "snapshot": ends}
    async with stores.journal(path) as journal:
        await recover(journal, backends={"mem": backend}, end_actions=kinds, poll_interval=tick)
    calls = list(ends.calls)
    async with stores.journal(path) as journal:
        again = await recover(journal, backends={"mem": backend}, end_actions=kinds)
    assert again.commands == again.adopted == again.failed == again.concluded == ()
    assert ends.calls == calls


async def test_missing_handlers_are_named_before_any_change(tmp_path: Path, stores: Stores) -> None:
    path = tmp_path / "j.db"
    backend = MemoryBackend()
    async with stores.journal(path) as journal:
        await crashed_run(journal, backend)
        await journal.persister.save_async_job("vm9", _info(AsyncJob.BACKUP, "pull"), {})
        before = await journal.unfinished_commands()
    async with stores.journal(path) as journal:
        with pytest.raises(RecoveryError) as info:
            await recover(journal, backends={}, end_actions={"remove_vm": Ends()})
        message = str(info.value)
        assert "backend 'mem' (task fresh.0)" in message
        assert "end action for command kind 'snapshot'" in message
        assert "handler for async job BACKUP (domain 'vm9')" in message
        assert await journal.unfinished_commands() == before
        assert len(await journal.async_jobs()) == 1
    assert backend.queries == []


def _info(kind: AsyncJob, phase: str, job_id: int = 7) -> AsyncJobInfo:
    return AsyncJobInfo(
        id=job_id,
        kind=kind,
        owner="flow",
        phase=phase,
        interruptible=False,
        allowed=frozenset({Job.QUERY}),
        started=0.0,
        progress={},
    )


async def test_async_jobs_go_to_their_handlers_per_phase(tmp_path: Path, stores: Stores) -> None:
    path = tmp_path / "j.db"
    async with stores.journal(path) as journal:
        await journal.persister.save_async_job(
            "vm1", _info(AsyncJob.MIGRATION_OUT, "perform"), {"uri": "tcp:dst:4444"}
        )
        await journal.persister.save_async_job("vm2", _info(AsyncJob.BACKUP, "running"), {})
        dead_session = journal.session

    seen: list[tuple[str, str, Mapping[str, Any]]] = []
    backup_taken_over = anyio.Event()
    release_backup = anyio.Event()

    async with stores.journal(path) as journal:
        vm2 = Domain("vm2", persister=journal.persister)

        async def migration(
            record: AsyncJobRecord, *, task_status: anyio.abc.TaskStatus[None]
        ) -> None:
            seen.append((record.domain, record.phase, record.private))
            task_status.started()  # cancelled on the source, VM resumed: settled

        async def backup(
            record: AsyncJobRecord, *, task_status: anyio.abc.TaskStatus[None]
        ) -> None:
            seen.append((record.domain, record.phase, record.private))
            # QEMU still runs it: take it back as a new async job of the domain.
            async with vm2.async_job(record.kind, owner="recovered") as ajob:
                await ajob.set_phase(record.phase)
                task_status.started()
                backup_taken_over.set()
                await release_backup.wait()

        async with anyio.create_task_group() as tg:
            report = await tg.start(
                partial(
                    recover,
                    journal,
                    backends={},
                    end_actions={},
                    async_handlers={AsyncJob.MIGRATION_OUT: migration, AsyncJob.BACKUP: backup},
                )
            )
            assert {r.domain for r in report.async_jobs} == {"vm1", "vm2"}
            assert all(r.session == dead_session for r in report.async_jobs)
            await backup_taken_over.wait()
            # The dead run's records are gone; the taken-over backup is this session's.
            (current,) = await journal.async_jobs()
            assert (current.domain, current.owner, current.session) == (
                "vm2",
                "recovered",
                journal.session,
            )
            assert current.phase == "running"
            release_backup.set()
        assert sorted(seen) == [
            ("vm1", "perform", {"uri": "tcp:dst:4444"}),
            ("vm2", "running", {}),
        ]
        assert await journal.async_jobs() == ()


async def test_by_phase_runs_the_phase_action_and_names_unknown_phases(
    tmp_path: Path, stores: Stores
) -> None:
    path = tmp_path / "j.db"
    async with stores.journal(path) as journal:
        await journal.persister.save_async_job("vm1", _info(AsyncJob.SAVE, "perform"), {"n": 1})
        await journal.persister.save_async_job("vm2", _info(AsyncJob.SAVE, "begin"), {})
    done: list[tuple[str, str]] = []

    async def note(record: AsyncJobRecord) -> None:
        done.append((record.domain, record.phase))

    async with stores.journal(path) as journal:
        handler = by_phase({"begin": note, "perform": note})
        await recover(journal, backends={}, end_actions={}, async_handlers={AsyncJob.SAVE: handler})
        assert sorted(done) == [("vm1", "perform"), ("vm2", "begin")]
        assert await journal.async_jobs() == ()
        await journal.persister.save_async_job("vm3", _info(AsyncJob.SAVE, "teleport"), {})
    async with stores.journal(path) as journal:
        handler = by_phase({"begin": note})
        # The one failure leaves as itself, not as a group of one.
        with pytest.raises(RecoveryError) as info:
            await recover(
                journal, backends={}, end_actions={}, async_handlers={AsyncJob.SAVE: handler}
            )
        assert "SAVE of domain 'vm3' in phase 'teleport' (known phases: begin)" in str(info.value)
        # Not settled: the record stays for the next attempt.
        assert [r.domain for r in await journal.async_jobs()] == ["vm3"]


async def test_recovery_refuses_to_run_beside_live_commands(tmp_path: Path, stores: Stores) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        await journal.begin_command("remove_vm", [TaskSpec("d0", "mem")])
        with pytest.raises(JournalStateError, match="run it at start-up"):
            await recover(journal, backends={}, end_actions={"remove_vm": Ends()})
        (live,) = await journal.unfinished_commands()
        assert live.tasks[0].state is TaskState.PENDING


class DoneAtSecondLook(MemoryBackend):
    """Reports its jobs running to recovery's query, finished to the next."""

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        found = await super().query(backend_ids)
        for backend_id, status in found.items():
            if status.state is BackendState.RUNNING:
                self.finish(backend_id)
        return found


# Real clocks: with trio's MockClock a deadline would jump ahead while the
# journal's worker threads run.
@pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {}), id="trio"), pytest.param(("asyncio", {}), id="asyncio")],
)
async def test_commands_that_conflict_on_an_entity_are_recovered_in_turn(
    tmp_path: Path,
    stores: Stores,
) -> None:
    path = tmp_path / "j.db"
    backend = DoneAtSecondLook()
    vm = Entity("vm", "vm1").exclusive()
    async with stores.journal(path) as journal:
        first = await journal.begin_command(
            "k", [TaskSpec("t", "mem", backend_id="first")], entities=[vm], command_id="first"
        )
        backend.start("first")
        await journal.update_task(first.tasks[0].id, TaskState.RUNNING)
        await journal.begin_command("k", [], entities=[vm], command_id="second")
    ends = Ends()
    locks = EntityLocks()
    async with stores.journal(path) as journal:
        # The second command waits for the first's lock; the first ends only
        # once its adopted task was followed. The deadline only guards
        # against a deadlock: the test takes milliseconds.
        with anyio.fail_after(30):
            report = await recover(
                journal,
                backends={"mem": backend},
                end_actions={"k": ends},
                locker=locks,
                poll_interval=0.001,
            )
    assert report.adopted == (first.tasks[0].id,)
    assert [call[0] for call in ends.calls] == ["first", "second"]
    assert locks.statistics().grants == 0
