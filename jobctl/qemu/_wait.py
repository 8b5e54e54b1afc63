"""Waiting for QEMU events inside interruptible sections.

A flow never holds the monitor while it waits for a long event: it waits in
``ajob.interruptible()``, where allowed regular jobs (domstats, abort) run.
Between sections it may poll through the monitor (``query-migrate``), so
``dom.info()`` shows progress even when QEMU sends no event for a while.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from jobctl._core._domain import ActiveAsyncJob, MonitorSession
from jobctl._core._errors import JobAbortedError
from jobctl.qemu._progress import TERMINAL_STATUSES
from jobctl.qmp import EventSubscription, QMPEvent

__all__ = ["migration_ended", "wait_in_sections"]

T = TypeVar("T")


def migration_ended(event: QMPEvent) -> str | None:
    """The terminal status (completed, failed, cancelled) a ``MIGRATION``
    event ends its migration with; None for an event that ends none (other
    statuses, events with no status). A ``done`` for :func:`wait_in_sections`."""
    status = event.data.get("status")
    return status if status in TERMINAL_STATUSES else None


async def wait_in_sections(
    ajob: ActiveAsyncJob,
    events: EventSubscription,
    done: Callable[[QMPEvent], T | None],
    *,
    poll: Callable[[MonitorSession], Awaitable[T | None]] | None = None,
    interval: float | Callable[[], float] = math.inf,
    timeout: float | None = None,
) -> tuple[T, JobAbortedError | None]:
    """Wait until an event makes ``done`` return a result, or ``poll`` does.

    Events are awaited inside interruptible sections of ``ajob``; every
    ``interval`` seconds the section is left and ``poll`` runs through the
    job's monitor. ``interval`` may be a function, asked again after each
    event (a flow stops polling while QEMU is known to stall). An abort
    delivered meanwhile does not end the wait: the flow must see its work
    stop (QEMU's event that it was cancelled) before it cleans up, so the
    :class:`JobAbortedError` is returned beside the result. Raises
    :class:`TimeoutError` after ``timeout`` seconds, and whatever the
    subscription raises (the monitor closed).
    """
    every = interval if callable(interval) else lambda: interval
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    aborted: JobAbortedError | None = None
    while True:
        result: T | None = None
        try:
            async with ajob.interruptible():
                entered = anyio.current_time()
                with anyio.CancelScope(deadline=min(deadline, entered + every())) as scope:
                    while result is None:
                        result = done(await events.receive())
                        scope.deadline = min(deadline, entered + every())
        except JobAbortedError as exc:
            aborted = aborted or exc
        if result is not None:
            return result, aborted
        if anyio.current_time() >= deadline:
            raise TimeoutError(f"no result within {timeout:g} s")
        if poll is not None:
            async with ajob.monitor() as mon:
                result = await poll(mon)
            if result is not None:
                return result, aborted
