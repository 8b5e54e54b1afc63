"""Task groups whose one error leaves as itself, not as a group of one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["unwrap_single"]


@asynccontextmanager
async def unwrap_single() -> AsyncIterator[None]:
    """Let a task group's only exception leave as itself.

    anyio's task groups wrap every exception in an :class:`ExceptionGroup`.
    Where the background tasks never raise (jobctl.qmp's reader and writer,
    jobctl.qemu's hosts), a group with one exception holds the error of the
    ``async with`` body, which is what the caller should see (a
    ``MigrationError`` or ``QMPClosedError``, not a group of one).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        context = error.__context__
        try:
            raise error
        finally:
            error.__context__ = context
            del error, context
