"""Which event loop the feed runs in, and what it needs there.

The feed's logic is written on anyio and runs in trio and in asyncio. Only the
websocket protocol's I/O differs: in trio it is trio-websocket (the ``trio``
extra), in asyncio wsproto over anyio streams (the ``feed`` extra). Either is
imported when a connection is first served, so that an asyncio application
needs neither trio nor trio-websocket installed.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from types import ModuleType
from typing import Any, Final

__all__ = [
    "DISTRIBUTION",
    "ConnectionGone",
    "FeedBackendError",
    "current_backend",
    "receive_some",
    "require",
    "send_all",
]

#: The distribution's name, as ``pip install`` wants it.
DISTRIBUTION: Final = "virt-jobctl"


class FeedBackendError(RuntimeError):
    """The feed was used where it cannot run: outside an event loop, in an
    event loop it does not support, or without an optional package it needs
    (the message names the extra to install)."""


def current_backend() -> str:
    """``"trio"`` or ``"asyncio"``: the event loop running the caller."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise FeedBackendError(
            "the feed must run inside an event loop: trio, or asyncio (e.g. through anyio.run)"
        ) from None
    return "asyncio"


def require(module: str, *, extra: str, why: str) -> ModuleType:
    """Import ``module``, or raise :class:`FeedBackendError` naming ``extra``."""
    if sys.modules.get(module, ...) is None:  # blocked (e.g. by a test)
        found = None
    else:
        try:
            found = importlib.import_module(module)
        except ImportError:
            found = None
    if found is None:
        raise FeedBackendError(
            f"{why} needs {module.split('.')[0]}, which is not installed: "
            f"pip install '{DISTRIBUTION}[{extra}]'"
        )
    return found


class ConnectionGone(Exception):
    """The websocket connection ended (closed by either side, or cut)."""


def _broken_errors() -> tuple[type[BaseException], ...]:
    import anyio

    errors: tuple[type[BaseException], ...] = (
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
    )
    trio = sys.modules.get("trio")
    if trio is not None:
        errors += (trio.BrokenResourceError, trio.ClosedResourceError)
    return errors


async def receive_some(stream: Any, max_bytes: int) -> bytes:
    """Bytes from a trio or an anyio byte stream; ``b""`` at its end;
    :class:`ConnectionGone` if the stream is broken or closed."""
    import anyio

    try:
        if hasattr(stream, "receive_some"):
            return bytes(await stream.receive_some(max_bytes))
        return bytes(await stream.receive(max_bytes))
    except anyio.EndOfStream:
        return b""
    except _broken_errors() as exc:
        raise ConnectionGone(str(exc)) from exc


async def send_all(stream: Any, data: bytes) -> None:
    """Send ``data`` on a trio or an anyio byte stream; :class:`ConnectionGone`
    if the stream is broken or closed."""
    try:
        if hasattr(stream, "send_all"):
            await stream.send_all(data)
        else:
            await stream.send(data)
    except _broken_errors() as exc:
        raise ConnectionGone(str(exc)) from exc
