"""A minimal raw QMP client for tests: JSON lines over any anyio byte stream.

It hides nothing: it sends exactly what it is given and returns every message
(greeting, events, replies) as parsed JSON, so tests can check QEMU's exact
wire behaviour. Used against the simulator and against real QEMU.
"""

from __future__ import annotations

import json
from typing import Any, final

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["RawQmp", "is_reply"]


def is_reply(message: dict[str, Any]) -> bool:
    return "return" in message or "error" in message


@final
class RawQmp:
    """One QMP connection. Every await is bounded by the caller's timeouts."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        #: Every message received, in order.
        self.transcript: list[dict[str, Any]] = []

    @classmethod
    async def unix(cls, path: str) -> RawQmp:
        return cls(await anyio.connect_unix(path))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawQmp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        await self.stream.send(data)

    async def receive_line(self) -> bytes:
        """The next raw line (raises anyio.EndOfStream / IncompleteRead at EOF)."""
        return await self._reader.receive_until(b"\n", 1 << 20)

    async def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.receive_line())
        self.transcript.append(message)
        return message

    async def at_eof(self) -> bool:
        """True if the server closed the connection (nothing more to read)."""
        try:
            await self._reader.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return True
        return False

    async def greeting(self) -> dict[str, Any]:
        return await self.receive()

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, id: Any = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send one command; return (events received before the reply, reply)."""
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        if id is not None:
            message["id"] = id
        await self.send(message)
        return await self.until_reply()

    async def until_reply(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            message = await self.receive()
            if is_reply(message):
                return events, message
            events.append(message)

    async def command(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Execute; return the ``return`` value, fail on an error reply."""
        _, reply = await self.execute(command, arguments)
        if "error" in reply:
            raise AssertionError(f"{command} failed: {reply['error']}")
        return reply["return"]

    async def negotiate(self) -> dict[str, Any]:
        """Read the greeting and leave negotiation mode; return the greeting."""
        greeting = await self.greeting()
        await self.command("qmp_capabilities")
        return greeting

    async def event(self, name: str, **data: Any) -> dict[str, Any]:
        """Wait for the next event called ``name`` whose data has ``data``."""
        while True:
            message = await self.receive()
            if message.get("event") == name and all(
                message.get("data", {}).get(key) == value for key, value in data.items()
            ):
                return message
