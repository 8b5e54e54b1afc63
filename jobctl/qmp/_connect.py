"""Opening a QMP client on a unix socket or a TCP port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ByteStream

from jobctl.qmp._client import DEFAULT_CONNECT_TIMEOUT, QMPClient, _Limit, _open
from jobctl.qmp._framing import DEFAULT_MAX_LINE

__all__ = ["open_qmp_tcp", "open_qmp_unix"]


@asynccontextmanager
async def open_qmp_unix(
    path: str | os.PathLike[str],
    *,
    max_line: int = DEFAULT_MAX_LINE,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncIterator[QMPClient]:
    """A QMP client on the unix socket at ``path`` (QEMU's ``-qmp unix:PATH,server=on``).

    ``timeout`` bounds connecting, the greeting and the negotiation together:
    :data:`DEFAULT_CONNECT_TIMEOUT` seconds unless given, None for no limit;
    past it, :class:`QMPConnectTimeoutError` names the socket and the
    timeout. A failed connect raises :class:`OSError` naming the path. See
    :func:`open_qmp_stream` for the rest.
    """
    limit = _Limit(timeout, f"QMP socket {os.fspath(path)!r}")
    stream = await _connect(anyio.connect_unix(path), limit)
    async with _open(stream, max_line, limit) as client:
        yield client


@asynccontextmanager
async def open_qmp_tcp(
    host: str,
    port: int,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncIterator[QMPClient]:
    """A QMP client on ``host:port`` (QEMU's ``-qmp tcp:HOST:PORT,server=on``).

    Like :func:`open_qmp_unix`.
    """
    limit = _Limit(timeout, f"QMP at {host}:{port}")
    stream = await _connect(anyio.connect_tcp(host, port), limit)
    async with _open(stream, max_line, limit) as client:
        yield client


async def _connect(connecting: Awaitable[ByteStream], limit: _Limit) -> ByteStream:
    try:
        with anyio.CancelScope(deadline=limit.deadline) as scope:
            stream = await connecting
    except OSError as exc:
        raise OSError(exc.errno, f"cannot connect to {limit.where}: {exc.strerror or exc}") from exc
    if scope.cancelled_caught:
        raise limit.expired("connect")
    return stream
