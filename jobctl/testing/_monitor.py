"""An in-memory monitor for tests: replies, latency, faults, a gate that holds
commands, and a detector of overlapping commands."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, final

import anyio
import anyio.lowlevel
import attrs

from jobctl_simulators.qemu import (
    Die,
    Drop,
    ErrorReply,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Garbage,
    Latency,
    Stall,
)

__all__ = [
    "MonitorOverlap",
    "ScriptedMonitor",
    "ScriptedMonitorClosedError",
    "ScriptedMonitorStatistics",
    "ScriptedReplyError",
]

#: ``responder(command, arguments)`` gives a command's reply.
Responder = Callable[[str, Mapping[str, Any]], Any]

_NEVER: Final = -float("inf")
#: What the responder is given for a command without arguments.
_NO_ARGUMENTS: Final[Mapping[str, Any]] = MappingProxyType({})


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
    """Counters of one :class:`ScriptedMonitor` since it was made.

    ``commands`` counts every :meth:`ScriptedMonitor.execute` call;
    ``errors`` the ones that failed by the monitor's doing (closed, dropped,
    garbled, an injected error reply; not the responder's own raises);
    ``in_flight`` the commands unanswered now, ``max_in_flight`` the most
    ever at once; ``overlaps`` the commands sent while another was in
    flight (0 when the one-command rule held); ``closed`` whether it is.
    """

    commands: int
    errors: int
    in_flight: int
    max_in_flight: int
    overlaps: int
    closed: bool


class ScriptedReplyError(Exception):
    """An error reply injected by :class:`ScriptedMonitor` (an
    :class:`~jobctl_simulators.qemu.ErrorReply` fault): ``command`` names the
    command, ``desc`` and ``error_class`` are the fault's."""

    def __init__(
        self, command: str, desc: str = "injected fault", error_class: str = "GenericError"
    ) -> None:
        super().__init__(f"scripted error reply to {command!r}: {desc}")
        self.command = command
        self.desc = desc
        self.error_class = error_class

    def __reduce__(self) -> tuple[type[ScriptedReplyError], tuple[str, str, str]]:
        # Pickled as made, not from its formatted message.
        return type(self), (self.command, self.desc, self.error_class)


class ScriptedMonitorClosedError(Exception):
    """A :class:`ScriptedMonitor` is closed (by :meth:`~ScriptedMonitor.close`,
    or a :class:`~jobctl_simulators.qemu.Drop`, :class:`~jobctl_simulators.qemu.Garbage` or
    :class:`~jobctl_simulators.qemu.Die` fault): the command it names failed, and so
    does every later one."""


def _empty_reply(command: str, arguments: Mapping[str, Any]) -> Any:
    return {}


def _injector(faults: FaultPlan | Iterable[FaultRule]) -> FaultInjector | None:
    plan = faults if isinstance(faults, FaultPlan) else FaultPlan(faults)
    targets: dict[tuple[str | None, int], FaultRule] = {}
    for rule in plan.rules:
        if rule.nth is None:
            continue
        other = targets.setdefault((rule.command, rule.nth), rule)
        if other is not rule:
            raise ValueError(f"two faults scripted for one command: {other!r} and {rule!r}")
    if not plan.rules and plan.probability == 0:
        return None
    return plan.injector()


