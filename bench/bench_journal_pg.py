"""The PostgreSQL journal's numbers, next to SQLite's in the same run.

1. Task state transitions per second (each task PENDING -> RUNNING ->
   SUCCEEDED) through :class:`PostgresJournalStore` and
   :class:`SqliteJournalStore`, from one writer and from 64 concurrent
   writers, against the floor of each database: a bare ``sqlite3`` loop and a
   bare ``psycopg`` loop doing the same single-row SELECT + UPDATE + COMMIT.
2. Recovery time: ``recover()`` over a journal holding 10,000 unfinished
   tasks (2,500 commands of 4 tasks, shaped as in ``bench_journal.py``: a
   quarter each never started, still running, finished while the manager was
   down, and already recorded done), ending every command.

Each repetition measures every case once, alternating which store goes
first, so both see the same load on the machine; the table shows the median
and min-max over repetitions and the ratio PG/SQLite of the medians.

The server is ``jobctl.testing.throwaway_postgres()``: a fresh cluster on a
unix socket with ``fsync=off``, so SQLite runs with ``synchronous=normal``
(no fsync per commit in WAL mode) unless ``--sqlite-sync full``.

Run: ``python bench/bench_journal_pg.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import anyio
import psycopg
from bench_journal import InstantBackend, end_action, fill

from jobctl.journal import (
    Journal,
    PostgresJournalStore,
    SqliteJournalStore,
    TaskSpec,
    TaskState,
    recover,
)
from jobctl.testing import ThrowawayPostgres, throwaway_postgres

Sync = Literal["full", "normal"]
Store = Literal["sqlite", "postgres"]
STORES: tuple[Store, Store] = ("sqlite", "postgres")


@contextmanager
def _timer() -> Iterator[list[float]]:
    took: list[float] = []
    start = time.perf_counter()
    yield took
    took.append(time.perf_counter() - start)


def bare_sqlite(path: Path, tasks: int, sync: Sync) -> float:
    """Transitions per second of a bare sqlite3 loop doing the same commits."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync.upper()}")
        conn.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL)")
        conn.executemany(
            "INSERT INTO tasks VALUES (?, 'pending', 0)", [(str(i),) for i in range(tasks)]
        )
        start = time.perf_counter()
        for state in ("running", "succeeded"):
            for i in range(tasks):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("SELECT state FROM tasks WHERE id = ?", (str(i),)).fetchone()
                conn.execute(
                    "UPDATE tasks SET state = ?, updated = ? WHERE id = ?",
                    (state, time.time(), str(i)),
                )
                conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return 2 * tasks / elapsed


