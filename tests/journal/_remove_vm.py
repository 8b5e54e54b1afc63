"""The crash test's multi-task command: remove a VM with one storage task
per disk, against a backend whose state survives the worker.

The backend is a second SQLite file: the VM and its disks, the removal jobs
(which advance one step per query, like work progressing between polls),
the end action's effects, and a log of every end-action call.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio

from jobctl import Entity
from jobctl.journal import (
    BackendState,
    BackendStatus,
    EndContext,
    TaskSpec,
    TaskState,
    follow_command,
    open_journal,
    recover,
)

COMMAND_ID = "remove-vm1"
BACKEND = "storage"
#: A SIGKILL loses nothing WAL mode has committed, fsync or not ("full" adds
#: survival of power loss, which killing a process cannot test); "normal"
#: keeps each kill point cheap.
SYNCHRONOUS: Final = "normal"

_BACKEND_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (id TEXT PRIMARY KEY, removed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS disks (id TEXT PRIMARY KEY, present INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, disk TEXT NOT NULL, state TEXT NOT NULL, steps INTEGER NOT NULL,
    fail INTEGER NOT NULL, dismissed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS end_calls (
    n INTEGER PRIMARY KEY, command_id TEXT NOT NULL, outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS end_effects (command_id TEXT PRIMARY KEY, outcome TEXT NOT NULL);
"""


def create_backend(workdir: Path, scenario: Mapping[str, Any]) -> None:
    """The VM and its disks, before the command runs (test process)."""
    conn = sqlite3.connect(workdir / "backend.db", isolation_level=None)
    # WAL: each commit survives the worker's SIGKILL without an fsync.
    conn.execute("PRAGMA journal_mode = WAL")
    with conn:
        conn.executescript(_BACKEND_SCHEMA)
        conn.execute("INSERT INTO vms VALUES ('vm1', 0)")
        conn.executemany(
            "INSERT INTO disks VALUES (?, 1)", [(f"d{i}",) for i in range(scenario["disks"])]
        )
    conn.close()


def advance(workdir: Path, steps: int) -> None:
    """Let the backend's running jobs progress while no manager runs."""
    conn = sqlite3.connect(workdir / "backend.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for (job_id,) in conn.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall():
            for _ in range(steps):
                _step(conn, job_id)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _step(conn: sqlite3.Connection, job_id: str) -> None:
    row = conn.execute(
        "SELECT state, steps, fail, disk FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None or row[0] != "running":
        return
    _, steps, fail, disk = row
    if steps > 1:
        conn.execute("UPDATE jobs SET steps = steps - 1 WHERE id = ?", (job_id,))
    elif fail:
        conn.execute("UPDATE jobs SET steps = 0, state = 'failed' WHERE id = ?", (job_id,))
    else:
        conn.execute("UPDATE jobs SET steps = 0, state = 'succeeded' WHERE id = ?", (job_id,))
        conn.execute("UPDATE disks SET present = 0 WHERE id = ?", (disk,))


class FileBackend:
    """The storage backend, in ``backend.db``: a TaskBackend plus the calls
    the flow makes (start a removal, apply the end action's effect)."""

    def __init__(self, workdir: Path) -> None:
        self._conn = sqlite3.connect(workdir / "backend.db", isolation_level=None)
        self._conn.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self._conn.close()

    async def start(self, job_id: str | None, disk: str, steps: int, fail: bool) -> str:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        if job_id is None:  # the backend chooses the id
            (count,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
            job_id = f"job-{count}"
        conn.execute(
            "INSERT INTO jobs (id, disk, state, steps, fail) VALUES (?, ?, 'running', ?, ?)",
            (job_id, disk, steps, int(fail)),
        )
        conn.execute("COMMIT")
        await anyio.lowlevel.checkpoint()
        return job_id

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        found: dict[str, BackendStatus] = {}
        for job_id in backend_ids:
            _step(conn, job_id)
            row = conn.execute(
                "SELECT state FROM jobs WHERE id = ? AND dismissed = 0", (job_id,)
            ).fetchone()
            if row is None:
                continue
            if row[0] == "failed":
                found[job_id] = BackendStatus(BackendState.FAILED, error=f"{job_id} failed")
            else:
                found[job_id] = BackendStatus(BackendState(row[0]), result=None)
        conn.execute("COMMIT")
        await anyio.lowlevel.checkpoint()
        return found

    async def release(self, backend_ids: Sequence[str]) -> None:
        self._conn.executemany(
            "UPDATE jobs SET dismissed = 1 WHERE id = ? AND state != 'running'",
            [(i,) for i in backend_ids],
        )
        await anyio.lowlevel.checkpoint()

    async def end_action(self, ctx: EndContext) -> Mapping[str, Any]:
        """Remove the VM if every disk went; idempotent by the command id."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO end_calls (command_id, outcome, attempt) VALUES (?, ?, ?)",
            (ctx.key, ctx.outcome.value, ctx.attempt),
        )
        fresh = conn.execute(
            "INSERT OR IGNORE INTO end_effects VALUES (?, ?)", (ctx.key, ctx.outcome.value)
        ).rowcount
        if fresh and ctx.outcome.value == "succeeded":
            conn.execute("UPDATE vms SET removed = 1 WHERE id = 'vm1'")
        conn.execute("COMMIT")
        await anyio.lowlevel.checkpoint()
        return {"vm_removed": ctx.outcome.value == "succeeded"}


async def run_command(workdir: Path, scenario: Mapping[str, Any]) -> None:
    """Remove vm1 and its disks: one storage task per disk."""
    backend = FileBackend(workdir)
    assign = scenario["backend_assigns_ids"]
    specs = [
        TaskSpec(
            f"disk-{i}",
            BACKEND,
            backend_id=None if assign else f"rm-d{i}",
            params={"disk": f"d{i}", "steps": scenario["steps"][i], "fail": scenario["fail"][i]},
        )
        for i in range(scenario["disks"])
    ]
    entities = [Entity("vm", "vm1").exclusive()]
    entities += [Entity("disk", f"d{i}").exclusive() for i in range(len(specs))]
    try:
        async with open_journal(workdir / "journal.db", synchronous=SYNCHRONOUS) as journal:
            command = await journal.begin_command(
                "remove_vm", specs, entities=entities, command_id=COMMAND_ID
            )
            for task in command.tasks:
                params = task.params
                if assign:
                    await journal.update_task(task.id, TaskState.STARTING)
                job_id = await backend.start(
                    task.backend_id, params["disk"], params["steps"], params["fail"]
                )
                await journal.update_task(task.id, TaskState.RUNNING, backend_id=job_id)
            await follow_command(journal, COMMAND_ID, {BACKEND: backend}, poll_interval=0)
            await journal.end_command(COMMAND_ID, backend.end_action, retry_delay=0)
    finally:
        backend.close()


async def run_recovery(workdir: Path, scenario: Any = None) -> None:
    backend = FileBackend(workdir)
    try:
        async with open_journal(workdir / "journal.db", synchronous=SYNCHRONOUS) as journal:
            await recover(
                journal,
                backends={BACKEND: backend},
                end_actions={"remove_vm": backend.end_action},
                poll_interval=0,
                retry_delay=0,
            )
    finally:
        backend.close()
