"""A connection's own socket, used directly where that saves task switches.

anyio's socket streams cost the reading task an extra turn of the event loop
on every receive (trio's socket methods end with a checkpoint even when
they did not wait), and a write through the client's writer task costs two
more. On a plain socket the client reads with :class:`SocketReceiver`
(wait until readable, then ``recv`` at once), lets a caller write a short
command itself when the line is clear (``QMPClient._send_now``, with
:func:`send_some`), and its writer task writes with :func:`send_all`.
Every write passes :data:`NO_SIGNAL`. Other streams (in memory, TLS, an
asyncio transport's) go through anyio as before.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import anyio
import anyio.lowlevel
from anyio.abc import AnyByteStream, ByteReceiveStream, SocketAttribute, SocketStream

from jobctl._backend import native

__all__ = ["SocketReceiver", "plain_socket", "send_all", "send_some"]

#: The ``send`` flag that makes a write to a peer that is gone fail with
#: EPIPE (:class:`BrokenPipeError`) instead of raising SIGPIPE, which kills
#: a program that has not set it aside (Python does by default; an
#: embedding program may not have).
NO_SIGNAL: Final = getattr(socket, "MSG_NOSIGNAL", 0)


def plain_socket(stream: AnyByteStream) -> socket.socket | None:
    """The non-blocking socket of ``stream`` when ``stream`` is a socket
    stream of anyio's whose bytes are the socket's and that only its own
    calls read and write (anyio's trio streams and its asyncio UNIX socket
    stream), else None: an asyncio transport's socket (the transport reads
    it), a memory stream, and a wrapper such as anyio's ``TLSStream``, which
    names its transport's socket too but whose bytes are not the socket's."""
    if not isinstance(stream, SocketStream):
        return None
    raw = stream.extra(SocketAttribute.raw_socket, None)
    if type(raw) is not socket.socket or raw.gettimeout() != 0.0:
        return None
    return raw


@final
class SocketReceiver(ByteReceiveStream):
    """The receive side of a plain non-blocking socket: each :meth:`receive`
    waits until the socket is readable (a checkpoint), then reads what is
    there. The socket is closed by the stream it belongs to, not by this.
    Made inside the event loop that reads it (it waits with that backend's
    own ``wait_readable``)."""

    __slots__ = ("_socket", "_wait_readable")

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._wait_readable = native().wait_readable

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """What the socket holds, once it holds something; raises
        :class:`anyio.ClosedResourceError` (on every backend) if the socket
        is closed under the wait, :class:`anyio.EndOfStream` at its end."""
        sock = self._socket
        wait_readable = self._wait_readable
        while True:
            await wait_readable(sock)
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


def send_some(sock: socket.socket, data: bytes | memoryview) -> int:
    """Write what the non-blocking ``sock`` takes of ``data`` now, without
    waiting; how many bytes (0 when its buffer is full). A peer that is gone
    raises :class:`BrokenPipeError`, never SIGPIPE."""
    try:
        return sock.send(data, NO_SIGNAL)
    except BlockingIOError:
        return 0


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` on the non-blocking ``sock``, waiting while its
    buffer is full (a checkpoint either way); raises as :func:`send_some`."""
    view = memoryview(data)
    while view := view[send_some(sock, view) :]:
        await anyio.wait_writable(sock)
    await anyio.lowlevel.checkpoint()
