"""The QMP client: commands with ids over one connection, events to subscribers.

Two background tasks, in a task group owned by the ``async with`` that opened
the client, run the connection:

* the *reader* parses every incoming line and routes it: a reply wakes the
  call with its id, an event goes to the subscriptions without ever waiting;
* the *writer* writes queued commands. A caller never awaits a write, so
  its cancellation never interrupts one half-way.

On a plain socket (:mod:`jobctl.qmp._socket`) the reader reads the socket
itself, and a caller whose command finds nothing in flight and nothing
queued writes it there at once, without an await (every earlier command was
read by the peer, so it fits the socket's buffer; what would not fit goes to
the writer first): two turns of the event loop per command (the reader
woken by the reply, then the caller) instead of five (also the writer's
wake-up, and trio's checkpoints after a send and a receive), the same order
on the wire. ``statistics().direct_writes`` counts them.

A command whose caller gives up (cancelled, ``timeout=``) after it was
written (or taken by the writer) stays in flight as an *orphan*: nothing
more is written until every orphan's reply has arrived, so a caller that keeps one command in
flight (the :class:`jobctl.Monitor` contract) keeps that guarantee across
cancellation. Without orphans, concurrent callers pipeline their commands.

Error replies without an id. QEMU answers a request it cannot parse with an
error that carries no id. This client never enables out-of-band execution, so
QEMU answers requests strictly in order, and it only writes well-formed JSON
of at most :data:`MAX_COMMAND_BYTES`, so QEMU's parser answers each request
with exactly one reply. An id-less error therefore answers the oldest
command still in flight, and fails that command; the session continues. An
id-less error while nothing is in flight is *stray*: it is logged and
counted in :meth:`QMPClient.statistics` and the session continues. Any other
reply that matches no command in flight is a protocol error.

One bad message is one connection's failure. Whatever a peer sends (see
:mod:`jobctl.qmp._framing` for what a line may be, and
:func:`~jobctl.qmp._events.parse_event` for an event), the reader never
raises: a message it cannot take closes the connection with a
:class:`QMPProtocolError` naming the bad member, quoting at most a few
hundred characters of it, and every caller waiting on this connection, and
every later one, gets that error. Nothing leaves the client's task group, so
other connections (other VMs) in the same program carry on.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, final

import anyio
import attrs
from anyio.abc import AnyByteStream

from jobctl._backend import NativeEvent, native
from jobctl._groups import unwrap_single
from jobctl.qmp._errors import (
    QMPClosedError,
    QMPCommandError,
    QMPConnectTimeoutError,
    QMPProtocolError,
    QMPTimeoutError,
    command_error,
)
from jobctl.qmp._events import EventFilter, EventHub, EventListener, EventSubscription, QMPEvent
from jobctl.qmp._framing import DEFAULT_MAX_LINE, MAX_COMMAND_BYTES, LineReader, encode_command
from jobctl.qmp._greeting import QMPGreeting, parse_greeting
from jobctl.qmp._show import show
from jobctl.qmp._socket import SocketReceiver, plain_socket, send_all, send_some

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "MAX_COMMAND_BYTES",
    "QMPClient",
    "QMPStatistics",
    "open_qmp_stream",
]

_log: Final = logging.getLogger("jobctl.qmp")

#: Default time for opening a client: connecting, the greeting and the
#: capabilities negotiation together. QEMU greets at once, unless another
#: client holds its monitor: then it would wait for as long as that one
#: stays. Pass ``timeout=`` to widen it, or None for no limit.
DEFAULT_CONNECT_TIMEOUT: Final = 30.0

#: Default buffer of one event subscription.
DEFAULT_MAX_BUFFER: Final = 256

#: The members that say what a message is; a message has exactly one of them
#: (the greeting, a ``QMP`` member, comes first and only then). Other
#: members are ignored, as the QMP specification asks of clients.
_KINDS: Final = frozenset({"return", "error", "event"})

#: Largest command a caller writes on the socket itself (far under any
#: socket's send buffer); longer ones go through the writer.
_DIRECT_BYTES: Final = 4096


class _State(enum.Enum):
    QUEUED = "queued"  # waiting for the writer
    WITHDRAWN = "withdrawn"  # caller left before the writer took it; never written
    SENT = "sent"  # written by its caller, or taken by the writer; its reply will come
    ORPHANED = "orphaned"  # sent, and its caller left; the writer waits for its reply
    DONE = "done"  # answered, or failed by the connection closing


_QUEUED: Final = _State.QUEUED
_WITHDRAWN: Final = _State.WITHDRAWN
_SENT: Final = _State.SENT
_ORPHANED: Final = _State.ORPHANED
_DONE: Final = _State.DONE


@final
class _Call:
    __slots__ = ("command", "done", "id", "payload", "reply", "state")

    def __init__(self, call_id: int, command: str, payload: bytes, done: NativeEvent) -> None:
        self.id = call_id
        self.command = command
        self.payload = payload
        self.state = _QUEUED
        self.done = done
        #: The reply message; ``None`` when the connection closed first.
        self.reply: dict[str, Any] | None = None


@final
@attrs.frozen
class QMPStatistics:
    """A snapshot of one client's counters.

    ``in_flight`` commands were written and await their reply, ``orphaned``
    of them by callers that gave up; ``queued`` wait to be written (behind an
    orphan, or for the writer's next turn). ``stray_errors`` counts error
    replies without an id that came while no command was in flight.
    ``direct_writes`` of the ``commands_sent`` were written by their caller
    itself, on a plain socket with nothing in flight (no task switch to the
    writer); the others went through the writer task.
    """

    commands_sent: int
    direct_writes: int
    replies: int
    events: int
    events_dropped: int
    in_flight: int
    orphaned: int
    queued: int
    stray_errors: int
    subscriptions: int
    closed: bool


@final
class QMPClient:
    """A QMP connection in command mode; a :class:`jobctl.Monitor`.

    Get one from :func:`open_qmp_unix`, :func:`open_qmp_tcp` or
    :func:`open_qmp_stream`; it is usable inside their ``async with`` only.
    Once the connection is gone, every call raises the
    :class:`QMPClosedError` that says why.
    """

    def __init__(self, stream: AnyByteStream, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._stream = stream
        #: The event loop's own primitives: its event type, for the calls'
        #: replies, and its checkpoint before a call.
        loop = native()
        self._new_event = loop.event
        self._checkpoint_if_cancelled = loop.checkpoint_if_cancelled
        #: The stream's own socket, read directly and written by a caller
        #: when the line is clear (see :meth:`_send_now`); None for a stream
        #: that is not a plain socket (in memory, TLS, an asyncio transport's).
        self._socket = plain_socket(stream)
        #: What a direct write left unwritten (the socket was full): the
        #: writer writes it before anything else.
        self._rest = b""
        self._lines = LineReader(
            stream if self._socket is None else SocketReceiver(self._socket), max_line
        )
        self._events = EventHub()
        self._greeting: QMPGreeting | None = None
        self._greeted = anyio.Event()
        self._last_id = 0
        self._outbox: deque[_Call] = deque()
        self._in_flight: dict[int, _Call] = {}
        self._orphans = 0
        self._writer_wake = anyio.Event()
        self._closed: tuple[type[QMPClosedError], str] | None = None
        self._running = False
        self._commands_sent = 0
        self._direct_writes = 0
        self._replies = 0
        self._stray_errors = 0

    @property
    def greeting(self) -> QMPGreeting:
        """The server's greeting (version, capabilities)."""
        if self._greeting is None:
            raise RuntimeError("the QMP client has not been greeted yet")
        return self._greeting

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return self._closed is not None

    def statistics(self) -> QMPStatistics:
        """The connection's counters now (see :class:`QMPStatistics`): a
        snapshot, made fresh on each call; still readable after it closed.
        """
        return QMPStatistics(
            commands_sent=self._commands_sent,
            direct_writes=self._direct_writes,
            replies=self._replies,
            events=self._events.events,
            events_dropped=self._events.dropped,
            in_flight=len(self._in_flight),
            orphaned=self._orphans,
            queued=sum(call.state is _QUEUED for call in self._outbox),
            stray_errors=self._stray_errors,
            subscriptions=self._events.subscriptions,
            closed=self._closed is not None,
        )

    async def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` and return its reply's ``return`` value.

        Raises a :class:`QMPCommandError` subclass for an error reply,
        :class:`QMPClosedError` if the connection is or goes away
        first, :class:`QMPTimeoutError` if ``timeout`` seconds pass first, and
        :class:`TypeError` or :class:`ValueError` (before writing anything) if
        the request cannot be encoded. If the call is cancelled or times out
        after the command was written, the command stays in flight and the
        client writes no further command until its reply arrives.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout}")
        self._last_id += 1
        call = _Call(
            self._last_id,
            command,
            encode_command(command, arguments, self._last_id),
            self._new_event(),
        )
        if timeout is None:
            reply = await self._call(call)
        else:
            with anyio.move_on_after(timeout) as scope:
                reply = await self._call(call)
            if scope.cancelled_caught:
                if call.state is not _DONE:
                    raise QMPTimeoutError(command, timeout, sent=call.state is _ORPHANED)
                reply = self._reply_of(call)  # it came as the time ran out
        if "error" in reply:
            error = reply["error"]
            raise command_error(command, error["class"], error["desc"])
        return reply["return"]

    def subscribe(
        self,
        names: str | Iterable[str] | None = None,
        *,
        filter: EventFilter | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> EventSubscription:
        """Subscribe to events named ``names`` (one name, several, or ``None`` for
        all) whose ``data`` passes ``filter``.

        Events are buffered from this call on, up to ``max_buffer``; events
        that arrive while the buffer is full are dropped and counted. Use the
        subscription as a context manager so it is closed.
        """
        return self._events.subscribe(names, filter, max_buffer)

    def listen(
        self, names: str | Iterable[str] | None, callback: Callable[[QMPEvent], None]
    ) -> EventListener:
        """Call ``callback`` with each event named ``names`` (one name,
        several, or ``None`` for all) as the reader receives it, before any
        subscription sees it. For a consumer that keeps state up to date
        (nothing is buffered, so nothing is dropped); ``callback`` must not
        block, and what it raises is logged, not propagated. Close the
        listener to stop."""
        return self._events.listen(names, callback)

    # -- callers' side ---------------------------------------------------------

    async def _call(self, call: _Call) -> dict[str, Any]:
        await self._checkpoint_if_cancelled()
        if self._closed is not None:
            raise self._closed_error()
        if not self._running:
            raise RuntimeError("QMPClient is not running: get one from open_qmp_unix() & co.")
        if (
            self._socket is not None
            and not self._in_flight
            and not self._outbox
            and len(call.payload) <= _DIRECT_BYTES
        ):
            self._send_now(call)
        else:
            self._outbox.append(call)
            self._writer_wake.set()
        try:
            await call.done.wait()
        except BaseException:
            if call.state is _QUEUED:
                call.state = _WITHDRAWN
            elif call.state is _SENT:
                call.state = _ORPHANED
                self._orphans += 1
            raise
        return self._reply_of(call)

    def _send_now(self, call: _Call) -> None:
        """Write ``call`` on the socket at once, without an await, so
        nothing can interrupt it half-way and no task switch is spent on the
        writer. Only when nothing is in flight and nothing queued: everything
        written before has been read by the peer (each had its reply), so the
        socket's buffer is empty and ``payload`` (at most
        :data:`_DIRECT_BYTES`) fits; what did not fit all the same goes to
        the writer, which writes it before anything else."""
        assert self._socket is not None
        call.state = _SENT
        self._in_flight[call.id] = call
        self._commands_sent += 1
        self._direct_writes += 1
        try:
            sent = send_some(self._socket, call.payload)
        except OSError as exc:
            self._close(QMPClosedError, f"QMP connection failed while writing: {_why(exc)}")
            return
        if sent < len(call.payload):
            self._rest = call.payload[sent:]
            self._writer_wake.set()

    def _reply_of(self, call: _Call) -> dict[str, Any]:
        if call.reply is None:
            raise self._closed_error()
        return call.reply

    def _closed_error(self) -> QMPClosedError:
        assert self._closed is not None
        error_type, message = self._closed
        return error_type(message)

    # -- the connection's side ---------------------------------------------------

    async def _handshake(self) -> None:
        await self._greeted.wait()
        if self._closed is not None:
            raise self._closed_error()
        try:
            await self.execute("qmp_capabilities")
        except QMPCommandError as exc:
            raise QMPProtocolError(f"QMP capabilities negotiation failed: {exc}") from exc

    async def _write_loop(self) -> None:
        sock = self._socket
        send = self._stream.send if sock is None else partial(send_all, sock)
        outbox = self._outbox
        try:
            while self._closed is None:
                if self._rest:
                    rest, self._rest = self._rest, b""
                    await send(rest)
                    continue
                if self._orphans or not outbox:
                    self._writer_wake = anyio.Event()
                    await self._writer_wake.wait()
                    continue
                batch: list[bytes] = []
                while outbox:
                    call = outbox.popleft()
                    if call.state is _QUEUED:
                        call.state = _SENT
                        self._in_flight[call.id] = call
                        batch.append(call.payload)
                if batch:
                    self._commands_sent += len(batch)
                    await send(batch[0] if len(batch) == 1 else b"".join(batch))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._close(QMPClosedError, f"QMP connection failed while writing: {_why(exc)}")
        finally:
            self._close(QMPClosedError, "the QMP client was closed")

    async def _read_loop(self) -> None:
        """Route every message; never raises. Whatever the peer sends ends this
        connection only: a bad message closes it with a :class:`QMPProtocolError`
        naming what was wrong, which every waiter then gets."""
        try:
            await self._read_messages()
        except anyio.EndOfStream:
            self._close(QMPClosedError, "the QMP peer closed the connection")
        except QMPClosedError as exc:  # includes QMPProtocolError
            self._close(type(exc), str(exc))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._close(QMPClosedError, f"QMP connection failed while reading: {_why(exc)}")
        except Exception as exc:
            # A message this client failed on (a bug here, not in the peer):
            # still this connection's failure only, never its host's.
            _log.error("the QMP reader failed on a message", exc_info=True)
            self._close(
                QMPProtocolError,
                f"the QMP client could not handle a message from its peer: {show(exc)}",
            )
        finally:
            self._close(QMPClosedError, "the QMP client was closed")
        await anyio.aclose_forcefully(self._stream)

    async def _read_messages(self) -> None:
        receive = self._lines.receive
        self._greeting = parse_greeting(await receive())
        self._greeted.set()
        while True:
            message = await receive()
            if "return" in message and "error" not in message and "event" not in message:
                self._on_reply(message)  # the common case, decided without a set
                continue
            kinds = _KINDS.intersection(message)
            if len(kinds) > 1:
                raise QMPProtocolError(
                    f"QMP message with members {' and '.join(sorted(kinds))}: {show(message)}"
                )
            if "event" in kinds:
                self._events.dispatch(message)
            elif kinds:
                self._on_reply(message)
            else:
                raise QMPProtocolError(f"unrecognised QMP message: {show(message)}")

    def _on_reply(self, message: dict[str, Any]) -> None:
        error = None
        if "error" in message:
            error = message["error"]
            if not (
                type(error) is dict
                and type(error.get("class")) is str
                and type(error.get("desc")) is str
            ):
                raise QMPProtocolError(
                    f"malformed QMP error reply (no string 'class' and 'desc'): {show(message)}"
                )
        if "id" in message:
            call_id = message["id"]
            call = self._in_flight.pop(call_id, None) if type(call_id) is int else None
            if call is None:
                raise QMPProtocolError(
                    f"QMP reply for id {show(call_id, 60)}, which no command in flight has: "
                    f"{show(message)}"
                )
        elif error is None:
            raise QMPProtocolError(f"QMP reply without an id: {show(message)}")
        elif self._in_flight:
            # QEMU could not parse a request: in-order replies make it the oldest.
            call = self._in_flight.pop(next(iter(self._in_flight)))
            _log.warning(
                "QMP error without id, taken as the reply to %s: %s", call.command, show(error)
            )
        else:
            self._stray_errors += 1
            _log.warning("QMP error without id while no command is in flight: %s", show(error))
            return
        self._replies += 1
        if call.state is _ORPHANED:
            self._orphans -= 1
            if not self._orphans:
                self._writer_wake.set()
        else:
            call.reply = message
        call.state = _DONE
        call.done.set()

    def _close(self, error_type: type[QMPClosedError], message: str) -> None:
        """Fail every waiter at once; later calls raise ``error_type(message)``."""
        if self._closed is not None:
            return
        self._closed = (error_type, message)
        if error_type is QMPProtocolError:
            _log.warning("closing the QMP connection: %s", message)
        calls = [*self._in_flight.values(), *self._outbox]
        self._in_flight.clear()
        self._outbox.clear()
        self._orphans = 0
        for call in calls:
            if call.state is not _DONE:
                call.state = _DONE
                call.done.set()
        self._writer_wake.set()
        self._greeted.set()
        self._events.close(self._closed_error)


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return repr(cause) if cause is not None and not str(exc) else repr(exc)


@asynccontextmanager
async def open_qmp_stream(
    stream: AnyByteStream,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncIterator[QMPClient]:
    """A QMP client over ``stream``, which it owns and closes on exit.

    Reads the greeting and negotiates capabilities before yielding, within
    ``timeout`` seconds (:data:`DEFAULT_CONNECT_TIMEOUT` unless given; None
    waits without limit), else :class:`QMPConnectTimeoutError`. A line
    longer than ``max_line`` bytes (:data:`DEFAULT_MAX_LINE` by default) is
    a protocol error. Leaving the block closes the connection; calls still
    waiting raise :class:`QMPClosedError`.
    """
    limit = _Limit(timeout, "the QMP stream")
    async with _open(stream, max_line, limit) as client:
        yield client


@final
class _Limit:
    """The time ``timeout`` allows for opening a client on ``where``."""

    __slots__ = ("deadline", "timeout", "where")

    def __init__(self, timeout: float | None, where: str) -> None:
        if timeout is not None and not (
            type(timeout) in (int, float) and timeout >= 0  # not bool, not NaN
        ):
            raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
        self.timeout = timeout
        self.where = where
        self.deadline = math.inf if timeout is None else anyio.current_time() + timeout

    def expired(self, stage: str) -> QMPConnectTimeoutError:
        assert self.timeout is not None
        return QMPConnectTimeoutError(self.where, self.timeout, stage)


@asynccontextmanager
async def _open(stream: AnyByteStream, max_line: int, limit: _Limit) -> AsyncIterator[QMPClient]:
    try:
        client = QMPClient(stream, max_line=max_line)
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    try:
        async with unwrap_single(), anyio.create_task_group() as tg:
            tg.start_soon(client._read_loop)
            tg.start_soon(client._write_loop)
            client._running = True
            try:
                with anyio.CancelScope(deadline=limit.deadline) as scope:
                    await client._handshake()
                if scope.cancelled_caught:
                    raise limit.expired("greeting")
                yield client
            finally:
                client._close(QMPClosedError, "the QMP client was closed")
                tg.cancel_scope.cancel()
    finally:
        await anyio.aclose_forcefully(stream)
