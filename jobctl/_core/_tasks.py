"""Which task is running: a cheap, backend-neutral identity for the current task."""

from __future__ import annotations

import asyncio
import sys

import sniffio

__all__ = ["current_task_key"]


def current_task_key() -> object:
    """An object that identifies the calling task for as long as it runs."""
    if sniffio.current_async_library() == "trio":
        # trio is loaded (we run under it); the core does not import it itself.
        return sys.modules["trio"].lowlevel.current_task()
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - only outside any task
        raise RuntimeError("jobctl must be called from inside a task")
    return task
