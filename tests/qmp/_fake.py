"""A scripted fake QMP server on a real unix socket.

A test gives :func:`fake_qmp` a script, an async function that plays the
server's side of one connection through a :class:`Peer`; the test body
connects to the yielded path. The script's own assertions fail the test.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"},
        "capabilities": ["oob"],
    }
}


class Peer:
    """The server's end of one connection."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._buffered = BufferedByteReceiveStream(stream)

    async def send(self, message: dict[str, Any] | bytes) -> None:
        """Send a message as QEMU does (``\\r\\n``), or raw bytes as given."""
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\r\n"
        await self.stream.send(data)

    async def receive(self) -> dict[str, Any]:
        line = await self._buffered.receive_until(b"\n", 1 << 20)
        message = json.loads(line)
        assert isinstance(message, dict), message
        return message

    async def expect(self, command: str) -> dict[str, Any]:
        request = await self.receive()
        assert request.get("execute") == command, request
        return request

    async def reply(self, request: dict[str, Any], value: Any = None) -> None:
        await self.send({"return": {} if value is None else value, "id": request["id"]})

    async def fail(self, request: dict[str, Any], error_class: str, desc: str) -> None:
        await self.send({"id": request["id"], "error": {"class": error_class, "desc": desc}})

    async def event(self, name: str, data: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {
            "timestamp": {"seconds": 1700000000, "microseconds": 250000},
            "event": name,
        }
        if data is not None:
            message["data"] = data
        await self.send(message)

    async def handshake(self) -> None:
        await self.send(GREETING)
        await self.reply(await self.expect("qmp_capabilities"))

    async def expect_eof(self) -> None:
        """Wait for the client to close its end, sending nothing first."""
        with anyio.fail_after(30):
            try:
                data = await self._buffered.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
        raise AssertionError(f"expected end of stream, got {data!r}")

    def has_pending(self) -> bool:
        """Whether the client wrote anything not yet received (never blocks)."""
        if self._buffered.buffer:
            return True
        sock: socket.socket = self.stream.extra(SocketAttribute.raw_socket)
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False

    async def wait_readable(self) -> None:
        """Wait until the client has written something, without reading it."""
        if not self._buffered.buffer:
            await anyio.wait_readable(self.stream.extra(SocketAttribute.raw_socket))

    async def reset(self) -> None:
        """Close with unread data, which a unix socket reports as ECONNRESET."""
        await self.wait_readable()
        assert not self._buffered.buffer
        await self.stream.aclose()


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def fake_qmp(script: Script) -> AsyncIterator[str]:
    """Serve one unix-socket connection with ``script``; yields the socket's path.

    On exit, waits for the script to finish (it fails if that takes long).
    """
    with tempfile.TemporaryDirectory(prefix="qmp", dir="/tmp") as tmp:
        path = os.path.join(tmp, "qmp.sock")
        async with _serving(await anyio.create_unix_listener(path), script):
            yield path


@asynccontextmanager
async def fake_qmp_tcp(script: Script) -> AsyncIterator[tuple[str, int]]:
    """Like :func:`fake_qmp` on a loopback TCP port; yields ``(host, port)``."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    (listener,) = multi.listeners
    assert isinstance(listener, SocketListener)
    port = listener.extra(SocketAttribute.local_port)
    async with _serving(listener, script):
        yield "127.0.0.1", port


@asynccontextmanager
async def _serving(listener: SocketListener, script: Script) -> AsyncIterator[None]:
    finished = anyio.Event()

    async def serve() -> None:
        stream = await listener.accept()
        async with stream:
            await script(Peer(stream))
        finished.set()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(serve)
        yield
        with anyio.fail_after(30):
            await finished.wait()
