"""The PostgreSQL store's own behaviour: its schema, several stores on one
database, a server that is gone, bad options, and the throwaway server.

The store contract (the journal's guarantees) runs on it through the
``stores`` fixture in test_journal.py, test_recovery.py and test_store.py."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from jobctl.journal import (
    POSTGRES_SCHEMA_VERSION,
    CommandState,
    JournalError,
    JournalSchemaError,
    JournalStateError,
    PostgresJournalStore,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from jobctl.testing import ThrowawayPostgres, throwaway_postgres

pytestmark = pytest.mark.anyio


def sql(conninfo: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


async def fresh(server: ThrowawayPostgres) -> str:
    return await anyio.to_thread.run_sync(server.create_database)


async def test_makes_its_schema_once_and_keeps_the_data(postgres_server: ThrowawayPostgres) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        journal_id = store.journal_id
        await store.add_command("c1", "k", {"vm": "vm1"}, [TaskSpec("a", "mem")], [])
    assert sql(conninfo, "SELECT version FROM jobctl_meta") == [(POSTGRES_SCHEMA_VERSION,)]
    async with await PostgresJournalStore.open(conninfo) as store:
        assert store.journal_id == journal_id
        command = await store.get_command("c1")
        assert (command.data, command.tasks[0].name) == ({"vm": "vm1"}, "a")


async def test_concurrent_creators_make_one_schema(postgres_server: ThrowawayPostgres) -> None:
    conninfo = await fresh(postgres_server)
    stores: list[PostgresJournalStore] = []

    async def open_one() -> None:
        stores.append(await PostgresJournalStore.open(conninfo))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    try:
        assert len({store.journal_id for store in stores}) == 1
    finally:
        for store in stores:
            await store.aclose()


async def test_a_newer_or_foreign_schema_is_refused_and_left_unchanged(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo):
        pass
    sql(conninfo, f"UPDATE jobctl_meta SET version = {POSTGRES_SCHEMA_VERSION + 1}")
    with pytest.raises(JournalSchemaError, match=r"schema version 3, newer than this jobctl's 2"):
        await PostgresJournalStore.open(conninfo)
    assert sql(conninfo, "SELECT version FROM jobctl_meta") == [(POSTGRES_SCHEMA_VERSION + 1,)]
    # A database with some of the tables but no meta row: not ours to reset.
    other = await fresh(postgres_server)
    sql(other, "CREATE TABLE jobctl_commands (x INTEGER)")
    with pytest.raises(JournalSchemaError, match="no jobctl_meta: not a jobctl journal"):
        await PostgresJournalStore.open(other)
    assert sql(
        other, "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'jobctl%'"
    ) == [(1,)]


async def test_two_stores_on_one_database_never_both_win(
    postgres_server: ThrowawayPostgres,
) -> None:
    # Two managers' stores race every task of a command from pending to
    # running, and both claim its end: each transition has one winner.
    conninfo = await fresh(postgres_server)
    first = await PostgresJournalStore.open(conninfo, max_connections=8)
    second = await PostgresJournalStore.open(conninfo, max_connections=8)
    try:
        specs = [TaskSpec(f"t{i}", "mem") for i in range(40)]
        command = await first.add_command("c1", "k", {}, specs, [])
        wins: list[str] = []
        refusals: list[str] = []

        async def move(store: PostgresJournalStore, task_id: str, state: TaskState) -> None:
            try:
                await store.update_tasks([TaskUpdate(task_id, state)])
            except JournalStateError:
                refusals.append(task_id)
            else:
                wins.append(task_id)

        for state in (TaskState.RUNNING, TaskState.SUCCEEDED):
            async with anyio.create_task_group() as tg:
                for task in command.tasks:
                    for store in (first, second):
                        tg.start_soon(move, store, task.id, state)
        assert sorted(wins) == sorted([t.id for t in command.tasks] * 2)
        assert len(refusals) == 80
        claims = [await first.claim_end("c1", max_attempts=3, last_error=None)]
        claims.append(await second.claim_end("c1", max_attempts=3, last_error=None))
        assert [c.end_attempts for c in claims] == [1, 2]
        # The first claim is stale now: only the latest one may finish.
        with pytest.raises(JournalStateError, match="attempt 2 holds the claim"):
            await first.finish_command(claims[0], CommandState.SUCCEEDED, result={}, error=None)
        done = await second.finish_command(claims[1], CommandState.SUCCEEDED, result={}, error=None)
        assert done.state is CommandState.SUCCEEDED
        assert (await first.get_command("c1")).state is CommandState.SUCCEEDED
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_server_that_is_gone_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    nowhere = f"host={tmp_path} port=5999 dbname=jobs"
    with pytest.raises(JournalError, match=r"journal postgresql database 'jobs' .*cannot be"):
        await PostgresJournalStore.open(nowhere, timeout=2.0)
    # A server that stops while a store uses it: the next call fails, typed.
    with throwaway_postgres() as server:
        store = await PostgresJournalStore.open(await fresh(server), timeout=2.0)
        await store.add_command("c1", "k", {}, [], [])
    started = time.monotonic()
    with pytest.raises(JournalError, match="journal postgresql database"):
        await store.get_command("c1")
    assert time.monotonic() - started < 30  # bounded by the timeout, not hung
    await store.aclose()


async def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="bad PostgreSQL connection string"):
        await PostgresJournalStore.open("host= = =")
    with pytest.raises(ValueError, match="min_connections"):
        await PostgresJournalStore.open("dbname=x", min_connections=0)
    with pytest.raises(ValueError, match="timeout must be positive"):
        await PostgresJournalStore.open("dbname=x", timeout=0)


def test_the_throwaway_server_listens_on_its_socket_only_and_leaves_nothing() -> None:
    with throwaway_postgres() as server:
        directory = server.directory
        sockets = [name for name in os.listdir(server.socket_dir) if name.startswith(".s.PGSQL")]
        assert f".s.PGSQL.{server.port}" in sockets
        assert sql(server.conninfo(), "SHOW listen_addresses") == [("",)]
        conninfo = server.create_database("mine")
        assert sql(conninfo, "SELECT current_database()") == [("mine",)]
    assert not directory.exists()


#: A process that makes a throwaway server, says where, and waits to be killed.
OWNER = """\
import sys
from jobctl.testing import throwaway_postgres
with throwaway_postgres() as server:
    print(server.directory, flush=True)
    sys.stdin.read()
"""


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def test_a_killed_owner_leaves_no_server_and_no_directory() -> None:
    """SIGKILL gives the owner no ``finally``: its watchdog stops the server
    and removes the cluster's directory (each process's end is awaited on a
    pidfd, not polled)."""
    with subprocess.Popen(
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            directory = Path(owner.stdout.readline().strip())
            assert directory.name.startswith("jobctl-pg-"), directory
            postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
            watchdogs = [
                pid
                for pid in _processes_naming(str(directory))
                if pid != postmaster and b"-I" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            assert len(watchdogs) == 1, watchdogs
            ends = [os.pidfd_open(pid) for pid in (postmaster, watchdogs[0])]
        finally:
            owner.kill()
    try:
        for end in ends:
            ready, _, _ = select.select([end], [], [], 120)
            assert ready, "the server or its watchdog outlived the killed owner by 120 s"
    finally:
        for end in ends:
            os.close(end)
    assert not directory.exists()
