"""An in-memory monitor with latency, injected faults and an in-flight detector."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._core._errors import MonitorClosedError, MonitorError

__all__ = [
    "FaultKind",
    "MonitorFault",
    "MonitorOverlap",
    "ScriptedMonitor",
    "ScriptedMonitorStatistics",
    "ScriptedReplyError",
]

Responder = Callable[[str, Mapping[str, Any]], Any]


@enum.unique
class FaultKind(enum.Enum):
    """What goes wrong at a scripted command."""

    #: The command gets an error reply (:class:`ScriptedReplyError`) after its latency.
    ERROR = "error"
    #: The reply comes ``seconds`` later than the latency says.
    STALL = "stall"
    #: The connection drops while the command is in flight: it fails with
    #: :class:`~jobctl.MonitorClosedError` after its latency, and so does every
    #: later command.
    DROP = "drop"
    #: The VM is dead before the command is written: it and every later
    #: command fail at once with :class:`~jobctl.MonitorClosedError`.
    DEATH = "death"


@final
@attrs.frozen(repr=False)
class MonitorFault:
    """A fault injected at the monitor's ``at``-th command (counting from 0);
    ``seconds`` is a STALL's extra delay."""

    kind: FaultKind
    at: int = attrs.field()
    seconds: float = 0.0

    @at.validator
    def _check_at(self, attribute: object, value: int) -> None:
        if value < 0:
            raise ValueError(f"a fault's command index must be >= 0, not {value!r}")

    def __repr__(self) -> str:
        stall = f", seconds={self.seconds!r}" if self.kind is FaultKind.STALL else ""
        return f"MonitorFault(FaultKind.{self.kind.name}, at={self.at}{stall})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@final
@attrs.frozen
class MonitorOverlap:
    """The detector saw ``command`` start at ``time`` while ``in_flight`` had not
    returned: the monitor's user broke "one command in flight"."""

    time: float
    command: str
    in_flight: tuple[str, ...]


@final
@attrs.frozen
class ScriptedMonitorStatistics:
    commands: int
    errors: int
    in_flight: int
    max_in_flight: int
    overlaps: int
    closed: bool


class ScriptedReplyError(MonitorError):
    """An error reply injected by :class:`ScriptedMonitor` (``command`` names it)."""

    def __init__(self, command: str) -> None:
        super().__init__(f"scripted error reply to {command!r}")
        self.command = command


def _empty_reply(command: str, arguments: Mapping[str, Any]) -> Any:
    return {}


@final
class ScriptedMonitor:
    """A :class:`~jobctl.Monitor` in memory, for tests.

    Each command is answered after its latency (``latency`` is one number, or
    a sequence used in turn, command by command) by ``responder(command,
    arguments)`` (default: ``{}``), unless a :class:`MonitorFault` scripted
    for that command says otherwise.

    It behaves like a real serial channel: a command whose caller is
    cancelled stays on the wire until its reply time, and the next command
    waits for that (the :class:`~jobctl.Monitor` contract). :meth:`close`
    fails every command in flight and every later one with
    :class:`~jobctl.MonitorClosedError`.

    Its detector records a :class:`MonitorOverlap` whenever ``execute`` is
    entered while another call has not returned, which a correct job core
    never does; ``overlaps`` lists them.
    """

    __slots__ = (
        "_calls",
        "_closed",
        "_count",
        "_errors",
        "_faults",
        "_latency",
        "_max_in_flight",
        "_overlaps",
        "_responder",
        "_scopes",
        "_wire_busy_until",
        "log",
    )

    def __init__(
        self,
        *,
        latency: float | Sequence[float] = 0.0,
        faults: Iterable[MonitorFault] = (),
        responder: Responder | None = None,
    ) -> None:
        latencies = (latency,) if isinstance(latency, int | float) else tuple(latency)
        if not latencies or any(not x >= 0 for x in latencies):
            raise ValueError(
                f"latency must be >= 0 (or a non-empty sequence of such), not {latency!r}"
            )
        self._latency = latencies
        self._faults: dict[int, MonitorFault] = {}
        for fault in faults:
            if fault.at in self._faults:
                raise ValueError(f"two faults scripted for command {fault.at}")
            self._faults[fault.at] = fault
        self._responder = _empty_reply if responder is None else responder
        self._count = 0
        self._errors = 0
        self._calls: list[str] = []
        self._max_in_flight = 0
        self._overlaps: list[MonitorOverlap] = []
        self._closed = False
        self._scopes: dict[anyio.CancelScope, None] = {}
        self._wire_busy_until = -float("inf")
        #: Every command received, in order.
        self.log: list[str] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def overlaps(self) -> tuple[MonitorOverlap, ...]:
        """Every time the detector saw two commands in flight."""
        return tuple(self._overlaps)

    def close(self) -> None:
        """The channel is gone: commands in flight and later ones fail with
        :class:`~jobctl.MonitorClosedError`. Idempotent."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()

    def statistics(self) -> ScriptedMonitorStatistics:
        return ScriptedMonitorStatistics(
            commands=self._count,
            errors=self._errors,
            in_flight=len(self._calls),
            max_in_flight=self._max_in_flight,
            overlaps=len(self._overlaps),
            closed=self._closed,
        )

    def _closed_error(self, command: str) -> MonitorClosedError:
        self._errors += 1
        return MonitorClosedError(f"scripted monitor closed (command {command!r})")

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run ``command``; see the class docstring for latency and faults."""
        if not isinstance(command, str) or not command:
            raise TypeError(f"a monitor command is a non-empty string, not {command!r}")
        index = self._count
        self._count += 1
        self.log.append(command)
        if self._calls:
            self._overlaps.append(MonitorOverlap(anyio.current_time(), command, tuple(self._calls)))
        self._calls.append(command)
        self._max_in_flight = max(self._max_in_flight, len(self._calls))
        try:
            return await self._run(index, command, dict(arguments or {}))
        finally:
            self._calls.remove(command)

    async def _run(self, index: int, command: str, arguments: dict[str, Any]) -> Any:
        fault = self._faults.get(index)
        if fault is not None and fault.kind is FaultKind.DEATH:
            self.close()
        if self._closed:
            await anyio.lowlevel.checkpoint()
            raise self._closed_error(command)
        delay = self._latency[index % len(self._latency)]
        if fault is not None and fault.kind is FaultKind.STALL:
            delay += fault.seconds
        with anyio.CancelScope() as scope:
            self._scopes[scope] = None
            try:
                # A cancelled earlier command is still on the wire.
                if self._wire_busy_until > anyio.current_time():
                    await anyio.sleep_until(self._wire_busy_until)
                reply_at = anyio.current_time() + delay
                try:
                    await anyio.sleep_until(reply_at)
                except BaseException:
                    self._wire_busy_until = max(self._wire_busy_until, reply_at)
                    raise
            finally:
                del self._scopes[scope]
        if scope.cancelled_caught or self._closed:
            raise self._closed_error(command)
        if fault is not None and fault.kind is FaultKind.DROP:
            self.close()
            raise self._closed_error(command)
        if fault is not None and fault.kind is FaultKind.ERROR:
            self._errors += 1
            raise ScriptedReplyError(command)
        return self._responder(command, arguments)

    def __repr__(self) -> str:
        return (
            f"<ScriptedMonitor {self._count} commands, {len(self._overlaps)} overlaps"
            f"{', closed' if self._closed else ''}>"
        )
