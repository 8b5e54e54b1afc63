"""A connection's own socket, used directly where that saves task switches.

anyio's socket streams cost the reading task an extra turn of the event loop
on every receive (trio's socket methods end with a checkpoint even when
they did not wait), and a write through the client's writer task costs two
more. On a plain socket the client reads with :class:`SocketReceiver`
(wait until readable, then ``recv`` at once) and lets a caller write a
short command itself when the line is clear (see
``QMPClient._send_now``). Other streams (in memory, TLS, an asyncio
transport's) go through anyio as before.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any, final

import anyio
import anyio.lowlevel
from anyio.abc import AnyByteStream, ByteReceiveStream, SocketAttribute

__all__ = ["SocketReceiver", "plain_socket"]


def plain_socket(stream: AnyByteStream) -> socket.socket | None:
    """The non-blocking socket under ``stream`` that only ``stream``'s own
    calls read and write (anyio's trio streams and its asyncio UNIX socket
    stream), else None (an asyncio transport's socket, a memory stream)."""
    raw = stream.extra(SocketAttribute.raw_socket, None)
    if type(raw) is not socket.socket or raw.gettimeout() != 0.0:
        return None
    return raw


@final
class SocketReceiver(ByteReceiveStream):
    """The receive side of a plain non-blocking socket: each :meth:`receive`
    waits until the socket is readable (a checkpoint), then reads what is
    there. The socket is closed by the stream it belongs to, not by this."""

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        sock = self._socket
        while True:
            await anyio.wait_readable(sock)
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:  # woken for nothing: wait again
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}
