"""The concurrency detector: did a client ever have two commands in flight?

QEMU answers a monitor's commands one at a time and in order, and a client
that pipelines cannot tell which reply is whose once an error reply without
``id`` or a dropped connection gets in the way. jobctl promises one command in
flight per monitor; this detector checks the promise from the other end.

Per connection it records when each request arrived (its last byte parsed)
and when its reply was written, and counts as a *violation* every request
that arrives while an earlier one of the same connection is unanswered.
Everything a client sends that earns a reply counts as a request, including
malformed JSON. A request whose reply never came (dropped connection, dead
VM) stays unanswered.

In strict mode the first violation raises
:class:`~jobctl_simulators.qemu.ConcurrencyViolationError` out of the serving task:
the VM crashes and the error leaves its ``async with`` block, so a test run
fails at once and names the two commands.
"""

from __future__ import annotations

import collections
from typing import final

import anyio
import attrs

from ._errors import ConcurrencyViolationError

__all__ = [
    "ConcurrencyDetector",
    "ConcurrencyViolation",
    "ConnectionLog",
    "DetectorStatistics",
    "RequestRecord",
]


@final
@attrs.frozen
class RequestRecord:
    """One request of one connection. Times are the event loop's clock."""

    connection: str
    seq: int
    command: str
    arrived_at: float
    answered_at: float | None
    #: The command that was unanswered when this one arrived (a violation).
    overlapped: str | None


@final
@attrs.frozen
class ConcurrencyViolation:
    """A request that arrived while ``pending`` was unanswered."""

    connection: str
    command: str
    pending: str
    at: float


@final
@attrs.frozen
class DetectorStatistics:
    """Counters of one :class:`ConcurrencyDetector` since it was made.

    ``connections`` counts the connections recorded, ``commands`` the
    requests that arrived, ``answered`` those replied to, ``violations``
    the requests that arrived while another of their connection was
    unanswered; unlike :meth:`ConcurrencyDetector.records`, none is ever
    dropped.
    """

    connections: int
    commands: int
    answered: int
    violations: int
    #: The most requests one connection ever had unanswered at once.
    max_in_flight: int


@attrs.define
class _Entry:
    connection: str
    seq: int
    command: str
    arrived_at: float
    answered_at: float | None = None
    overlapped: str | None = None

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            self.connection,
            self.seq,
            self.command,
            self.arrived_at,
            self.answered_at,
            self.overlapped,
        )


@final
class ConcurrencyDetector:
    """Counts commands sent while another of the same connection is unanswered.

    One detector serves every connection of a :class:`~jobctl_simulators.qemu.SimulatedHost`.
    ``max_records`` bounds the history kept for :meth:`records` (oldest
    dropped first); counts are never dropped.
    """

    def __init__(self, *, strict: bool = False, max_records: int = 10_000) -> None:
        if max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {max_records}")
        self.strict = strict
        self._records: collections.deque[_Entry] = collections.deque(maxlen=max_records)
        self._violations: list[ConcurrencyViolation] = []
        self._connections = 0
        self._commands = 0
        self._answered = 0
        self._max_in_flight = 0

    @property
    def violation_count(self) -> int:
        """How many violations were seen so far."""
        return len(self._violations)

    def violations(self) -> tuple[ConcurrencyViolation, ...]:
        """Every violation seen so far, oldest first (never dropped, whatever
        ``max_records`` is).
        """
        return tuple(self._violations)

    def records(self, connection: str | None = None) -> tuple[RequestRecord, ...]:
        """The recorded requests, oldest first (of one connection if given)."""
        return tuple(
            entry.freeze()
            for entry in self._records
            if connection is None or entry.connection == connection
        )

    def statistics(self) -> DetectorStatistics:
        """The detector's counters now (see :class:`DetectorStatistics`)."""
        return DetectorStatistics(
            connections=self._connections,
            commands=self._commands,
            answered=self._answered,
            violations=len(self._violations),
            max_in_flight=self._max_in_flight,
        )

    def open(self, connection: str) -> ConnectionLog:
        """Start recording a new connection (used by the simulator)."""
        self._connections += 1
        return ConnectionLog(self, connection)

    def _arrived(self, log: ConnectionLog, entry: _Entry) -> None:
        self._commands += 1
        self._records.append(entry)
        self._max_in_flight = max(self._max_in_flight, len(log.in_flight))
        if entry.overlapped is not None:
            violation = ConcurrencyViolation(
                entry.connection, entry.command, entry.overlapped, entry.arrived_at
            )
            self._violations.append(violation)
            if self.strict:
                raise ConcurrencyViolationError(
                    violation.connection, violation.command, violation.pending, violation.at
                )

    def _answered_one(self) -> None:
        self._answered += 1


@final
class ConnectionLog:
    """The detector's view of one connection."""

    def __init__(self, detector: ConcurrencyDetector, connection: str) -> None:
        self.connection = connection
        self._detector = detector
        self._seq = 0
        self.in_flight: collections.deque[_Entry] = collections.deque()

    def arrived(self, command: str) -> _Entry:
        """Record a request; in strict mode raise on a violation."""
        self._seq += 1
        entry = _Entry(self.connection, self._seq, command, anyio.current_time())
        if self.in_flight:
            entry.overlapped = self.in_flight[0].command
        self.in_flight.append(entry)
        self._detector._arrived(self, entry)
        return entry

    def answered(self, entry: _Entry) -> None:
        """Record that ``entry``'s reply was written."""
        entry.answered_at = anyio.current_time()
        self.in_flight.remove(entry)
        self._detector._answered_one()
