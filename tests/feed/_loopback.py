"""Helpers for the feed's tests over real loopback sockets, in trio and in asyncio.

Raw connections are anyio's (one test body serves both backends); websocket
clients are real libraries: trio-websocket in trio, websockets in asyncio.
Real sockets: the real clock. Tests wait for observable states (bounded by
``anyio.fail_after``), never for a while, and assert nothing about how long
anything took.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from jobctl import TraceHub
from jobctl.feed import FeedAddress, serve_feed

#: A complete websocket opening handshake, as a raw client sends it.
HANDSHAKE = (
    b"GET /feed HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
#: The same, cut off before its end: the server waits for the rest.
HALF_HANDSHAKE = HANDSHAKE[:60]
PLAIN_GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
#: A websocket frame's opcode for a ping (RFC 6455, 5.2).
PING_OPCODE = 0x9

#: Both event loops, for ``@pytest.mark.parametrize("anyio_backend", BOTH)``.
BOTH = ["trio", "asyncio"]


def anyio_backend_name() -> str:
    return sniffio.current_async_library()


class Client:
    """A websocket client of either backend: JSON messages in, text out."""

    def __init__(self, recv: Any, send: Any) -> None:
        self._recv = recv
        self.send = send

    async def receive(self) -> dict[str, Any]:
        message = json.loads(await self._recv())
        assert isinstance(message, dict)
        return message

    async def receive_type(self, kind: str) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == kind, message
        return message

    async def receive_snapshot(self) -> dict[str, Any]:
        """The hello, the recent past (skipped), then the snapshot."""
        await self.receive_type("hello")
        message = await self.receive()
        while message["type"] == "events" and message.get("history"):
            message = await self.receive()
        assert message["type"] == "snapshot", message
        return message

    async def read_all(self, domain: str, seen: anyio.Event) -> None:
        """Read every message (so pings are answered); set ``seen`` once an
        event of ``domain`` came."""
        while True:
            message = await self.receive()
            events = message["events"] if message["type"] == "events" else []
            if any(e["domain"] == domain for e in events):
                seen.set()


@asynccontextmanager
async def client(url: str, headers: Sequence[tuple[str, str]] = ()) -> AsyncIterator[Client]:
    """A websocket client of the running backend. Both libraries answer the
    server's pings on their own, whether or not the test is reading."""
    if anyio_backend_name() == "trio":
        from trio_websocket import open_websocket_url

        extra = [(k.encode(), v.encode()) for k, v in headers]
        async with open_websocket_url(url, extra_headers=extra) as ws:
            yield Client(ws.get_message, ws.send_message)
    else:
        from websockets.asyncio.client import connect

        async with connect(url, additional_headers=list(headers)) as ws:
            yield Client(ws.recv, ws.send)


async def read_until_closed(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """Everything the server sent before it closed (a reset counts as closed)."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass
    return data


async def read_head(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """Read up to the end of the server's HTTP head (and whatever came with it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return data


def status_of(answer: bytes) -> int:
    return int(answer.partition(b"\r\n")[0].split()[1])


async def raw_exchange(port: int, data: bytes) -> tuple[int, bytes]:
    """Send ``data``, read to the end: the HTTP status and body."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        response = await read_until_closed(stream)
    return status_of(response), response.partition(b"\r\n\r\n")[2]


async def raw_refusal(port: int, path: str = "/feed", headers: str = "") -> tuple[int, bytes]:
    """A raw websocket handshake's answer: status and body."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    return await raw_exchange(port, request.encode())


async def open_many(port: int, count: int, data: bytes) -> list[anyio.abc.SocketStream]:
    streams = []
    for _ in range(count):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        if data:
            await stream.send(data)
        streams.append(stream)
    return streams


async def wait_until(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    """Return once ``predicate()`` holds, checked at every checkpoint; fail
    after ``bound`` seconds (the feed has no event for the states tests wait for)."""
    with anyio.fail_after(bound):
        while not predicate():
            await anyio.lowlevel.checkpoint()


def peeked(stream: anyio.abc.SocketStream) -> bytes:
    """What the server has sent that waits in ``stream``'s receive buffer,
    left there: the client has still read nothing."""
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    # A duplicate of the descriptor: asyncio's transport hides the socket's recv.
    with socket.socket(fileno=os.dup(raw.fileno())) as dup:
        try:
            return dup.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""


def send_at_once(streams: Sequence[anyio.abc.SocketStream], data: bytes) -> None:
    """Send ``data`` on every stream in one step, with no checkpoint between:
    the server finds them all waiting together."""
    for stream in streams:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        with socket.socket(fileno=os.dup(raw.fileno())) as dup:
            assert dup.send(data, socket.MSG_DONTWAIT) == len(data)


def server_opcodes(data: bytes) -> list[int]:
    """The opcodes of the whole (unmasked) frames after an HTTP head."""
    _, _, frames = data.partition(b"\r\n\r\n")
    opcodes = []
    while len(frames) >= 2:
        length, start = frames[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(frames[2:4]), 4
        elif length == 127:
            length, start = int.from_bytes(frames[2:10]), 10
        if len(frames) < start + length:
            break
        opcodes.append(frames[0] & 0x0F)
        frames = frames[start + length :]
    return opcodes


@asynccontextmanager
async def serving(hub: TraceHub, **options: Any) -> AsyncIterator[FeedAddress]:
    """``serve_feed(hub, **options)`` for the ``with`` block (at most 20 s)."""
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            yield await tg.start(partial(serve_feed, hub, **options))
            tg.cancel_scope.cancel()


class UnbufferedStream(anyio.abc.ByteStream):
    """One end of :func:`unbuffered_stream_pair`."""

    def __init__(
        self,
        send: anyio.abc.ObjectSendStream[bytes],
        receive: anyio.abc.ObjectReceiveStream[bytes],
    ) -> None:
        self._send = send
        self._receive = receive
        self._left = b""

    async def send(self, item: bytes) -> None:
        await self._send.send(bytes(item))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._left:
            self._left = await self._receive.receive()
        data, self._left = self._left[:max_bytes], self._left[max_bytes:]
        return data

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def stop_receiving(self) -> None:
        """Close this end for reading only: the other end's sends fail
        (as a reset connection's do), its receives still wait."""
        await self._receive.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def unbuffered_stream_pair() -> tuple[UnbufferedStream, UnbufferedStream]:
    """Two anyio byte streams joined with no buffer between them: a send
    returns only once the other end has received it (asyncio's own sockets
    take megabytes on loopback before a write waits; this one stalls at once)."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](0)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](0)
    return UnbufferedStream(a_send, a_receive), UnbufferedStream(b_send, b_receive)
