"""Recording a domain's trace for later checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import final

import sniffio
import trio
import trio.testing

from jobctl._core._fold import TracedDomain, fold_trace
from jobctl._core._trace import TraceEvent, TraceHub, TraceKind, TraceSubscription
from jobctl.testing._decisions import INSTANT, REAL_TIME_INSTANT
from jobctl.testing._format import format_events
from jobctl.testing._invariants import InvariantChecker


def on_virtual_clock() -> bool:
    """Whether the running event loop keeps virtual time (trio's
    ``MockClock`` or jobctl's :class:`VirtualEventLoop`)."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    if library == "trio":
        return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    from jobctl.testing._virtual import VirtualEventLoop

    return isinstance(asyncio.get_running_loop(), VirtualEventLoop)


__all__ = ["TraceRecorder"]


@final
class TraceRecorder:
    """Keeps every event of a :class:`~jobctl.TraceHub` while subscribed.

    ``TraceRecorder()`` makes its own hub: pass ``recorder.hub`` to the
    domains under test (``Domain(name, trace=recorder.hub)``). Use it as a
    context manager, or call :meth:`close` to unsubscribe. ``domains`` keeps
    only those domains' events (useful on the shared default hub).
    """

    __slots__ = ("_domains", "_events", "_real_time", "_subscription", "hub")

    def __init__(
        self, hub: TraceHub | None = None, *, domains: Iterable[str] | None = None
    ) -> None:
        self.hub = TraceHub() if hub is None else hub
        self._domains = None if domains is None else frozenset(domains)
        self._events: list[TraceEvent] = []
        #: Whether an event was recorded on a real (not virtual) clock.
        self._real_time = False
        self._subscription: TraceSubscription | None = self.hub.subscribe(self._record)

    def _record(self, event: TraceEvent) -> None:
        if self._domains is None or event.domain in self._domains:
            if not self._events:
                self._real_time = not on_virtual_clock()
            self._events.append(event)

    @property
    def events(self) -> tuple[TraceEvent, ...]:
        """The events recorded so far, in order."""
        return tuple(self._events)

    def of(self, *kinds: TraceKind, domain: str | None = None) -> list[TraceEvent]:
        """The recorded events of these kinds (all kinds if none given),
        optionally of one domain."""
        return [
            e
            for e in self._events
            if (not kinds or e.kind in kinds) and (domain is None or e.domain == domain)
        ]

    def state(self, domain: str) -> TracedDomain:
        """``domain`` as the recorded events tell it: the core's fold
        (:func:`jobctl.fold_trace`) of its events, ``TracedDomain(domain)``
        if none was recorded. It is the domain's state when the recording
        started at the domain's start and was not cleared since. Raises what
        the fold raises on a malformed event."""
        return fold_trace(domain, self._events)

    def clear(self) -> None:
        """Forget the events recorded so far (and with them :meth:`state`)."""
        self._events.clear()

    def check(
        self, *, max_wait: float | None = None, complete: bool = True, instant: float | None = None
    ) -> None:
        """Check the recorded trace; raises :class:`InvariantViolation`.

        ``complete=False`` skips the end-of-run checks (jobs may still run).
        ``instant`` (see :class:`InvariantChecker`) defaults to next to
        nothing for a trace recorded on a virtual clock (trio's ``MockClock``,
        :class:`VirtualEventLoop`) and to :data:`REAL_TIME_INSTANT` otherwise.
        """
        if instant is None:
            instant = REAL_TIME_INSTANT if self._real_time else INSTANT
        checker = InvariantChecker(max_wait=max_wait, instant=instant)
        checker.feed_all(self._events)
        if complete:
            checker.finish()
        checker.check()

    def dump(self, domain: str | None = None) -> str:
        """The recorded events as readable lines."""
        return format_events(self.of(domain=domain), "")

    @property
    def closed(self) -> bool:
        """Whether it stopped recording (:meth:`close`): the events kept so far
        stay readable, no new one is added.
        """
        return self._subscription is None

    def close(self) -> None:
        """Stop recording (the events stay). Idempotent."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._subscription is None else "recording"
        return f"<TraceRecorder {len(self._events)} events ({state})>"