@final
class ScriptedMonitor:
    """A :class:`~jobctl.Monitor` in memory, for tests.

    Each command is answered after its latency (``latency`` is one number, or
    a sequence used in turn, command by command) by ``responder(command,
    arguments)`` (default: ``{}``; it may raise, as an error reply of your
    own), unless a fault says otherwise.

    ``faults`` are the simulator's (:class:`~jobctl_simulators.qemu.FaultRule` s, or
    a whole :class:`~jobctl_simulators.qemu.FaultPlan` with random faults), counted
    the same way: ``FaultRule(fault, nth=n)`` hits the ``n``-th command
    (from 1), ``FaultRule(fault, command="migrate")`` every ``migrate``. On
    one channel they mean:

    * :class:`~jobctl_simulators.qemu.Latency`, :class:`~jobctl_simulators.qemu.Stall`:
      the reply comes ``seconds`` later;
    * :class:`~jobctl_simulators.qemu.ErrorReply`: a :class:`ScriptedReplyError`
      after the latency;
    * :class:`~jobctl_simulators.qemu.Drop`, :class:`~jobctl_simulators.qemu.Garbage` (a
      broken reply, which a client closes on): the command fails with
      :class:`ScriptedMonitorClosedError` after its latency, and so does
      every later one (the responder is called if the command ran);
    * :class:`~jobctl_simulators.qemu.Die`: the VM is dead before the command is
      written: it and every later command fail at once.

    It behaves like a real serial channel: a command whose caller is
    cancelled stays on the wire until its reply time, and the next command
    waits for that (the :class:`~jobctl.Monitor` contract). :meth:`hold`
    makes the commands that come from then on wait for :meth:`release`
    before their latency starts (a VM that does not answer yet); a held
    command that is cancelled is on the wire until its reply, its latency
    after the release. :meth:`close` fails every command in flight and
    every later one with :class:`ScriptedMonitorClosedError`.

    ``log`` lists every command received; its detector records a
    :class:`MonitorOverlap` whenever ``execute`` is entered while another
    call has not returned, which a correct job core never does;
    ``overlaps`` lists them.
    """

    __slots__ = (
        "_calls",
        "_closed",
        "_count",
        "_errors",
        "_faults",
        "_gate",
        "_held_delay",
        "_instant",
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
        faults: FaultPlan | Iterable[FaultRule] = (),
        responder: Responder | None = None,
    ) -> None:
        latencies = (latency,) if isinstance(latency, int | float) else tuple(latency)
        if not latencies or any(not x >= 0 for x in latencies):
            raise ValueError(
                f"latency must be >= 0 (or a non-empty sequence of such), not {latency!r}"
            )
        self._latency = latencies
        self._faults = _injector(faults)
        #: No latency and no fault: every command is answered at once.
        self._instant = self._faults is None and not any(latencies)
        self._responder = _empty_reply if responder is None else responder
        self._count = 0
        self._errors = 0
        self._calls: list[str] = []
        self._max_in_flight = 0
        self._overlaps: list[MonitorOverlap] = []
        self._closed = False
        self._scopes: dict[anyio.CancelScope, None] = {}
        self._wire_busy_until = _NEVER
        self._gate: anyio.Event | None = None
        #: The latest reply time, counted from the release, of a held command
        #: that was cancelled (None: there is none).
        self._held_delay: float | None = None
        #: Every command received, in order.
        self.log: list[str] = []

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or a fault closed the channel):
        every command then fails with :class:`ScriptedMonitorClosedError`.
        """
        return self._closed

    @property
    def held(self) -> bool:
        """Whether commands wait for :meth:`release`."""
        return self._gate is not None

    @property
    def overlaps(self) -> tuple[MonitorOverlap, ...]:
        """Every time the detector saw two commands in flight."""
        return tuple(self._overlaps)

    def hold(self) -> None:
        """From now on, commands wait for :meth:`release` before their
        latency starts. Idempotent."""
        if self._gate is None:
            self._gate = anyio.Event()

    def release(self) -> None:
        """Let the held commands (and later ones) go on. Idempotent."""
        gate, self._gate = self._gate, None
        if gate is None:
            return
        if self._held_delay is not None:
            # A held command that was cancelled gets its reply now.
            reply_at = anyio.current_time() + self._held_delay
            self._wire_busy_until = max(self._wire_busy_until, reply_at)
            self._held_delay = None
        gate.set()

    def close(self) -> None:
        """The channel is gone: commands in flight (held ones too) and later
        ones fail with :class:`ScriptedMonitorClosedError`. Idempotent."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()

    def statistics(self) -> ScriptedMonitorStatistics:
        """The monitor's counters now (see :class:`ScriptedMonitorStatistics`):
        a snapshot, made fresh on each call.
        """
        return ScriptedMonitorStatistics(
            commands=self._count,
            errors=self._errors,
            in_flight=len(self._calls),
            max_in_flight=self._max_in_flight,
            overlaps=len(self._overlaps),
            closed=self._closed,
        )

    def _closed_error(self, command: str, why: str = "closed") -> ScriptedMonitorClosedError:
        self._errors += 1
        return ScriptedMonitorClosedError(f"scripted monitor {why} (command {command!r})")

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run ``command``; see the class docstring for latency and faults."""
        if not isinstance(command, str) or not command:
            raise TypeError(f"a monitor command is a non-empty string, not {command!r}")
        index = self._count
        self._count = index + 1
        self.log.append(command)
        calls = self._calls
        if calls:
            self._overlaps.append(MonitorOverlap(anyio.current_time(), command, tuple(calls)))
        calls.append(command)
        if len(calls) > self._max_in_flight:
            self._max_in_flight = len(calls)
        try:
            if self._instant and self._gate is None and self._wire_busy_until == _NEVER:
                # Answered at once: one checkpoint, as any real await (the
                # benches' monitor: keep this path short).
                await anyio.lowlevel.checkpoint()
                if self._closed:
                    raise self._closed_error(command)
                return self._responder(command, _NO_ARGUMENTS if arguments is None else arguments)
            return await self._run(index, command, arguments)
        finally:
            calls.remove(command)

    async def _run(self, index: int, command: str, arguments: Mapping[str, Any] | None) -> Any:
        fault = None if self._faults is None else self._faults.decide(command)
        if isinstance(fault, Die):
            self.close()
        if self._closed:
            await anyio.lowlevel.checkpoint()
            raise self._closed_error(command)
        delay = self._latency[index % len(self._latency)]
        if isinstance(fault, Latency | Stall):
            delay += fault.seconds
        if delay or self._gate is not None or self._wire_busy_until != _NEVER:
            await self._wait_for_reply(delay)
        else:
            await anyio.lowlevel.checkpoint()
        if self._closed:
            raise self._closed_error(command)
        if isinstance(fault, ErrorReply):
            self._errors += 1
            raise ScriptedReplyError(command, fault.desc, fault.error_class)
        given = _NO_ARGUMENTS if arguments is None else arguments
        if isinstance(fault, Drop | Garbage):
            if isinstance(fault, Garbage) or fault.execute:
                self._responder(command, given)
            self.close()
            raise self._closed_error(command, "dropped" if isinstance(fault, Drop) else "garbled")
        return self._responder(command, given)

    async def _wait_for_reply(self, delay: float) -> None:
        with anyio.CancelScope() as scope:
            self._scopes[scope] = None
            try:
                gate = self._gate
                if gate is not None:
                    try:
                        await gate.wait()
                    except BaseException:
                        held = self._held_delay
                        self._held_delay = delay if held is None else max(held, delay)
                        raise
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
        # Only close() cancels this scope: the caller sees the monitor closed.

    def __repr__(self) -> str:
        return (
            f"<ScriptedMonitor {self._count} commands, {len(self._overlaps)} overlaps"
            f"{', closed' if self._closed else ''}>"
        )
