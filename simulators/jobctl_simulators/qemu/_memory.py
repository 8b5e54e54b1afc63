"""A connected pair of in-memory byte streams (a socketpair without a socket)."""

from __future__ import annotations

import math
from typing import final

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["MemoryByteStream", "memory_stream_pair"]


@final
class MemoryByteStream(ByteStream):
    """One end of :func:`memory_stream_pair`.

    Behaves like a socket: :meth:`receive` returns at most ``max_bytes`` of
    what the peer sent, raises :exc:`anyio.EndOfStream` once the peer sent EOF
    or closed; :meth:`send` raises :exc:`anyio.BrokenResourceError` once the
    peer closed. Sends never block (the buffer is unbounded, like a socket
    whose reader keeps up).
    """

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._buffer = bytearray()

    async def send(self, item: bytes) -> None:
        """Queue ``item`` for the peer, whole and in order; never blocks.

        Raises :exc:`anyio.BrokenResourceError` once the peer closed and
        :exc:`anyio.ClosedResourceError` after this end's :meth:`send_eof`
        or :meth:`aclose`. An empty ``item`` sends nothing (a checkpoint).
        """
        if item:
            await self._send.send(bytes(item))
        else:
            await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """Half-close: once the peer has read what was sent, its
        :meth:`receive` raises :exc:`anyio.EndOfStream`; this end can still
        receive.
        """
        await self._send.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Wait for data and return at most ``max_bytes`` of it (bytes the
        peer sent but not yet returned come first, never lost or reordered).

        Raises :exc:`anyio.EndOfStream` once the peer sent EOF or closed and
        everything was read; ``ValueError`` if ``max_bytes < 1``.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if self._buffer:
            await anyio.lowlevel.checkpoint()
        else:
            self._buffer.extend(await self._receive.receive())
        chunk = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return chunk

    async def aclose(self) -> None:
        """Close both directions of this end: the peer's :meth:`receive` ends
        with :exc:`anyio.EndOfStream`, its :meth:`send` raises
        :exc:`anyio.BrokenResourceError`. Idempotent.
        """
        await self._send.aclose()
        await self._receive.aclose()


def memory_stream_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected :class:`MemoryByteStream` s."""
    a_to_b_send, a_to_b_receive = anyio.create_memory_object_stream[bytes](math.inf)
    b_to_a_send, b_to_a_receive = anyio.create_memory_object_stream[bytes](math.inf)
    return (
        MemoryByteStream(a_to_b_send, b_to_a_receive),
        MemoryByteStream(b_to_a_send, a_to_b_receive),
    )
