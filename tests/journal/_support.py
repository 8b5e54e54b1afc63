"""An in-memory task backend and small helpers for the journal's tests."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from jobctl.journal import (
    BackendState,
    BackendStatus,
    Journal,
    JournalStore,
    PostgresJournalStore,
    SqliteJournalStore,
)
from jobctl.journal._rows import ASYNC_JOBS, COMMANDS, ENTITIES, TASKS, RowContext
from jobctl.testing import ThrowawayPostgres


class MemoryBackend:
    """Jobs in a dict: ``start``, then ``finish`` them by hand; counts calls."""

    def __init__(self) -> None:
        self.jobs: dict[str, BackendStatus] = {}
        self.queries: list[tuple[str, ...]] = []
        self.released: list[str] = []

    def start(self, backend_id: str) -> None:
        assert backend_id not in self.jobs, backend_id
        self.jobs[backend_id] = BackendStatus(BackendState.RUNNING)

    def finish(self, backend_id: str, *, error: str | None = None, **result: Any) -> None:
        assert self.jobs[backend_id].state is BackendState.RUNNING
        if error is None:
            self.jobs[backend_id] = BackendStatus(BackendState.SUCCEEDED, result=result)
        else:
            self.jobs[backend_id] = BackendStatus(BackendState.FAILED, error=error)

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        self.queries.append(tuple(backend_ids))
        return {i: self.jobs[i] for i in backend_ids if i in self.jobs}

    async def release(self, backend_ids: Sequence[str]) -> None:
        for backend_id in backend_ids:
            if backend_id in self.jobs:  # unknown ids are ignored (the contract)
                assert self.jobs[backend_id].state is not BackendState.RUNNING
                del self.jobs[backend_id]
                self.released.append(backend_id)


def raw(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the journal file with a plain connection."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def resum(path: Path, sql: str, params: Sequence[Any] = ()) -> None:
    """Run ``sql`` with CHECK constraints off, then give every row a valid
    checksum again: a row that breaks the schema's rules, as a buggy writer
    that bypassed the store would leave it (only the store's own rules can
    catch it)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("BEGIN")
        conn.execute(sql, params)
        (journal_id,) = conn.execute("SELECT journal_id FROM meta").fetchone()
        ctx = RowContext(str(path), journal_id)
        for table in (COMMANDS, TASKS, ENTITIES, ASYNC_JOBS):
            where = " AND ".join(f"{name} = ?" for name in table.key)
            rows = conn.execute(f"SELECT {', '.join(table.names)} FROM {table.name}").fetchall()
            for values in rows:
                row = dict(zip(table.names, values, strict=True))
                crc = ctx.encode(table, row)[-1]
                conn.execute(
                    f"UPDATE {table.name} SET crc = ? WHERE {where}", (crc, *ctx.key_of(table, row))
                )
        conn.execute("COMMIT")
    finally:
        conn.close()


@attrs.frozen
class Stores:
    """Opens journals on one kind of store. A journal is named by a path: on
    SQLite the file, on PostgreSQL a database made for that path on first
    use, so reopening the same path reaches the same journal."""

    kind: str
    server: ThrowawayPostgres | None
    databases: dict[str, str] = attrs.field(factory=dict)

    async def store(self, path: Path) -> JournalStore:
        if self.server is None:
            return await SqliteJournalStore.open(path)
        key = str(path)
        if key not in self.databases:
            self.databases[key] = await anyio.to_thread.run_sync(self.server.create_database)
        return await PostgresJournalStore.open(self.databases[key])

    @contextlib.asynccontextmanager
    async def journal(self, path: Path) -> AsyncIterator[Journal]:
        store = await self.store(path)
        try:
            async with Journal(store) as journal:
                yield journal
        finally:
            await store.aclose()
