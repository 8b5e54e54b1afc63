"""The feed's websocket I/O in trio: trio-websocket (the ``trio`` extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, final

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from ._backend import ConnectionGone

__all__ = ["receive_request"]


@final
class _WatchedStream(trio.abc.Stream):
    """A stream that tells when it ended (closed, or the peer's EOF or
    failure). trio-websocket's handshake waits for a request even after its
    reader gave up on the stream: a plain HTTP request gets its ``400``,
    then the wait would last the whole handshake timeout."""

    __slots__ = ("_stream", "ended")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.ended = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def aclose(self) -> None:
        self.ended.set()
        await self._stream.aclose()


@final
class _Connection:
    """trio-websocket's connection, its ``ConnectionClosed`` as :class:`ConnectionGone`."""

    __slots__ = ("_ws",)

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws

    @property
    def closed(self) -> bool:
        return self._ws.closed is not None

    async def get_message(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except ConnectionClosed as exc:
            raise ConnectionGone(str(exc)) from exc

    async def send_message(self, message: str) -> None:
        try:
            await self._ws.send_message(message)
        except ConnectionClosed as exc:
            raise ConnectionGone(str(exc)) from exc

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except ConnectionClosed as exc:
            raise ConnectionGone(str(exc)) from exc

    async def aclose(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)


@final
class _Request:
    __slots__ = ("_request",)

    def __init__(self, request: WebSocketRequest) -> None:
        self._request = request

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._request.headers

    async def reject(self, status: int, body: bytes) -> None:
        try:
            await self._request.reject(status, body=body)
        except ConnectionClosed as exc:
            raise ConnectionGone(str(exc)) from exc

    async def accept(self) -> _Connection:
        try:
            return _Connection(await self._request.accept())
        except ConnectionClosed as exc:
            raise ConnectionGone(str(exc)) from exc


async def receive_request(nursery: Any, stream: Any, max_message_size: int) -> _Request | None:
    """The client's handshake request; None if the stream ended first.
    trio-websocket's reader task goes into ``nursery``."""
    watched = _WatchedStream(stream)
    requests: list[WebSocketRequest] = []
    async with trio.open_nursery() as race:

        async def until_ended() -> None:
            await watched.ended.wait()
            race.cancel_scope.cancel()

        race.start_soon(until_ended)
        with contextlib.suppress(ConnectionClosed):
            requests.append(
                await wrap_server_stream(nursery, watched, max_message_size=max_message_size)
            )
        race.cancel_scope.cancel()
    return _Request(requests[0]) if requests else None
