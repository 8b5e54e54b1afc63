"""An in-memory task backend and small helpers for the journal's tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobctl.journal import BackendState, BackendStatus


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
