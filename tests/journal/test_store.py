"""The SQLite store: schema checks, bad data, one writer, group commit."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import anyio
import pytest

from jobctl import Entity, JobError
from jobctl.journal import (
    SCHEMA_VERSION,
    CommandState,
    JournalClosedError,
    JournalCorruptError,
    JournalError,
    JournalInUseError,
    JournalSchemaError,
    JournalStateError,
    Seal,
    SqliteJournalStore,
    TaskSpec,
    TaskState,
    TaskUpdate,
    open_journal,
    read_seal,
)
from jobctl.journal._files import SealFile  # private: see tests/test_public_names.py

from ._support import Stores, raw, resum

pytestmark = pytest.mark.anyio


def spec(name: str, backend_id: str | None = None) -> TaskSpec:
    return TaskSpec(name=name, backend="mem", backend_id=backend_id)


async def test_creates_a_wal_journal_with_its_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with await SqliteJournalStore.open(path) as store:
        assert store.path == str(path)
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw(path, "PRAGMA application_id") == [(0x6A6F626A,)]
    # Reopening keeps the data.
    async with open_journal(path) as journal:
        await journal.begin_command("k", [spec("a")], command_id="c1")
    async with open_journal(path) as journal:
        assert (await journal.command("c1")).tasks[0].name == "a"


async def test_newer_schema_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await journal.begin_command("k", [spec("a")], command_id="c1")
    # What a newer jobctl leaves: a new table, a new version, sealed as such.
    (journal_id,) = raw(path, "SELECT journal_id FROM meta")[0]
    raw(path, "CREATE TABLE future (x INTEGER)")
    raw(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    seal_path = f"{path}-seal"
    seal = read_seal(seal_path, str(path))
    assert seal is not None
    newer_seal = Seal(journal_id, SCHEMA_VERSION + 1, seal.seq)
    SealFile.write_new(seal_path, newer_seal, sync=False).close()
    before = path.read_bytes()
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than .* {SCHEMA_VERSION}"
    with pytest.raises(JournalSchemaError, match=newer):
        await SqliteJournalStore.open(path)
    assert path.read_bytes() == before
    assert raw(path, "SELECT id FROM commands") == [("c1",)]
    # The same version number on this version's tables is a damaged header.
    raw(path, "DROP TABLE future")
    with pytest.raises(JournalCorruptError, match=r"header says application_id .*, version 3"):
        await SqliteJournalStore.open(path)


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    raw(path, "CREATE TABLE mine (x INTEGER)")
    with pytest.raises(JournalSchemaError, match="not a jobctl journal"):
        await SqliteJournalStore.open(path)
    assert raw(path, "SELECT name FROM sqlite_schema") == [("mine",)]


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for" * 100)
    # Not a journal any more, or never one: refused as damaged, never reset.
    with pytest.raises(JournalCorruptError, match="SQLite cannot read it") as info:
        await SqliteJournalStore.open(path)
    assert not isinstance(info.value, JobError)  # the journal's own, not the job core's
    assert path.read_bytes().startswith(b"these are not")


@pytest.mark.parametrize(
    ("table", "sql", "message"),
    [
        (
            "tasks",
            "UPDATE tasks SET state = 'exploded' WHERE id = 'c1.1'",
            r"row 'c1.1' of table 'tasks'.*'exploded' is not a valid TaskState",
        ),
        (
            "tasks",
            "UPDATE tasks SET params = '{broken' WHERE id = 'c1.0'",
            r"row 'c1.0' of table 'tasks'",
        ),
        (
            "commands",
            "UPDATE commands SET data = '[1, 2]' WHERE id = 'c1'",
            r"row 'c1' of table 'commands'.*not an object",
        ),
        (
            "commands",
            "UPDATE commands SET state = 'ending' WHERE id = 'c1'",
            r"row 'c1' of table 'commands'.*must have an outcome",
        ),
    ],
)
async def test_a_corrupt_row_is_named_never_reset(
    tmp_path: Path, table: str, sql: str, message: str
) -> None:
    # A row that breaks the schema's rules under a valid checksum.
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await journal.begin_command("k", [spec("a"), spec("b")], command_id="c1")
    resum(path, sql)
    async with open_journal(path) as journal:
        with pytest.raises(JournalCorruptError, match=message) as info:
            await journal.command("c1")
        assert info.value.table == table
        assert info.value.path == str(path)
        assert str(path) in str(info.value)
        with pytest.raises(JournalCorruptError):
            await journal.unfinished_commands()
    assert raw(path, "SELECT count(*) FROM tasks") == [(2,)]


@pytest.mark.parametrize(
    ("table", "key", "sql"),
    [
        ("tasks", "c1.1", "UPDATE tasks SET backend_id = 'job-7' WHERE id = 'c1.1'"),
        ("tasks", "c1.0", "UPDATE tasks SET params = '{\"disk\":\"d9\"}' WHERE id = 'c1.0'"),
        ("commands", "c1", "UPDATE commands SET kind = 'remove_vn' WHERE id = 'c1'"),
        ("commands", "c1", "UPDATE commands SET created = 1.5 WHERE id = 'c1'"),
        ("entities", "vm/vm1/c1", "UPDATE entities SET shared = 1 WHERE id = 'vm1'"),
    ],
)
async def test_an_altered_record_fails_its_checksum(
    tmp_path: Path, table: str, key: str, sql: str
) -> None:
    # Well-formed values, valid b-trees: only the checksum can tell.
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await journal.begin_command(
            "remove_vm",
            [spec("a"), spec("b")],
            entities=[Entity("vm", "vm1").exclusive()],
            command_id="c1",
        )
    raw(path, sql)
    async with open_journal(path) as journal:
        for read in (partial(journal.command, "c1"), journal.unfinished_commands):
            with pytest.raises(JournalCorruptError, match="checksum mismatch") as info:
                await read()
            assert (info.value.table, info.value.row) == (table, key)
            assert str(path) in str(info.value)
        if table != "entities":  # a write reads the task and its command first
            with pytest.raises(JournalCorruptError, match="checksum mismatch"):
                await journal.update_task(key if table == "tasks" else "c1.1", TaskState.RUNNING)
        else:
            with pytest.raises(JournalCorruptError, match="checksum mismatch"):
                await journal.entity_busy("vm", "vm1")


async def test_a_row_missing_from_a_command_is_reported(tmp_path: Path) -> None:
    # Each command counts its tasks and entities: a row that is gone (or
    # that a damaged index hides) is reported, not silently left out.
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        needs = [Entity("vm", "vm1").exclusive(), Entity("disk", "d1").exclusive()]
        await journal.begin_command("k", [spec("a"), spec("b"), spec("c")], entities=needs)
        (command,) = await journal.unfinished_commands()
    raw(path, "DELETE FROM tasks WHERE name = 'b'")
    async with open_journal(path) as journal:
        with pytest.raises(JournalCorruptError, match=r"3 tasks, but positions \[0, 2\]"):
            await journal.command(command.id)
    raw(path, "DELETE FROM tasks")
    raw(path, "DELETE FROM entities WHERE type = 'disk'")
    async with open_journal(path) as journal:
        with pytest.raises(JournalCorruptError, match="3 tasks, but positions"):
            await journal.unfinished_commands()
    raw(path, "UPDATE commands SET task_count = 0")
    resum(path, "SELECT 1")
    async with open_journal(path) as journal:
        with pytest.raises(JournalCorruptError, match="2 entities, but 1 were found"):
            await journal.command(command.id)


async def test_a_seal_that_cannot_be_written_stops_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    store = await SqliteJournalStore.open(path)
    await store.add_command("c1", "k", {}, [], [])
    # The seal's descriptor turns read-only: the next seal write fails.
    read_only = os.open(f"{path}-seal", os.O_RDONLY)
    os.dup2(read_only, store._seal._fd)
    os.close(read_only)
    # Committed before the seal failed: its result stands...
    assert (await store.add_command("c2", "k", {}, [], [])).id == "c2"
    # ...and the writer stops, since a lost -wal could no longer be seen.
    with pytest.raises(JournalError, match=r"seal .* cannot be written"):
        await store.add_command("c3", "k", {}, [], [])
    await store.aclose()
    # The seal lags the file (never the reverse): the journal opens whole.
    async with open_journal(path) as journal:
        assert [c.id for c in await journal.unfinished_commands()] == ["c1", "c2"]


async def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        for c in range(20):
            specs = [TaskSpec(f"t{i}", "mem", params={"pad": "x" * 200}) for i in range(10)]
            await journal.begin_command("k", specs, command_id=f"c{c}")
    data = bytearray(path.read_bytes())
    data[2 * 4096 : 6 * 4096] = b"\x5a" * (4 * 4096)
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError, match="is damaged: SQLite's integrity_check") as info:
        await SqliteJournalStore.open(path)
    assert info.value.path == str(path)
    assert path.read_bytes() == data


async def test_a_corrupt_async_job_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with open_journal(path):
        pass
    resum(
        path,
        "INSERT INTO async_jobs VALUES ('vm1', 1, 'teleport', 'p', NULL, '[]', '{}', 's', 0.0, 0)",
    )
    async with open_journal(path) as journal:
        with pytest.raises(JournalCorruptError, match=r"row 'vm1' of table 'async_jobs'.*teleport"):
            await journal.async_jobs()


async def test_one_writer_per_file(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with await SqliteJournalStore.open(path):
        with pytest.raises(JournalInUseError, match="already open for writing"):
            await SqliteJournalStore.open(path)
    # Closed: the next writer may open it.
    async with await SqliteJournalStore.open(path):
        pass


async def test_a_journal_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "j.db"
    with pytest.raises(JournalError, match=r"no-such-directory/j\.db' cannot be created"):
        await SqliteJournalStore.open(missing)


async def test_use_after_close_is_a_clear_error(tmp_path: Path, stores: Stores) -> None:
    store = await stores.store(tmp_path / "j.db")
    await store.aclose()
    await store.aclose()
    assert store.statistics().closed  # type: ignore[attr-defined]
    with pytest.raises(JournalClosedError):
        await store.get_command("x")
    with pytest.raises(JournalClosedError):
        await store.add_command("x", "k", {}, [], [])


async def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        await SqliteJournalStore.open(":memory:")
    with pytest.raises(ValueError, match="synchronous"):
        await SqliteJournalStore.open(tmp_path / "j.db", synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="readers"):
        await SqliteJournalStore.open(tmp_path / "j.db", readers=0)


async def test_concurrent_writes_share_transactions_and_fail_alone(
    tmp_path: Path, stores: Stores
) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        specs = [spec(f"t{i}") for i in range(40)]
        command = await journal.begin_command("k", specs, command_id="c1")
        errors: list[Exception] = []

        async def move(task_id: str, state: TaskState) -> None:
            try:
                await journal.update_task(task_id, state)
            except JournalStateError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for task in command.tasks:
                tg.start_soon(move, task.id, TaskState.RUNNING)
            # Illegal: a task cannot move back; it fails alone.
            tg.start_soon(move, command.tasks[0].id, TaskState.PENDING)
        stats = journal.store.statistics()  # type: ignore[attr-defined]
        assert stats.writes == 42
        if stores.kind == "sqlite":  # group commit
            assert stats.transactions < stats.writes
            assert stats.largest_batch > 1
        assert len(errors) == 1
        assert "cannot go from" in str(errors[0])
        after = await journal.command("c1")
        assert {t.state for t in after.tasks} == {TaskState.RUNNING}


async def test_a_cancelled_writer_still_learns_its_write_committed(
    tmp_path: Path, stores: Stores
) -> None:
    async with stores.journal(tmp_path / "j.db") as journal:
        command = await journal.begin_command("k", [spec("a"), spec("b")], command_id="c1")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await journal.update_task(command.tasks[0].id, TaskState.RUNNING)
        # Cancelled before the write was queued: nothing happened.
        assert (await journal.command("c1")).tasks[0].state is TaskState.PENDING
        first, second = command.tasks[0].id, command.tasks[1].id
        reported: list[str] = []
        scope_b = anyio.CancelScope()

        async def write(task_id: str, scope: anyio.CancelScope) -> None:
            with scope:
                await journal.update_task(task_id, TaskState.RUNNING)
                reported.append(task_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, first, anyio.CancelScope())
            await anyio.wait_all_tasks_blocked()  # the first write is in its thread
            tg.start_soon(write, second, scope_b)
            await anyio.wait_all_tasks_blocked()  # the second is queued behind it
            scope_b.cancel()
        # Queued, then cancelled: the second write still finished and was reported.
        assert sorted(reported) == [first, second]
        assert {t.state for t in (await journal.command("c1")).tasks} == {TaskState.RUNNING}


async def test_store_errors_are_journal_errors(tmp_path: Path, stores: Stores) -> None:
    async with await stores.store(tmp_path / "j.db") as store:  # type: ignore[attr-defined]
        running = await store.add_command("c", "k", {}, [], [])
        with pytest.raises(ValueError, match="succeeded or failed"):
            await store.finish_command(running, CommandState.ENDING, result=None, error=None)
        with pytest.raises(JournalStateError, match=r"'c' is running, not ending: .* not claimed"):
            await store.finish_command(running, CommandState.FAILED, result=None, error=None)
        first = await store.claim_end("c", max_attempts=3, last_error=None)
        second = await store.claim_end("c", max_attempts=3, last_error=None)
        with pytest.raises(JournalStateError, match="attempt 1 of its end action finished, but"):
            await store.finish_command(first, CommandState.SUCCEEDED, result=None, error=None)
        done = await store.finish_command(second, CommandState.SUCCEEDED, result={}, error=None)
        assert done == await store.get_command("c")
        with pytest.raises(JournalStateError, match="its end was already recorded"):
            await store.finish_command(second, CommandState.SUCCEEDED, result=None, error=None)
        with pytest.raises(TypeError, match=r"params of task 'a' must be a JSON object"):
            await store.add_command(
                "c", "k", {}, [TaskSpec("a", "mem", params={"x": object()})], []
            )
        with pytest.raises(JournalError, match="no task 'nope'"):
            await store.update_tasks([TaskUpdate("nope", TaskState.RUNNING)])
