"""The migration stream between a source VM and a destination VM.

No RAM is copied: the source's model decides how long everything takes, and
the stream only carries what the destination must know - that a source
connected, that it is still there, and that it finished (and whether the
guest was running). Two transports:

* in-process: the destination registered its URI with the
  :class:`~jobctl_simulators.qemu.SimulatedHost`; the source calls it directly;
* a real socket (TCP or unix), for VMs in different processes, when the host
  has ``network=True``: JSON lines ``{"hello": {...}}``, ``{"sent": n}``,
  ``{"done": {"running": bool}}``. As in QEMU, the destination is active as
  soon as a source connects, and fails (and exits 1) at once if the stream
  does not begin with ``hello``, carries anything else, or ends before
  ``done``.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol, final

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ._errors import CommandErrorReply

__all__ = [
    "IncomingEnd",
    "Link",
    "LocalLink",
    "MigrationAddress",
    "MigrationFailure",
    "StreamLink",
    "parse_migration_uri",
    "read_stream_messages",
]

_MAX_LINE: Final = 65536


class MigrationFailure(Exception):
    """The outgoing migration failed; ``desc`` becomes query-migrate's ``error-desc``."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


@final
@attrs.frozen
class MigrationAddress:
    """A parsed ``tcp:HOST:PORT`` or ``unix:PATH`` migration URI."""

    uri: str
    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def describe(self) -> str:
        """The address as QEMU names it in errors."""
        return f"{self.host}:{self.port}" if self.kind == "tcp" else self.path

    def socket_address(self) -> list[dict[str, Any]]:
        """``query-migrate``'s ``socket-address`` on the destination."""
        if self.kind == "unix":
            return [{"path": self.path, "type": "unix"}]
        family = "ipv6" if ":" in self.host else "ipv4"
        return [{"port": str(self.port), family: True, "host": self.host, "type": "inet"}]


def parse_migration_uri(uri: str) -> MigrationAddress | None:
    """Parse a migration URI; None for a protocol the simulator does not know.

    Raises :class:`CommandErrorReply` with QEMU's text for a malformed address.
    """
    if uri.startswith("unix:"):
        path = uri.removeprefix("unix:")
        if not path:
            raise CommandErrorReply("invalid Unix socket address")
        return MigrationAddress(uri, "unix", path=path)
    if uri.startswith("tcp:"):
        address = uri.removeprefix("tcp:")
        if address.startswith("["):
            host, bracket, rest = address[1:].partition("]")
            port_text = rest.removeprefix(":") if bracket and rest.startswith(":") else ""
        else:
            host, _, port_text = address.rpartition(":")
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            raise CommandErrorReply(f"error parsing address '{address}'")
        return MigrationAddress(uri, "tcp", host=host, port=int(port_text))
    return None


class IncomingEnd(Protocol):
    """What a source needs from the destination's incoming migration."""

    def connected(self, source: str) -> None:
        """A source connected: the destination becomes active."""

    def finished(self, running: bool) -> None:
        """The source finished the switchover (``running``: the guest ran)."""

    def broken(self) -> None:
        """The stream broke before it finished: the destination fails."""

    @property
    def gone(self) -> bool:
        """The destination is no longer listening (it exited)."""
        ...

    @property
    def waiting(self) -> bool:
        """No source connected yet, and the destination still listens."""
        ...


class Link(Protocol):
    """The source's end of the migration stream."""

    async def send(self, nbytes: int) -> None:
        """Account ``nbytes`` of stream; raise :class:`MigrationFailure` if
        the destination is gone."""

    async def finish(self, running: bool) -> None:
        """End the stream successfully."""

    async def abort(self) -> None:
        """Break the stream (the destination fails)."""


_BROKEN_PIPE: Final = "Unable to write to socket: Broken pipe"


@final
class LocalLink:
    """A migration stream to a destination in this process."""

    def __init__(self, end: IncomingEnd) -> None:
        self._end = end
        self._open = True

    async def send(self, nbytes: int) -> None:
        await anyio.lowlevel.checkpoint()
        if self._end.gone:
            raise MigrationFailure(_BROKEN_PIPE)

    async def finish(self, running: bool) -> None:
        await self.send(0)
        self._open = False
        self._end.finished(running)

    async def abort(self) -> None:
        if self._open:
            self._open = False
            if not self._end.gone:
                self._end.broken()
        await anyio.lowlevel.checkpoint()


@final
class StreamLink:
    """A migration stream over a real socket to another process."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    @classmethod
    async def connect(cls, address: MigrationAddress, source: str, ram_size: int) -> StreamLink:
        try:
            if address.kind == "tcp":
                stream: ByteStream = await anyio.connect_tcp(address.host, address.port)
            else:
                stream = await anyio.connect_unix(address.path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MigrationFailure(
                f"Failed to connect to '{address.describe()}': {reason}"
            ) from None
        link = cls(stream)
        await link._write({"hello": {"source": source, "ram": ram_size}})
        return link

    async def _write(self, message: dict[str, Any]) -> None:
        try:
            await self._stream.send(json.dumps(message).encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise MigrationFailure(_BROKEN_PIPE) from None

    async def send(self, nbytes: int) -> None:
        await self._write({"sent": nbytes})

    async def finish(self, running: bool) -> None:
        await self._write({"done": {"running": running}})
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    async def abort(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


async def read_stream_messages(stream: ByteStream, end: IncomingEnd) -> None:
    """Serve one incoming socket stream for ``end`` (the destination side):
    active at once, then ``hello``, any ``sent``, ``done``; anything else
    (garbage, an early end) breaks the migration."""
    reader = BufferedByteReceiveStream(stream)
    done = False
    end.connected("?")  # who it is, the stream says later
    try:
        message = await _read_message(reader)
        if "hello" not in message:
            return
        while not done:
            message = await _read_message(reader)
            if "done" in message:
                done = True
                end.finished(bool(message["done"].get("running", True)))
            elif "sent" not in message:
                return
    except (
        anyio.EndOfStream,
        anyio.IncompleteRead,
        anyio.BrokenResourceError,
        anyio.DelimiterNotFound,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
    ):
        pass  # a broken or malformed stream: the destination fails below
    finally:
        if not done and not end.gone:
            end.broken()
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _read_message(reader: BufferedByteReceiveStream) -> dict[str, Any]:
    """One JSON line holding an object with one member (ValueError if not)."""
    message = json.loads(await reader.receive_until(b"\n", _MAX_LINE))
    if not isinstance(message, dict) or len(message) != 1:
        raise ValueError(f"not a migration stream message: {message!r}")
    return message