def bare_psycopg(conninfo: str, tasks: int) -> float:
    """Transitions per second of a bare psycopg loop doing the same commits."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "CREATE TABLE tasks"
            " (id TEXT PRIMARY KEY, state TEXT NOT NULL, updated DOUBLE PRECISION)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO tasks VALUES (%s, 'pending', 0)", [(str(i),) for i in range(tasks)]
            )
        conn.commit()
        start = time.perf_counter()
        for state in ("running", "succeeded"):
            for i in range(tasks):
                conn.execute("SELECT state FROM tasks WHERE id = %s FOR UPDATE", (str(i),))
                conn.execute(
                    "UPDATE tasks SET state = %s, updated = %s WHERE id = %s",
                    (state, time.time(), str(i)),
                )
                conn.commit()
        elapsed = time.perf_counter() - start
    return 2 * tasks / elapsed


def fresh_location(store: Store, workdir: Path, pg: ThrowawayPostgres, name: str) -> str:
    """A path to a new SQLite file, or the conninfo of a new PostgreSQL database."""
    if store == "sqlite":
        return str(workdir / f"{name}.db")
    return pg.create_database()


async def open_at(store: Store, location: str, sync: Sync) -> Journal:
    """A journal at ``location`` (see :func:`fresh_location`)."""
    if store == "sqlite":
        return Journal(await SqliteJournalStore.open(location, synchronous=sync))
    return Journal(await PostgresJournalStore.open(location))


async def transitions(journal: Journal, tasks: int, writers: int) -> float:
    """Transitions per second through ``journal``, from ``writers`` tasks."""
    ids: list[str] = []
    for c in range(0, tasks, 100):
        specs = [TaskSpec(f"t{i}", "b") for i in range(c, min(c + 100, tasks))]
        command = await journal.begin_command("bench", specs)
        ids.extend(t.id for t in command.tasks)

    async def writer(mine: Sequence[str]) -> None:
        for task_id in mine:
            await journal.update_task(task_id, TaskState.RUNNING)
        for task_id in mine:
            await journal.update_task(task_id, TaskState.SUCCEEDED)

    with _timer() as took:
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, ids[w::writers])
    return 2 * tasks / took[0]


async def recovery(store: Store, location: str, sync: Sync, commands: int) -> float:
    """Seconds of ``recover()`` over ``commands`` unfinished commands of 4
    tasks, left by a journal closed without ending them (the open is not
    timed)."""
    async with await open_at(store, location, sync) as dead:
        running, done = await fill(dead, commands)
    async with await open_at(store, location, sync) as journal:
        with _timer() as took:
            report = await recover(
                journal,
                backends={"storage": InstantBackend(set(running), set(done))},
                end_actions={"remove_vm": end_action},
                poll_interval=0,
            )
        assert not await journal.unfinished_commands()
    assert len(report.commands) == commands
    assert len(report.failed) == len(report.adopted) == commands
    return took[0]


async def transitions_at(
    store: Store, location: str, sync: Sync, tasks: int, writers: int
) -> float:
    async with await open_at(store, location, sync) as journal:
        return await transitions(journal, tasks, writers)


def summary(values: Sequence[float], unit: str) -> str:
    median = statistics.median(values)
    if unit == "s":
        return f"{median:9.3f} ({min(values):.3f}-{max(values):.3f})"
    return f"{median:9.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, help="rounds of every case (5)")
    parser.add_argument("--tasks", type=int, help="tasks per transition run (1000)")
    parser.add_argument(
        "--recovery-tasks", type=int, default=10_000, help="unfinished tasks to recover"
    )
    parser.add_argument("--sqlite-sync", choices=("full", "normal"), default="normal")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--quick", action="store_true", help="defaults of 3 repetitions of 200 tasks"
    )
    args = parser.parse_args()
    repetitions: int = (3 if args.quick else 5) if args.repetitions is None else args.repetitions
    tasks: int = (200 if args.quick else 1000) if args.tasks is None else args.tasks
    commands: int = args.recovery_tasks // 4
    sync: Sync = args.sqlite_sync
    backend: str = args.backend
    if repetitions < 1 or tasks < 1 or commands < 1:
        parser.error("--repetitions, --tasks and --recovery-tasks // 4 must be at least 1")

    results: dict[tuple[str, Store], list[float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-journal-pg-"))
    try:
        with throwaway_postgres(port=5499) as pg:
            for rep in range(repetitions):
                order = STORES if rep % 2 == 0 else STORES[::-1]
                for store in order:
                    if store == "sqlite":
                        rate = bare_sqlite(workdir / f"bare-{rep}.db", tasks, sync)
                    else:
                        rate = bare_psycopg(pg.create_database(), tasks)
                    results.setdefault(("bare loop", store), []).append(rate)
                for writers in (1, 64):
                    for store in order:
                        where = fresh_location(store, workdir, pg, f"t{writers}-{rep}")
                        rate = anyio.run(
                            transitions_at, store, where, sync, tasks, writers, backend=backend
                        )
                        label = f"journal, {writers} writer{'s' if writers > 1 else ''}"
                        results.setdefault((label, store), []).append(rate)
                for store in order:
                    where = fresh_location(store, workdir, pg, f"r-{rep}")
                    took = anyio.run(recovery, store, where, sync, commands, backend=backend)
                    results.setdefault(("recover()", store), []).append(took)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{repetitions} repetitions, {backend}, SQLite synchronous={sync},"
        " PostgreSQL throwaway server (unix socket, fsync=off), median (min-max)"
    )
    print()
    print(f"Task state transitions per second ({tasks} tasks x 2 transitions)")
    print(
        f"{'what':22} {'SQLite':>24} {'PostgreSQL':>24} {'PG/SQLite':>9}"
        f" {'SQLite/bare':>11} {'PG/bare':>8}"
    )
    floor = {store: statistics.median(results[("bare loop", store)]) for store in STORES}
    for what in ("bare loop", "journal, 1 writer", "journal, 64 writers"):
        lite, post = (statistics.median(results[(what, s)]) for s in STORES)
        print(
            f"{what:22} {summary(results[(what, 'sqlite')], '/s'):>24}"
            f" {summary(results[(what, 'postgres')], '/s'):>24} {post / lite:9.2f}"
            f" {lite / floor['sqlite']:11.2f} {post / floor['postgres']:8.2f}"
        )
    print()
    print(f"Recovery of {commands * 4:,} unfinished tasks ({commands:,} commands), seconds")
    lite, post = (statistics.median(results[("recover()", s)]) for s in STORES)
    print(f"{'what':22} {'SQLite':>24} {'PostgreSQL':>24} {'PG/SQLite':>9}")
    print(
        f"{'recover()':22} {summary(results[('recover()', 'sqlite')], 's'):>24}"
        f" {summary(results[('recover()', 'postgres')], 's'):>24} {post / lite:9.2f}"
    )


if __name__ == "__main__":
    main()
