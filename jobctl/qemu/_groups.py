"""Task groups whose host body's error leaves as itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["unwrap_single"]


@asynccontextmanager
async def unwrap_single() -> AsyncIterator[None]:
    """Let a task group's only exception leave as itself.

    anyio's task groups wrap every exception in an :class:`ExceptionGroup`.
    The background tasks of jobctl.qemu's hosts never raise, so a group with
    one exception holds the error of the ``async with`` body, which is what
    the caller should see (a :class:`MigrationError`, not a group of one).
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
