"""Opening a QMP client on a unix socket or a TCP port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ByteStream

from jobctl.qmp._client import QMPClient, _deadline, _open
from jobctl.qmp._framing import DEFAULT_MAX_LINE

__all__ = ["open_qmp_tcp", "open_qmp_unix"]


@asynccontextmanager
async def open_qmp_unix(
    path: str | os.PathLike[str],
    *,
    max_line: int = DEFAULT_MAX_LINE,
    timeout: float | None = None,
) -> AsyncIterator[QMPClient]:
    """A QMP client on the unix socket at ``path`` (QEMU's ``-qmp unix:PATH,server=on``).

    ``timeout`` bounds connecting, the greeting and the negotiation together
    (:class:`TimeoutError`); a failed connect raises :class:`OSError` naming
    the path. See :func:`open_qmp_stream` for the rest.
    """
    where = f"QMP socket {os.fspath(path)!r}"
    deadline = _deadline(timeout)
    stream = await _connect(anyio.connect_unix(path), deadline, where)
    async with _open(stream, max_line, deadline, where) as client:
        yield client


@asynccontextmanager
async def open_qmp_tcp(
    host: str,
    port: int,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    timeout: float | None = None,
) -> AsyncIterator[QMPClient]:
    """A QMP client on ``host:port`` (QEMU's ``-qmp tcp:HOST:PORT,server=on``).

    Like :func:`open_qmp_unix`.
    """
    where = f"QMP at {host}:{port}"
    deadline = _deadline(timeout)
    stream = await _connect(anyio.connect_tcp(host, port), deadline, where)
    async with _open(stream, max_line, deadline, where) as client:
        yield client


async def _connect(connecting: Awaitable[ByteStream], deadline: float, where: str) -> ByteStream:
    try:
        with anyio.CancelScope(deadline=deadline) as scope:
            stream = await connecting
    except OSError as exc:
        raise OSError(exc.errno, f"cannot connect to {where}: {exc.strerror or exc}") from exc
    if scope.cancelled_caught:
        raise TimeoutError(f"could not connect to {where} in time")
    return stream
