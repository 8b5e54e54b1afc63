"""The trace: one stream of structured events for every job-layer transition.

The property tests, the metrics and the live feed all read this one stream.
Emitting costs one attribute check when nobody listens.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, final

import anyio
import attrs

__all__ = [
    "TRACE_SCHEMA_VERSION",
    "TraceEvent",
    "TraceHub",
    "TraceKind",
    "TraceListener",
    "TraceSubscription",
    "default_trace_hub",
]

#: Version of :meth:`TraceEvent.to_json`'s shape; bumped on incompatible change.
TRACE_SCHEMA_VERSION: Final = 1

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@enum.unique
class TraceKind(enum.StrEnum):
    """What a :class:`TraceEvent` records."""

    #: A job request had to queue (``detail``: ``async``, ``position`` in the
    #: queue, 0 first).
    JOB_WAIT = "job.wait"
    #: A queued request stopped waiting without a job (``detail``: ``result`` =
    #: ``timeout`` | ``cancelled``). Requests refused at once (``nowait``, a
    #: full queue) never queued and emit nothing.
    JOB_WAIT_FAILED = "job.wait_failed"
    #: A regular job began (``detail``: ``in_section``, ``waited``).
    JOB_BEGIN = "job.begin"
    #: A regular job ended (``detail``: ``outcome`` = ``ok`` | ``error`` | ``cancelled``).
    JOB_END = "job.end"
    #: An async job began (``detail``: ``allowed``, ``waited``).
    ASYNC_BEGIN = "async.begin"
    #: An async job ended (``detail``: ``outcome`` = ``ok`` | ``error`` |
    #: ``cancelled`` | ``aborted`` | ``destroyed``, ``error``).
    ASYNC_END = "async.end"
    #: The async job named a new phase (``detail``: ``phase``).
    ASYNC_PHASE = "async.phase"
    #: The async job changed its allowed mask (``detail``: ``allowed``).
    ASYNC_ALLOWED = "async.allowed"
    #: The async job reported progress (``detail``: ``progress``).
    ASYNC_PROGRESS = "async.progress"
    #: An interruptible section opened: allowed regular jobs may begin.
    GATE_OPEN = "gate.open"
    #: The section is closing: no new regular job may begin.
    GATE_CLOSE = "gate.close"
    #: The barrier started: regular jobs that began in the section still run
    #: (``detail``: ``pending`` = their job ids).
    BARRIER_START = "barrier.start"
    #: The last regular job of the section ended (``detail``: ``waited``).
    BARRIER_END = "barrier.end"
    #: A job entered the domain's monitor.
    MONITOR_ENTER = "monitor.enter"
    #: A job left the domain's monitor.
    MONITOR_EXIT = "monitor.exit"
    #: A command was handed to the monitor (``detail``: ``command``).
    COMMAND_SENT = "command.sent"
    #: A command's reply came back (``detail``: ``command``, ``outcome`` =
    #: ``ok`` | ``error`` | ``cancelled``, ``error``).
    COMMAND_ANSWERED = "command.answered"
    #: ``Domain.abort`` was asked to abort the async job (``detail``: ``reason``).
    ABORT_REQUEST = "abort.request"
    #: A DESTROY request pre-empted the async job.
    DESTROY_REQUEST = "destroy.request"


@final
@attrs.frozen(slots=True)
class TraceEvent:
    """One job-layer transition.

    ``time`` is the event loop's clock (virtual under trio's ``MockClock``);
    ``seq`` orders events totally across all domains of one process.
    ``job`` is the job kind's name (``"QUERY"``, ``"MIGRATION_OUT"``) and
    ``job_id`` the job's process-unique id, where the event concerns a job.
    """

    seq: int
    time: float
    domain: str
    kind: TraceKind
    job_id: int | None = None
    job: str | None = None
    owner: str | None = None
    detail: Mapping[str, Any] = _EMPTY

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict (schema :data:`TRACE_SCHEMA_VERSION`)."""
        return {
            "v": TRACE_SCHEMA_VERSION,
            "seq": self.seq,
            "t": self.time,
            "domain": self.domain,
            "kind": self.kind.value,
            "job_id": self.job_id,
            "job": self.job,
            "owner": self.owner,
            "detail": dict(self.detail),
        }


#: A trace listener is called synchronously, in the emitting task, for every
#: event. It must not block or raise; push into a bounded buffer instead.
TraceListener = Callable[[TraceEvent], None]


@final
class TraceSubscription:
    """A registered listener; ``close()`` (or leaving its ``with`` block) removes it."""

    __slots__ = ("_hub", "_listener")

    def __init__(self, hub: TraceHub, listener: TraceListener) -> None:
        self._hub = hub
        self._listener = listener

    def close(self) -> None:
        """Stop delivering events to the listener. Idempotent."""
        self._hub._remove(self._listener)

    def __enter__(self) -> TraceSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_seq = itertools.count(1)


@final
class TraceHub:
    """Fans trace events out to listeners.

    Domains share :data:`default_trace_hub` unless given their own. ``active``
    is False while nobody listens, and emitters check it before building an
    event, so an unobserved trace costs next to nothing.
    """

    __slots__ = ("_listeners", "active")

    def __init__(self) -> None:
        self._listeners: tuple[TraceListener, ...] = ()
        self.active = False

    def subscribe(self, listener: TraceListener) -> TraceSubscription:
        """Deliver every later event to ``listener`` until the subscription closes."""
        self._listeners = (*self._listeners, listener)
        self.active = True
        return TraceSubscription(self, listener)

    def _remove(self, listener: TraceListener) -> None:
        listeners = list(self._listeners)
        if listener in listeners:
            listeners.remove(listener)
        self._listeners = tuple(listeners)
        self.active = bool(listeners)

    def emit(
        self,
        domain: str,
        kind: TraceKind,
        job_id: int | None = None,
        job: str | None = None,
        owner: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Build one event and hand it to every listener (no-op when inactive)."""
        if not self.active:
            return
        event = TraceEvent(
            next(_seq),
            anyio.current_time(),
            domain,
            kind,
            job_id,
            job,
            owner,
            _EMPTY if not detail else MappingProxyType(dict(detail)),
        )
        for listener in self._listeners:
            listener(event)


#: The hub every :class:`~jobctl.Domain` uses unless given another.
default_trace_hub: Final = TraceHub()
