"""Kill points: every SQL statement and QMP command a crash-test worker runs
is one; the worker kills itself with SIGKILL just before the chosen one."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
from collections.abc import Mapping
from typing import Any

_points = itertools.count(1)
_kill_at: int | None = None


def tick() -> None:
    """One more point; SIGKILL if it is the chosen one."""
    if next(_points) == _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def passed() -> int:
    """How many points were passed."""
    return next(_points) - 1


def install(kill_at: int | None) -> None:
    """Count every statement of every SQLite connection opened from now on."""
    global _kill_at
    _kill_at = kill_at
    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(lambda _sql: tick())
        return conn

    sqlite3.connect = traced_connect  # type: ignore[assignment]


class KillPointMonitor:
    """A monitor whose every command is a kill point (before it is sent)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        tick()
        return await self.inner.execute(command, arguments)
