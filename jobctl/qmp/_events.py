"""QMP events and the bounded subscriptions that deliver them.

The connection's reader hands every event to :class:`EventHub`, which calls
each matching :class:`EventListener` at once and copies it into the buffer of
each matching :class:`EventSubscription` without ever waiting: a full buffer
drops the new event and counts it, so a slow subscriber never holds up
replies or other subscribers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, final

import anyio
import anyio.lowlevel
import attrs

from jobctl.qmp._errors import QMPProtocolError
from jobctl.qmp._show import show

__all__ = [
    "EventFilter",
    "EventHub",
    "EventListener",
    "EventSubscription",
    "QMPEvent",
    "SubscriptionStatistics",
    "parse_event",
]

#: A predicate on an event's ``data``; only events it accepts are buffered.
EventFilter = Callable[[Mapping[str, Any]], bool]

_log: Final = logging.getLogger("jobctl.qmp")


@final
@attrs.frozen
class QMPEvent:
    """One event from QEMU.

    ``data`` is the event's ``data`` member (empty when absent), read-only;
    ``timestamp`` is QEMU's clock when it emitted the event, in seconds since
    the epoch.
    """

    name: str
    data: Mapping[str, Any]
    timestamp: float


@final
@attrs.frozen
class SubscriptionStatistics:
    """A snapshot of one subscription.

    ``buffered`` events wait to be received (at most ``max_buffer``),
    ``delivered`` were received, ``dropped`` arrived while the buffer was full.
    """

    buffered: int
    max_buffer: int
    delivered: int
    dropped: int
    closed: bool


@final
class EventSubscription:
    """Events of some names (all events when ``names`` is ``None``) that pass
    ``filter``, buffered up to ``max_buffer``.

    Use it as a context manager (leaving closes it) and receive with
    :meth:`receive`, :meth:`receive_nowait` or ``async for``. After the
    connection closes, the buffered events are still delivered; then
    receiving raises the connection's :class:`QMPClosedError`.
    ``async for`` ends when the subscription itself is closed.
    """

    def __init__(
        self,
        hub: EventHub,
        names: frozenset[str] | None,
        event_filter: EventFilter | None,
        max_buffer: int,
    ) -> None:
        self.names = names
        self.max_buffer = max_buffer
        self._hub = hub
        self._filter = event_filter
        self._buffer: deque[QMPEvent] = deque()
        self._waiter: anyio.Event | None = None
        #: Makes the exception raised once the buffer is drained, when no
        #: more events will come (connection closed, filter failed).
        self._end: Callable[[], BaseException] | None = None
        self._closed = False
        self._delivered = 0
        self._dropped = 0

    @property
    def dropped(self) -> int:
        """How many matching events were dropped because the buffer was full."""
        return self._dropped

    def statistics(self) -> SubscriptionStatistics:
        """The subscription's counters now (see :class:`SubscriptionStatistics`):
        a snapshot, made fresh on each call.
        """
        return SubscriptionStatistics(
            buffered=len(self._buffer),
            max_buffer=self.max_buffer,
            delivered=self._delivered,
            dropped=self._dropped,
            closed=self._closed,
        )

    def receive_nowait(self) -> QMPEvent:
        """The oldest buffered event.

        Raises :class:`anyio.WouldBlock` if there is none yet,
        :class:`anyio.ClosedResourceError` if this subscription was closed,
        and the connection's :class:`QMPClosedError` once the
        connection has closed and the buffer is empty.
        """
        if self._closed:
            raise anyio.ClosedResourceError("this event subscription is closed")
        if self._buffer:
            self._delivered += 1
            return self._buffer.popleft()
        if self._end is not None:
            raise self._end()
        raise anyio.WouldBlock

    async def receive(self) -> QMPEvent:
        """Wait for the next event; raises like :meth:`receive_nowait`."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                event = self.receive_nowait()
            except anyio.WouldBlock:
                if self._waiter is None:
                    self._waiter = anyio.Event()
                await self._waiter.wait()
            else:
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return event

    def close(self) -> None:
        """Stop receiving events and drop the buffered ones (idempotent)."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._hub.remove(self)
            self._wake()

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> QMPEvent:
        try:
            return await self.receive()
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    def _offer(self, event: QMPEvent) -> None:
        """Buffer ``event`` if it passes the filter and there is room; never blocks."""
        if self._filter is not None:
            try:
                accepted = self._filter(event.data)
            except Exception as exc:
                self._finish(_filter_failed(event.name, exc))
                self._hub.remove(self)
                return
            if not accepted:
                return
        if len(self._buffer) >= self.max_buffer:
            self._dropped += 1
            self._hub.dropped += 1
            return
        self._buffer.append(event)
        self._wake()

    def _finish(self, end: Callable[[], BaseException]) -> None:
        if self._end is None:
            self._end = end
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None


def _filter_failed(name: str, cause: Exception) -> Callable[[], BaseException]:
    def make() -> BaseException:
        error = RuntimeError(f"the event filter raised on a {name} event: {cause!r}")
        error.__cause__ = cause
        return error

    return make


#: QEMU's timestamps are int64 seconds and microseconds below a million.
_MAX_SECONDS: Final = 1 << 63


def _malformed(why: str, message: Mapping[str, Any]) -> QMPProtocolError:
    return QMPProtocolError(f"malformed QMP event ({why}): {show(message)}")


def parse_event(message: Mapping[str, Any]) -> QMPEvent:
    """``{"event": NAME, "data": {...}, "timestamp": {"seconds": S,
    "microseconds": U}}`` as a :class:`QMPEvent`.

    ``data`` may be absent (empty); other members are ignored, as the QMP
    specification asks of clients. Raises :class:`QMPProtocolError` naming
    the member that is missing or wrong: a name that is not a string, data
    that is not an object, a timestamp that is not two integers in QEMU's
    ranges (``|S| < 2**63``, ``0 <= U < 10**6``).
    """
    name = message.get("event")
    if type(name) is not str:
        raise _malformed(f"'event' is {_kind(name)}, not a string", message)
    data = message.get("data", {})
    if type(data) is not dict:
        raise _malformed(f"'data' is {_kind(data)}, not an object", message)
    stamp = message.get("timestamp")
    if type(stamp) is not dict:
        raise _malformed(f"'timestamp' is {_kind(stamp)}, not an object", message)
    seconds, micros = stamp.get("seconds"), stamp.get("microseconds")
    if type(seconds) is not int or not -_MAX_SECONDS < seconds < _MAX_SECONDS:
        raise _malformed(f"'timestamp.seconds' is {_kind(seconds)}, not an int64", message)
    if type(micros) is not int or not 0 <= micros < 1_000_000:
        raise _malformed(
            f"'timestamp.microseconds' is {_kind(micros)}, not an integer in [0, 10**6)",
            message,
        )
    return QMPEvent(name=name, data=MappingProxyType(data), timestamp=seconds + micros / 1e6)


def _kind(value: object) -> str:
    """What ``value`` is, briefly: ``missing``, ``a list``, ``the int 12...``."""
    if value is None:
        return "missing or null"
    if type(value) in (int, float, bool):
        return f"{type(value).__name__} {show(value, 40)}"
    return f"a {type(value).__name__}"


@final
class EventListener:
    """A callback the connection's reader calls with each event named
    ``names`` (every event for None) as it arrives, before any subscription
    sees it; see :meth:`QMPClient.listen <jobctl.qmp.QMPClient.listen>`.

    The callback runs on the reader: it must not block, and nothing is
    buffered for it, so nothing is dropped. An exception from it is logged
    (logger ``jobctl.qmp``) and the connection and the listener go on.
    Close it (or use it as a context manager) to stop.
    """

    __slots__ = ("_callback", "_hub", "names")

    def __init__(
        self, hub: EventHub, names: frozenset[str] | None, callback: Callable[[QMPEvent], None]
    ) -> None:
        self._hub = hub
        #: The event names it takes (None: every event).
        self.names = names
        self._callback = callback

    @property
    def closed(self) -> bool:
        """Whether the callback will not be called again: after :meth:`close`,
        or once the connection closed.
        """
        return self not in self._hub._listeners

    def close(self) -> None:
        """Stop calling the callback. Idempotent."""
        self._hub._listeners.pop(self, None)

    def __enter__(self) -> EventListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, event: QMPEvent) -> None:
        if self.names is not None and event.name not in self.names:
            return
        try:
            self._callback(event)
        except Exception:
            _log.exception("an event listener raised on a %s event", event.name)


@final
class EventHub:
    """The subscriptions of one connection and its event counters."""

    def __init__(self) -> None:
        self._by_name: dict[str, dict[EventSubscription, None]] = {}
        self._all: dict[EventSubscription, None] = {}
        self._open: set[EventSubscription] = set()
        self._listeners: dict[EventListener, None] = {}
        self._end: Callable[[], BaseException] | None = None
        self.events = 0
        self.dropped = 0

    @property
    def subscriptions(self) -> int:
        """How many subscriptions are open."""
        return len(self._open)

    def listen(
        self, names: str | Iterable[str] | None, callback: Callable[[QMPEvent], None]
    ) -> EventListener:
        """A new listener; see :meth:`QMPClient.listen`. After the
        connection ended it is never called."""
        listener = EventListener(self, _wanted(names), callback)
        if self._end is None:
            self._listeners[listener] = None
        return listener

    def subscribe(
        self,
        names: str | Iterable[str] | None,
        event_filter: EventFilter | None,
        max_buffer: int,
    ) -> EventSubscription:
        """A new subscription; see :meth:`QMPClient.subscribe`."""
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        wanted = _wanted(names)
        subscription = EventSubscription(self, wanted, event_filter, max_buffer)
        if self._end is not None:
            subscription._finish(self._end)
            return subscription
        self._open.add(subscription)
        if wanted is None:
            self._all[subscription] = None
        else:
            for name in wanted:
                self._by_name.setdefault(name, {})[subscription] = None
        return subscription

    def remove(self, subscription: EventSubscription) -> None:
        self._open.discard(subscription)
        self._all.pop(subscription, None)
        for name in subscription.names or ():
            subs = self._by_name.get(name)
            if subs is not None:
                subs.pop(subscription, None)
                if not subs:
                    del self._by_name[name]

    def dispatch(self, message: Mapping[str, Any]) -> None:
        """Deliver one ``{"event": ...}`` message; raises :class:`QMPProtocolError`
        naming the bad member if it is malformed (see :func:`parse_event`)."""
        event = parse_event(message)
        self.events += 1
        if self._listeners:
            for listener in tuple(self._listeners):
                listener._call(event)
        named = self._by_name.get(event.name)
        if not named and not self._all:
            return
        for subscription in (*(named or ()), *self._all):
            subscription._offer(event)

    def close(self, end: Callable[[], BaseException]) -> None:
        """No more events: every subscription ends with ``end()`` once drained."""
        if self._end is None:
            self._end = end
            subscriptions, self._open = self._open, set()
            self._listeners.clear()
            self._all.clear()
            self._by_name.clear()
            for subscription in subscriptions:
                subscription._finish(end)


def _wanted(names: str | Iterable[str] | None) -> frozenset[str] | None:
    """Event names as a set (None: every event), checked."""
    if names is None:
        return None
    wanted = frozenset((names,) if isinstance(names, str) else names)
    if not wanted:
        raise ValueError("no event names given; pass names=None for every event")
    if not all(isinstance(name, str) for name in wanted):
        raise TypeError(f"event names must be str: {sorted(map(repr, wanted))}")
    return wanted
