"""One client connection of a QMP monitor: QEMU 7.2's protocol.

Three tasks per connection, like QEMU's monitor I/O and dispatcher:

* the reader parses bytes as they come (:class:`JsonStreamer`) and queues
  each request - recording its arrival with the concurrency detector, so a
  client that pipelines is seen even though commands run one at a time;
* the dispatcher runs the requests in order, each under the VM's big lock,
  after QEMU's checks (``qmp_dispatch_check_obj``, negotiation, command
  lookup, arguments); events a command causes are queued before its reply;
* the writer sends greeting, events and replies in queue order, and records
  each reply as answered once written.

A client EOF lets the running command finish and drops the queued ones, as
QEMU does. Events reach a connection only after ``qmp_capabilities``.

A session sees its VM through :class:`SessionVm`; the VM keeps its sessions
in :class:`Connections`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Final, Protocol, final

import anyio
import attrs
from anyio.abc import ByteStream

from ._commands import HANDLERS, CommandedVm
from ._detector import ConcurrencyDetector, ConnectionLog, _Entry
from ._errors import COMMAND_NOT_FOUND, CommandErrorReply, SimulatorError
from ._faults import Die, Drop, ErrorReply, Fault, FaultInjector, Garbage, Latency, Stall
from ._json import JsonParseError, JsonStreamer, encode_message
from ._qapi import check_arguments
from ._schema import COMMAND_ARGUMENTS

__all__ = ["Connections", "QmpSession", "SessionVm"]

_STREAM_ERRORS: Final = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


@attrs.frozen
class _Out:
    data: bytes
    written: Callable[[], None] | None = None


_CLOSE: Final = _Out(b"")  # marker: write what is queued before it, then close


@attrs.frozen
class _Request:
    message: Any
    entry: _Entry


def _request_name(message: object) -> str:
    if isinstance(message, JsonParseError):
        return "<parse error>"
    if isinstance(message, dict):
        for key in ("execute", "exec-oob"):
            if isinstance(message.get(key), str):
                return str(message[key])
    return "<invalid>"


def _error_reply(error: CommandErrorReply, message: object) -> dict[str, Any]:
    reply: dict[str, Any] = {}
    if isinstance(message, dict) and "id" in message:
        reply["id"] = message["id"]
    reply["error"] = error.to_json()
    return reply


class SessionVm(CommandedVm, Protocol):
    """What a session needs of its VM besides what the commands touch: the
    concurrency detector, the big lock, the faults, the command latency,
    the greeting, whether the process exits, and killing it.
    (:class:`~jobctl_simulators.qemu.SimulatedQemu` is one.)"""

    @property
    def detector(self) -> ConcurrencyDetector: ...

    @property
    def bql(self) -> anyio.Lock: ...

    @property
    def faults(self) -> FaultInjector: ...

    @property
    def command_latency(self) -> float: ...

    @property
    def exiting(self) -> bool: ...

    def greeting(self) -> dict[str, Any]: ...

    def kill(self, exit_status: int = ...) -> None: ...


@final
class Connections:
    """The client connections of one VM: the open ones (which the VM closes
    when it exits), the ones that get events (past ``qmp_capabilities``, in
    the order they negotiated), and how many commands they ran."""

    def __init__(self) -> None:
        self._open: set[QmpSession] = set()
        self._subscribers: dict[QmpSession, None] = {}
        #: Commands the sessions dispatched (a fault may still drop them).
        self.commands = 0

    @property
    def open(self) -> list[QmpSession]:
        """The open sessions (a copy)."""
        return list(self._open)

    def opened(self, session: QmpSession) -> None:
        self._open.add(session)

    def closed(self, session: QmpSession) -> None:
        self._open.discard(session)
        self._subscribers.pop(session, None)

    def subscribe(self, session: QmpSession) -> None:
        self._subscribers[session] = None

    def send_event(self, message: dict[str, Any]) -> None:
        """Queue ``message`` on every subscribed session."""
        for session in self._subscribers:
            session.send_event(message)


@final
class QmpSession:
    """The QMP protocol over one client stream (one monitor, one client)."""

    def __init__(
        self, vm: SessionVm, connections: Connections, stream: ByteStream, label: str
    ) -> None:
        self._vm = vm
        self._connections = connections
        self._stream = stream
        self.label = label
        self.negotiated = False
        self.oob = False
        self._log: ConnectionLog = vm.detector.open(label)
        self._out_send, self._out_receive = anyio.create_memory_object_stream[_Out](math.inf)
        self._requests_send, self._requests_receive = anyio.create_memory_object_stream[_Request](
            math.inf
        )
        self._eof = False
        self._closing = False
        self._scope = anyio.CancelScope()
        self.closed = anyio.Event()

    # -- output ---------------------------------------------------------------

    def _send(self, message: object, written: Callable[[], None] | None = None) -> None:
        self._queue(_Out(encode_message(message), written))

    def _queue(self, item: _Out) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._out_send.send_nowait(item)  # (once closing, the client never sees it)

    def send_event(self, message: dict[str, Any]) -> None:
        """Queue an event (only called once negotiated)."""
        self._send(message)

    def close_after_flush(self) -> None:
        """Write what is queued, then close the connection."""
        self._closing = True
        self._queue(_CLOSE)
        self._out_send.close()

    def negotiate(self, *, oob: bool) -> None:
        """``qmp_capabilities`` succeeded: command mode, events from now on."""
        self.negotiated = True
        self.oob = oob
        self._connections.subscribe(self)

    # -- the connection's life -------------------------------------------------

    async def run(self) -> None:
        """Serve the client until EOF, a broken stream, a drop or VM exit."""
        vm = self._vm
        self._connections.opened(self)
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    dispatcher_done = anyio.Event()
                    tg.start_soon(self._dispatch_loop, dispatcher_done)
                    self._send(vm.greeting())
                    await self._read_loop()
                    # EOF: the running command finishes, the queued ones are
                    # dropped, what is queued for output is still written.
                    self._eof = True
                    self._requests_send.close()
                    await dispatcher_done.wait()
                    self.close_after_flush()
                    await anyio.sleep_forever()  # until the writer is done
        finally:
            self._connections.closed(self)
            self._out_send.close()
            self._out_receive.close()
            self._requests_send.close()
            self._requests_receive.close()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self.closed.set()

    async def _read_loop(self) -> None:
        streamer = JsonStreamer()
        while True:
            try:
                data = await self._stream.receive()
            except _STREAM_ERRORS:
                return
            for message in streamer.feed(data):
                entry = self._log.arrived(_request_name(message))  # strict: may raise
                self._requests_send.send_nowait(_Request(message, entry))

    async def _write_loop(self) -> None:
        async for item in self._out_receive:
            if item is _CLOSE:
                break
            try:
                await self._stream.send(item.data)
            except _STREAM_ERRORS:
                break
            if item.written is not None:
                item.written()
        self._scope.cancel()

    async def _dispatch_loop(self, done: anyio.Event) -> None:
        try:
            async for request in self._requests_receive:
                if self._eof or self._closing or self._vm.exiting:
                    break
                await self._dispatch(request)
        finally:
            done.set()

    # -- one request ----------------------------------------------------------------

    def _reply(self, reply: dict[str, Any], entry: _Entry) -> None:
        self._send(reply, lambda: self._log.answered(entry))

    def _check_request(self, message: dict[str, Any]) -> tuple[str, bool]:
        """QEMU's ``qmp_dispatch_check_obj``: (command, is out-of-band)."""
        command: tuple[str, bool] | None = None
        exec_key = ""
        for key, value in message.items():
            if key == "execute" or (key == "exec-oob" and self.oob):
                if not isinstance(value, str):
                    raise CommandErrorReply(f"QMP input member '{key}' must be a string")
                if command is not None:
                    raise CommandErrorReply(f"QMP input member '{key}' clashes with '{exec_key}'")
                command = (value, key == "exec-oob")
                exec_key = key
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise CommandErrorReply("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise CommandErrorReply(f"QMP input member '{key}' is unexpected")
        if command is None:
            raise CommandErrorReply("QMP input lacks member 'execute'")
        return command

    def _lookup(self, name: str, oob: bool) -> None:
        if not self.negotiated and name != "qmp_capabilities":
            raise CommandErrorReply(
                "Expecting capabilities negotiation with 'qmp_capabilities'", COMMAND_NOT_FOUND
            )
        if name not in COMMAND_ARGUMENTS:
            raise CommandErrorReply(f"The command {name} has not been found", COMMAND_NOT_FOUND)
        if oob:
            raise CommandErrorReply(f"The command {name} does not support OOB")

    async def _dispatch(self, request: _Request) -> None:
        message, entry = request.message, request.entry
        if isinstance(message, JsonParseError):
            self._reply({"error": CommandErrorReply(message.desc).to_json()}, entry)
            return
        if not isinstance(message, dict):
            self._reply(
                {"error": CommandErrorReply("QMP input must be a JSON object").to_json()}, entry
            )
            return
        try:
            name, oob = self._check_request(message)
            self._lookup(name, oob)
        except CommandErrorReply as error:
            self._reply(_error_reply(error, message), entry)
            return
        vm = self._vm
        self._connections.commands += 1
        fault = vm.faults.decide(name)
        if isinstance(fault, Die):
            vm.kill(fault.exit_status)
            return
        async with vm.bql:
            if isinstance(fault, Stall):
                await anyio.sleep(fault.seconds)
            if vm.exiting:
                return  # the process ends before running the command
            if isinstance(fault, Drop):
                if fault.execute:
                    await self._execute(name, message, None)
                self.close_after_flush()
                return
            reply = await self._execute(name, message, fault)
            if reply is None:
                return
            # The reply comes late (outside the lock) with the VM's
            # command latency and a Latency fault; else at once.
            delay = vm.command_latency + (fault.seconds if isinstance(fault, Latency) else 0.0)
            if delay <= 0:
                self._answer(reply, entry, fault)
                return
        await anyio.sleep(delay)
        self._answer(reply, entry, fault)

    def _answer(self, reply: dict[str, Any], entry: _Entry, fault: Fault | None) -> None:
        if isinstance(fault, Garbage):
            self._queue(_Out(fault.data, lambda: self._log.answered(entry)))
        else:
            self._reply(reply, entry)

    async def _execute(
        self, name: str, message: dict[str, Any], fault: Fault | None
    ) -> dict[str, Any] | None:
        """Run the command; its reply, or None if the VM began to exit."""
        if isinstance(fault, ErrorReply):
            return _error_reply(CommandErrorReply(fault.desc, fault.error_class), message)
        try:
            arguments = check_arguments(COMMAND_ARGUMENTS[name], message.get("arguments", {}))
            value = await HANDLERS[name](self._vm, self, arguments)
        except CommandErrorReply as error:
            return _error_reply(error, message)
        except SimulatorError:
            return None  # the VM began to exit while the command ran
        reply: dict[str, Any] = {"return": value}
        if "id" in message:
            reply["id"] = message["id"]
        return reply
