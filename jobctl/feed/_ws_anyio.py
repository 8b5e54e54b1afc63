"""The feed's websocket I/O on anyio streams: wsproto (the ``feed`` extra).

Used in asyncio. wsproto is the protocol engine trio-websocket is built on,
so a client meets the same handshake answers (``400`` to plain HTTP, the
feed's refusals with their status and body) and the same close codes on both
backends; the feed keeps the handshake in its own hands (its pool, its
timeout, its slots), which a server library owning the accept loop would not
allow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Final, final

import anyio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._backend import ConnectionGone, receive_some, send_all

__all__ = ["receive_request"]

_RECEIVE: Final = 4096
_ABNORMAL: Final = 1006


@final
class _Connection:
    """One server-side websocket over an anyio (or trio) byte stream.

    Only the task that calls :meth:`get_message` reads the stream; pings sent
    by :meth:`ping` are answered through it, so a feed that pushes only must
    still keep a reader running (it does). Sends are serialised by a lock.
    """

    __slots__ = (
        "_events",
        "_max_message",
        "_parts",
        "_pings",
        "_pongs",
        "_send_lock",
        "_size",
        "_stream",
        "_ws",
        "close_code",
    )

    def __init__(self, stream: Any, max_message: int) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.SERVER)
        self._events: deque[Event] = deque()
        self._send_lock = anyio.Lock()
        self._max_message = max_message
        self._parts: list[Any] = []
        self._size = 0
        self._pings = 0
        self._pongs: dict[bytes, anyio.Event] = {}
        #: The close code once the connection is closing or closed.
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    async def _send(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError as exc:
            raise ConnectionGone(str(exc)) from exc
        async with self._send_lock:
            await send_all(self._stream, data)

    async def next_event(self) -> Event:
        while not self._events:
            try:
                data = await receive_some(self._stream, _RECEIVE)
            except ConnectionGone:
                data = b""
            self._ws.receive_data(data or None)
            self._events.extend(self._ws.events())
            if not data and not self._events:
                if self.close_code is None:
                    self.close_code = _ABNORMAL
                raise ConnectionGone("the client closed the stream")
        return self._events.popleft()

    # -- the handshake ---------------------------------------------------------

    async def reject(self, status: int, body: bytes) -> None:
        self.close_code = _ABNORMAL
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send(RejectConnection(status_code=status, headers=headers, has_body=True))
        await self._send(RejectData(data=body, body_finished=True))

    async def accept(self) -> _Connection:
        await self._send(AcceptConnection())
        return self

    # -- messages ----------------------------------------------------------------

    async def get_message(self) -> str | bytes:
        while True:
            event = await self.next_event()
            if isinstance(event, TextMessage | BytesMessage):
                self._size += len(event.data)
                if self._size > self._max_message:
                    await self.aclose(1009, f"message bigger than {self._max_message}")
                    raise ConnectionGone("message too big")
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    if isinstance(event, TextMessage):
                        return "".join(str(part) for part in parts)
                    return b"".join(bytes(part) for part in parts)
            elif isinstance(event, Ping):
                await self._send(event.response())
            elif isinstance(event, Pong):
                waiter = self._pongs.pop(bytes(event.payload), None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, CloseConnection):
                if self.close_code is None:
                    self.close_code = event.code
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send(event.response())
                raise ConnectionGone(f"closed by the client ({event.code})")

    async def send_message(self, message: str) -> None:
        if self.close_code is not None:
            raise ConnectionGone("the connection is closed")
        await self._send(TextMessage(data=message))

    async def ping(self) -> None:
        """Send a ping; return when its pong has been read."""
        self._pings += 1
        payload = str(self._pings).encode()
        waiter = self._pongs[payload] = anyio.Event()
        await self._send(Ping(payload=payload))
        await waiter.wait()

    async def aclose(self, code: int, reason: str) -> None:
        """Send a close frame, then read until the client's answers (or it
        goes: before the close frame could go out, too, as in trio-websocket)."""
        if self.close_code is not None or self._ws.state is not ConnectionState.OPEN:
            return
        self.close_code = code
        try:
            await self._send(CloseConnection(code=code, reason=reason))
            while not isinstance(await self.next_event(), CloseConnection):
                pass
        except ConnectionGone:
            pass


@final
class _Request:
    __slots__ = ("_connection", "_event")

    def __init__(self, connection: _Connection, event: Request) -> None:
        self._connection = connection
        self._event = event

    @property
    def path(self) -> str:
        return self._event.target

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return list(self._event.extra_headers)

    async def reject(self, status: int, body: bytes) -> None:
        await self._connection.reject(status, body)

    async def accept(self) -> _Connection:
        return await self._connection.accept()


async def receive_request(task_group: Any, stream: Any, max_message_size: int) -> _Request | None:
    """The client's handshake request; None if the stream ended first, or if
    it was not a websocket handshake (answered ``400``)."""
    connection = _Connection(stream, max_message_size)
    try:
        while True:
            try:
                event = await connection.next_event()
            except RemoteProtocolError as exc:
                hint = exc.event_hint
                if isinstance(hint, RejectConnection):
                    body = f"{exc}\n".encode()
                    await connection.reject(hint.status_code, body)
                return None
            if isinstance(event, Request):
                return _Request(connection, event)
    except ConnectionGone:
        return None
