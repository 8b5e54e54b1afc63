"""The running event loop's own primitives, for the paths that run per command.

anyio's front ends look the backend up on every call (sniffio, then a
dispatch), and its :class:`anyio.Event` is a wrapper made through that
lookup. The few paths that run once per QMP command or per job (the QMP
client's reply events and socket waits, the core's task identity) take the
backend's own objects instead: trio's when trio runs, asyncio's (or anyio's,
where asyncio has no equivalent) otherwise. They behave as anyio's do under
anyio's cancel scopes, which on either backend deliver cancellation through
the backend's own machinery; the clock and checkpoints are the very
functions anyio's front ends call. trio is never imported here: it is used only
when it is the running library, so it is loaded already.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, final

import anyio
import anyio.lowlevel
import attrs
import sniffio

__all__ = ["Native", "NativeEvent", "current_task_key", "native"]


class NativeEvent(Protocol):
    """What trio's and asyncio's events both are: set once, waited on."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


@final
@attrs.frozen
class Native:
    """One backend's primitives."""

    #: A new, unset event.
    event: Callable[[], NativeEvent]
    #: Wait until a socket is readable (a checkpoint); one waiter per socket.
    #: A socket closed under the wait raises :class:`anyio.ClosedResourceError`,
    #: on either backend, as :func:`anyio.wait_readable` does.
    wait_readable: Callable[[socket.socket], Awaitable[None]]
    #: The calling task, as an identity (see :func:`current_task_key`).
    current_task: Callable[[], object]
    #: The loop's clock (:func:`anyio.current_time`).
    current_time: Callable[[], float]
    #: :func:`anyio.lowlevel.checkpoint_if_cancelled`
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    #: :func:`anyio.lowlevel.cancel_shielded_checkpoint`
    cancel_shielded_checkpoint: Callable[[], Awaitable[None]]


def _asyncio_task() -> object:
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - only outside any task
        raise RuntimeError("jobctl must be called from inside a task")
    return task


_ASYNCIO = Native(
    event=asyncio.Event,
    wait_readable=anyio.wait_readable,
    current_task=_asyncio_task,
    current_time=anyio.current_time,
    checkpoint_if_cancelled=anyio.lowlevel.checkpoint_if_cancelled,
    cancel_shielded_checkpoint=anyio.lowlevel.cancel_shielded_checkpoint,
)
_found: dict[str, Native] = {"asyncio": _ASYNCIO}


def native() -> Native:
    """The running backend's primitives (looked up by name, then cached)."""
    library = sniffio.current_async_library()
    found = _found.get(library)
    if found is None:
        if library != "trio":
            raise RuntimeError(f"jobctl runs on trio or asyncio, not {library!r}")
        trio = sys.modules["trio"]
        lowlevel = trio.lowlevel
        closed = trio.ClosedResourceError

        async def wait_readable(sock: socket.socket) -> None:
            try:
                await lowlevel.wait_readable(sock)
            except closed as exc:  # anyio's error, as anyio's own front end raises
                raise anyio.ClosedResourceError(str(exc)) from exc

        found = _found[library] = Native(
            event=trio.Event,
            wait_readable=wait_readable,
            current_task=lowlevel.current_task,
            current_time=trio.current_time,
            checkpoint_if_cancelled=lowlevel.checkpoint_if_cancelled,
            cancel_shielded_checkpoint=lowlevel.cancel_shielded_checkpoint,
        )
    return found


def current_task_key() -> object:
    """An object that identifies the calling task for as long as it runs."""
    return native().current_task()
