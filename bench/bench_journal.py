"""The task journal's numbers.

1. Task state transitions per second (each task PENDING -> RUNNING ->
   SUCCEEDED), one at a time and from 64 concurrent writers, against the
   baseline of the same UPDATE-and-COMMIT loop on a bare ``sqlite3``
   connection in the same mode, in one run. ``synchronous=full`` (the
   default: an fsync per commit) and ``normal`` (survives a killed process,
   not a power loss).
2. Recovery time for 10,000 journaled tasks (2,500 commands of 4 tasks, a
   quarter each never started, still running, finished while the manager was
   down, and already recorded done), ending every command through its end
   action, against the baseline of reading every row of the journal once.
3. What the integrity check costs when a journal opens (``PRAGMA
   integrity_check``, the default, and ``quick_check`` for comparison), per
   MiB and per 10,000 tasks, against the same open without the check.

Run: ``python bench/bench_journal.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from _spread import ratios, spread

from jobctl import Entity
from jobctl.journal import (
    BackendState,
    BackendStatus,
    EndContext,
    Journal,
    SqliteJournalStore,
    TaskSpec,
    TaskState,
    TaskUpdate,
    _schema,
    open_journal,
    recover,
)

Sync = Literal["full", "normal"]


def copy_journal(source: Path, target: Path) -> None:
    """A closed journal is its file and its seal."""
    shutil.copy(source, target)
    shutil.copy(f"{source}-seal", f"{target}-seal")


def baseline_transitions(path: Path, tasks: int, sync: Sync) -> float:
    """Transitions per second of a bare sqlite3 loop doing the same writes."""
    conn = sqlite3.connect(path, isolation_level=None)
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
                "UPDATE tasks SET state = ?, updated = ? WHERE id = ?", (state, time.time(), str(i))
            )
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return 2 * tasks / elapsed


async def journal_transitions(path: Path, tasks: int, sync: Sync, writers: int) -> float:
    """Transitions per second through the journal, from ``writers`` tasks."""
    async with open_journal(path, synchronous=sync) as journal:
        ids: list[str] = []
        for c in range(0, tasks, 100):
            specs = [TaskSpec(f"t{i}", "b") for i in range(c, min(c + 100, tasks))]
            command = await journal.begin_command("bench", specs)
            ids.extend(t.id for t in command.tasks)
        start = time.perf_counter()

        async def writer(mine: Sequence[str]) -> None:
            for task_id in mine:
                await journal.update_task(task_id, TaskState.RUNNING)
            for task_id in mine:
                await journal.update_task(task_id, TaskState.SUCCEEDED)

        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, ids[w::writers])
        return 2 * tasks / (time.perf_counter() - start)


class InstantBackend:
    """Answers at once; every job it runs ends at the first follow poll."""

    def __init__(self, running: set[str], done: set[str]) -> None:
        self.running = running
        self.done = done

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        await anyio.lowlevel.checkpoint()
        found = {}
        for backend_id in backend_ids:
            if backend_id in self.running:
                found[backend_id] = BackendStatus(BackendState.RUNNING)
                self.running.discard(backend_id)
                self.done.add(backend_id)
            elif backend_id in self.done:
                found[backend_id] = BackendStatus(BackendState.SUCCEEDED)
        return found

    async def release(self, backend_ids: Sequence[str]) -> None:
        await anyio.lowlevel.checkpoint()


async def fill(journal: Journal, commands: int) -> tuple[set[str], set[str]]:
    """Fill ``journal`` as a manager leaves it when it dies with 4 tasks per
    command in flight (a quarter each never started, still running, finished
    while the manager was down, already recorded done); the backend ids still
    running and those finished."""
    running: set[str] = set()
    done: set[str] = set()
    limit = anyio.CapacityLimiter(64)

    async def one(c: int) -> None:
        async with limit:
            specs = [TaskSpec(f"disk{i}", "storage", backend_id=f"j{c}-{i}") for i in range(4)]
            entities = [Entity("vm", f"vm{c % 100}").exclusive()]
            entities += [Entity("disk", f"vm{c}-disk{i}").exclusive() for i in range(4)]
            command = await journal.begin_command(
                "remove_vm", specs, entities=entities, command_id=f"c{c}"
            )
            _never_started, still, finished, recorded = command.tasks
            updates = [TaskUpdate(t.id, TaskState.RUNNING) for t in (still, finished, recorded)]
            updates.append(TaskUpdate(recorded.id, TaskState.SUCCEEDED))
            await journal.update_tasks(updates)
            running.add(f"j{c}-1")
            done.update((f"j{c}-2", f"j{c}-3"))

    async with anyio.create_task_group() as tg:
        for c in range(commands):
            tg.start_soon(one, c)
    return running, done


async def populate(path: Path, commands: int) -> tuple[set[str], set[str]]:
    """:func:`fill` on a new journal file at ``path``."""
    async with open_journal(path, synchronous="normal") as journal:
        return await fill(journal, commands)


async def end_action(ctx: EndContext) -> Mapping[str, Any]:
    await anyio.lowlevel.checkpoint()
    return {"ok": True}


async def time_recovery(path: Path, running: set[str], done: set[str]) -> float:
    start = time.perf_counter()
    async with open_journal(path) as journal:
        report = await recover(
            journal,
            backends={"storage": InstantBackend(set(running), set(done))},
            end_actions={"remove_vm": end_action},
            poll_interval=0,
        )
        assert not await journal.unfinished_commands()
        assert len(report.commands) == len(running)
        assert len(report.failed) == len(report.adopted) == len(running)
    return time.perf_counter() - start


def time_scan(path: Path) -> float:
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT * FROM tasks").fetchall()
    rows += conn.execute("SELECT * FROM commands").fetchall()
    rows += conn.execute("SELECT * FROM entities").fetchall()
    conn.close()
    assert rows
    return time.perf_counter() - start


async def time_open(path: Path, rounds: int) -> list[float]:
    """Seconds of each ``SqliteJournalStore.open`` + ``aclose``."""
    took = []
    for _ in range(rounds):
        start = time.perf_counter()
        store = await SqliteJournalStore.open(path)
        await store.aclose()
        took.append(time.perf_counter() - start)
    return took


def show_open_cost(path: Path, tasks: int, rounds: int) -> None:
    mib = path.stat().st_size / 2**20
    print(f"Opening a journal of {tasks:,} tasks ({mib:.1f} MiB): the integrity check")
    print(
        f"{'what':40} {'seconds':>8} {'ms/MiB':>7} {'ms/10k':>7} {'vs none':>8}"
        f"  {'ms, median (min-max) of the opens':>34}"
    )
    default = _schema.INTEGRITY_PRAGMA
    try:
        bare = 0.0
        for label, pragma in [
            ("open + close, no check", None),
            ("open + close, quick_check", "quick_check"),
            ("open + close, integrity_check (default)", "integrity_check"),
        ]:
            _schema.INTEGRITY_PRAGMA = pragma
            times = anyio.run(time_open, path, rounds)
            took = statistics.median(times)
            bare = bare or took
            check_ms = (took - bare) * 1000
            print(
                f"{label:40} {took:8.4f} {check_ms / mib:7.1f} {check_ms * 10_000 / tasks:7.1f}"
                f" {took / bare:8.2f}  {spread(times, scale=1e3, digits=1):>34}"
            )
    finally:
        _schema.INTEGRITY_PRAGMA = default


def baseline_entity_query(path: Path, n: int) -> float:
    conn = sqlite3.connect(path)
    start = time.perf_counter()
    for i in range(n):
        conn.execute(
            "SELECT command_id FROM entities WHERE type = ? AND id = ? AND active = 1",
            ("vm", f"vm{i % 100}"),
        ).fetchall()
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


async def journal_entity_queries(path: Path, n: int, readers: int) -> float:
    async with open_journal(path) as journal:
        await journal.begin_command("stats", [], entities=[Entity("vm", "vm7").shared()])
        assert await journal.entity_busy("vm", "vm7")
        assert not await journal.entity_busy("vm", "vm8")
        start = time.perf_counter()

        async def reader(k: int) -> None:
            for i in range(k, n, readers):
                await journal.entity_busy("vm", f"vm{i % 100}")

        async with anyio.create_task_group() as tg:
            for k in range(readers):
                tg.start_soon(reader, k)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer tasks, fewer rounds")
    parser.add_argument("--repetitions", type=int, default=None, help="interleaved rounds (5)")
    args = parser.parse_args()
    tasks = 200 if args.quick else 1000
    commands = 500 if args.quick else 2500
    reps = args.repetitions or (2 if args.quick else 5)
    workdir = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    try:
        print(
            f"{reps} interleaved repetitions (every case once per repetition);"
            " median (min-max) over repetitions, ratios taken per repetition"
        )
        print()
        print(f"Task state transitions per second ({tasks} tasks x 2 transitions)")
        rates: dict[tuple[str, str, str], list[float]] = {}
        for rep in range(reps):
            for sync in ("full", "normal"):
                bare = baseline_transitions(workdir / f"bare-{sync}-{rep}.db", tasks, sync)
                rates.setdefault((sync, "bare sqlite3 loop", "-"), []).append(bare)
                for backend in ("asyncio", "trio") if rep % 2 == 0 else ("trio", "asyncio"):
                    for writers in (1, 64):
                        path = workdir / f"j-{sync}-{backend}-{writers}-{rep}.db"
                        rate = anyio.run(
                            journal_transitions, path, tasks, sync, writers, backend=backend
                        )
                        label = f"journal, {writers} writer{'s' if writers > 1 else ''}"
                        rates.setdefault((sync, label, backend), []).append(rate)
        print(f"{'mode':8} {'writer':20} {'backend':8} {'per s':>24} {'vs bare':>20}")
        for (sync, label, backend), values in sorted(rates.items()):
            bare_values = rates[(sync, "bare sqlite3 loop", "-")]
            print(
                f"{sync:8} {label:20} {backend:8} {spread(values, digits=0):>24}"
                f" {spread(ratios(values, bare_values), unit='x'):>20}"
            )

        print()
        print(f"Recovery of {commands * 4:,} journaled tasks ({commands:,} commands)")
        seed = workdir / "seed.db"
        running, done = anyio.run(populate, seed, commands)
        scans: list[float] = []
        took: dict[str, list[float]] = {"asyncio": [], "trio": []}
        for rep in range(reps):
            for backend in ("asyncio", "trio") if rep % 2 == 0 else ("trio", "asyncio"):
                copy = workdir / f"recover-{backend}.db"
                copy_journal(seed, copy)
                if backend == "asyncio":
                    scans.append(time_scan(copy))
                took[backend].append(anyio.run(time_recovery, copy, running, done, backend=backend))
        print(f"{'what':34} {'backend':8} {'seconds':>22} {'vs scan':>20}")
        print(f"{'baseline: read every row once':34} {'-':8} {spread(scans, digits=3):>22}")
        for backend, values in took.items():
            what = "recover() to every command ended"
            print(
                f"{what:34} {backend:8} {spread(values, digits=3):>22}"
                f" {spread(ratios(values, scans), digits=1, unit='x'):>20}"
            )
        print()
        opened = workdir / "open.db"
        copy_journal(seed, opened)
        show_open_cost(opened, commands * 4, 5 if args.quick else 15)
        print()
        queries = 500 if args.quick else 2000
        print(f"'Does this entity have unfinished commands?' ({commands:,} commands in history)")
        print(f"{'what':40} {'backend':8} {'per s':>9} {'vs bare':>8}")
        bare = baseline_entity_query(copy, queries)
        print(f"{'bare sqlite3 query':40} {'-':8} {bare:9.0f} {1.0:8.2f}")
        for readers in (1, 16):
            rate = anyio.run(journal_entity_queries, copy, queries, readers)
            what = f"journal.entity_busy, {readers} reader{'s' if readers > 1 else ''}"
            print(f"{what:40} {'asyncio':8} {rate:9.0f} {rate / bare:8.2f}")
        stats_path = workdir / "stats.db"
        anyio.run(_show_batching, stats_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _show_batching(path: Path) -> None:
    store = await SqliteJournalStore.open(path)
    async with Journal(store) as journal:
        command = await journal.begin_command("k", [TaskSpec(f"t{i}", "b") for i in range(256)])
        async with anyio.create_task_group() as tg:
            for task in command.tasks:
                tg.start_soon(journal.update_task, task.id, TaskState.RUNNING)
        stats = store.statistics()
    print()
    print(
        f"Group commit: 256 concurrent updates took {stats.transactions - 1} transactions"
        f" (largest batch {stats.largest_batch})"
    )


if __name__ == "__main__":
    main()
