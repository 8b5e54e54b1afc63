"""The trace: one stream of structured events for every job-layer transition.

The property tests, the metrics and the live feed all read this one stream.
Emitting costs one attribute check when nobody listens.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, final

import attrs

from jobctl._backend import native

__all__ = [
    "TRACE_SCHEMA_VERSION",
    "TRACE_VALUES",
    "TraceEvent",
    "TraceHub",
    "TraceKind",
    "TraceListener",
    "TraceSubscription",
    "default_trace_hub",
]

#: Version of :meth:`TraceEvent.to_json`'s shape; bumped on incompatible change.
TRACE_SCHEMA_VERSION: Final = 2

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@enum.unique
class TraceKind(enum.StrEnum):
    """What a :class:`TraceEvent` records."""

    # Every job request is decided once, and the decision is one event:
    # job.begin / async.begin with ``waited`` false (begun at once), job.wait
    # (queued; a later job.begin / async.begin with ``waited`` true, or a
    # job.wait_failed, ends the wait) or job.refused.

    #: A job request had to queue (``detail``: ``async``, ``position`` in the
    #: queue, 0 first; ``timeout``, the wait's limit in seconds or None;
    #: ``counted``, whether it counts against ``max_queued``; ``queued``, the
    #: counted waiters before it; ``max_queued``; for an async job, ``allowed``).
    JOB_WAIT = "job.wait"
    #: A queued request stopped waiting without a job (``detail``: ``result`` =
    #: ``timeout`` | ``cancelled``, ``waited`` in seconds).
    JOB_WAIT_FAILED = "job.wait_failed"
    #: A job request was refused at once, without queueing (``detail``:
    #: ``reason`` = ``busy`` (``nowait``) | ``queue_full``, ``async``,
    #: ``queued``, ``max_queued``).
    JOB_REFUSED = "job.refused"
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
    #: A job's monitor session had to queue for the monitor (``detail``:
    #: ``position``, 0 first).
    MONITOR_WAIT = "monitor.wait"
    #: A queued monitor session stopped waiting without the monitor
    #: (``detail``: ``result`` = ``cancelled`` | ``job_ended``).
    MONITOR_WAIT_FAILED = "monitor.wait_failed"
    #: A ``nowait`` monitor entry found the monitor taken (``detail``: ``holder``,
    #: the holder's job id or None for earlier waiters).
    MONITOR_REFUSED = "monitor.refused"
    #: A job was given the domain's monitor (``detail``: ``waited``). Emitted
    #: when the monitor is handed over, before the new holder's task resumes.
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
    #: The abort hook succeeded and the async job's section was cancelled
    #: (``detail``: ``reason``); the job will end with ``aborted``.
    ABORT_DELIVERED = "abort.delivered"
    #: The abort did not take effect: the hook failed or was cancelled
    #: (``detail``: ``reason``, ``error``); the async job goes on.
    ABORT_FAILED = "abort.failed"
    #: A DESTROY request pre-empts the running async job (emitted before the
    #: DESTROY job's own request is decided).
    DESTROY_REQUEST = "destroy.request"
    #: The pre-empted async job's body was cancelled: at once when its body
    #: runs, or as it enters its body when it had been granted but had not
    #: resumed yet.
    DESTROY_DELIVERED = "destroy.delivered"
    #: A trace listener raised and was unsubscribed (``detail``: ``listener``,
    #: ``error``); ``job_id`` and ``job`` are those of the event it failed on.
    LISTENER_FAILED = "trace.listener_failed"


#: The closed vocabularies of the trace (schema 2): for these kinds, these
#: ``detail`` fields take only these values. The checker reports any other.
TRACE_VALUES: Final[Mapping[TraceKind, Mapping[str, frozenset[str]]]] = MappingProxyType(
    {
        TraceKind.JOB_WAIT_FAILED: {"result": frozenset({"timeout", "cancelled"})},
        TraceKind.JOB_REFUSED: {"reason": frozenset({"busy", "queue_full"})},
        TraceKind.JOB_END: {"outcome": frozenset({"ok", "error", "cancelled"})},
        TraceKind.ASYNC_END: {
            "outcome": frozenset({"ok", "error", "cancelled", "aborted", "destroyed"})
        },
        TraceKind.MONITOR_WAIT_FAILED: {"result": frozenset({"cancelled", "job_ended"})},
        TraceKind.COMMAND_ANSWERED: {"outcome": frozenset({"ok", "error", "cancelled"})},
    }
)


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
#: event. It must not block; it should not raise (push into a bounded buffer
#: instead). A listener that raises is unsubscribed, counted in
#: ``TraceHub.failed_listeners`` and reported to the other listeners as a
#: ``trace.listener_failed`` event; the emitter never sees the error.
TraceListener = Callable[[TraceEvent], None]


@final
class TraceSubscription:
    """A registered listener; ``close()`` (or leaving its ``with`` block) removes it."""

    __slots__ = ("_hub", "_listener", "kinds")

    def __init__(
        self, hub: TraceHub, listener: TraceListener, kinds: frozenset[TraceKind] | None
    ) -> None:
        self._hub = hub
        self._listener = listener
        #: The kinds of event delivered to the listener; None: every kind.
        self.kinds = kinds

    @property
    def active(self) -> bool:
        """Whether events are still delivered to the listener."""
        return self in self._hub._subscriptions

    def close(self) -> None:
        """Stop delivering events to the listener. Idempotent; other
        subscriptions of the same listener stay."""
        self._hub._remove(self)

    def __enter__(self) -> TraceSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_seq = itertools.count(1)


@final
class TraceHub:
    """Fans trace events out to listeners.

    Domains share :data:`default_trace_hub` unless given their own. ``active``
    is False while nobody listens, and ``wanted`` holds the kinds some
    listener takes (a subscription may take only some kinds); emitters check
    it before building an event, so an event nobody takes costs next to
    nothing.

    Guarantee: ``emit`` never raises. A listener that raises is dropped (see
    :data:`TraceListener`); every other listener still gets every event.
    """

    __slots__ = ("_subscriptions", "active", "failed_listeners", "wanted")

    def __init__(self) -> None:
        self._subscriptions: tuple[TraceSubscription, ...] = ()
        self.active = False
        #: The kinds of event some listener takes now (read-only; empty
        #: while nobody listens).
        self.wanted: frozenset[TraceKind] = frozenset()
        #: Listeners dropped because they raised.
        self.failed_listeners = 0

    def subscribe(
        self, listener: TraceListener, *, kinds: Iterable[TraceKind] | None = None
    ) -> TraceSubscription:
        """Deliver every later event to ``listener`` until the subscription
        closes; with ``kinds``, only events of those kinds (a listener that
        reads a few kinds spares the emitters building the others, when no
        other listener takes them)."""
        taken = None
        if kinds is not None:
            taken = frozenset(kinds)
            if not all(isinstance(kind, TraceKind) for kind in taken):
                raise TypeError(f"kinds must be TraceKind members, not {sorted(map(repr, taken))}")
        subscription = TraceSubscription(self, listener, taken)
        self._subscriptions = (*self._subscriptions, subscription)
        self._update()
        return subscription

    def wants(self, kind: TraceKind) -> bool:
        """Whether some listener takes events of ``kind`` now."""
        return kind in self.wanted

    def _remove(self, subscription: TraceSubscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        self._update()

    def _update(self) -> None:
        self.active = bool(self._subscriptions)
        wanted: set[TraceKind] = set()
        for subscription in self._subscriptions:
            if subscription.kinds is None:
                wanted = set(TraceKind)
                break
            wanted |= subscription.kinds
        self.wanted = frozenset(wanted)

    def emit(
        self,
        domain: str,
        kind: TraceKind,
        job_id: int | None = None,
        job: str | None = None,
        owner: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Build one event and hand it to every listener that takes its kind
        (no-op when none does). ``detail`` is copied: the event never
        changes with it."""
        if kind in self.wanted:
            self.emit_owned(domain, kind, job_id, job, owner, None if not detail else dict(detail))

    def emit_owned(
        self,
        domain: str,
        kind: TraceKind,
        job_id: int | None,
        job: str | None,
        owner: str | None,
        detail: dict[str, Any] | None,
    ) -> None:
        """:meth:`emit`, for an emitter that hands ``detail`` over: a dict
        made for this event that nothing else holds (it is not copied)."""
        if kind not in self.wanted:
            return
        event = TraceEvent(
            next(_seq),
            native().current_time(),
            domain,
            kind,
            job_id,
            job,
            owner,
            _EMPTY if not detail else MappingProxyType(detail),
        )
        failed: list[tuple[TraceSubscription, Exception]] = []
        for subscription in self._subscriptions:
            if subscription.kinds is not None and kind not in subscription.kinds:
                continue
            try:
                subscription._listener(event)
            except Exception as error:
                failed.append((subscription, error))
        for subscription, exc in failed:
            self._remove(subscription)
            self.failed_listeners += 1
            self.emit(
                domain,
                TraceKind.LISTENER_FAILED,
                job_id,
                job,
                owner,
                {
                    "listener": repr(subscription._listener),
                    "error": f"{type(exc).__name__}: {exc}",
                    "event": kind.value,
                },
            )


#: The hub every :class:`~jobctl.Domain` uses unless given another.
default_trace_hub: Final = TraceHub()
