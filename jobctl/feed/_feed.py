"""The feed: one trace hub streamed to websocket clients, each at its own pace."""

from __future__ import annotations

import hmac
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Final, Protocol, final
from urllib.parse import parse_qs, urlsplit

import anyio
import attrs

from jobctl import TraceEvent, TraceHub, TraceSubscription, default_trace_hub

from ._backend import ConnectionGone, current_backend, require
from ._outbox import Outbox, Resync
from ._pool import PendingPool
from ._protocol import (
    FEED_SCHEMA_VERSION,
    FeedProtocolError,
    Subscription,
    dropped_message,
    encode,
    error_message,
    events_message,
    hello_message,
    parse_client_message,
)
from ._state import DEFAULT_MAX_DOMAINS, FeedState

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HISTORY",
    "DEFAULT_HISTORY_AGE",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "FEED_PATH",
    "UNRESPONSIVE_AFTER",
    "Feed",
    "FeedStatistics",
]

logger = logging.getLogger("jobctl.feed")

#: The websocket endpoint's path; ``?token=...`` carries the token.
FEED_PATH: Final = "/feed"
#: Largest client message accepted (bigger ones close the connection, 1009).
MAX_CLIENT_MESSAGE: Final = 64 * 1024
#: Most events in one ``events`` message.
MAX_BATCH: Final = 256
#: How long a shutting-down feed waits for a client to answer its close frame,
#: and how long the answer to a handshake (101 or a refusal) may take to go out.
CLOSE_TIMEOUT: Final = 0.5

#: The defaults of the feed's limits (``serve_feed``, ``jobctl serve`` and
#: ``jobctl demo --serve`` have the same).
DEFAULT_BUFFER: Final = 1024
DEFAULT_MAX_CLIENTS: Final = 64
DEFAULT_MAX_HANDSHAKES: Final = 64
DEFAULT_HANDSHAKE_TIMEOUT: Final = 3.0
DEFAULT_PING_INTERVAL: Final = 10.0
DEFAULT_PING_TIMEOUT: Final = 10.0
#: The recent past a new client is sent first: at most this many events, none
#: older than ``DEFAULT_HISTORY_AGE`` seconds.
DEFAULT_HISTORY: Final = 2000
DEFAULT_HISTORY_AGE: Final = 120.0
#: How often a feed with ``describe`` sends its ``status`` message, in seconds.
DEFAULT_STATUS_INTERVAL: Final = 0.25
#: A client whose ping has gone unanswered this long (or ``ping_timeout``, if
#: shorter) may be dropped to make room for a fresh one when the feed is full.
#: A live client answers within a round trip.
UNRESPONSIVE_AFTER: Final = 1.0


@final
@attrs.frozen
class FeedStatistics:
    """Counters since the feed was made."""

    #: Clients connected now (handshake completed: each holds a slot).
    clients: int
    #: Connections accepted / refused at the handshake.
    accepted: int
    refused: int
    #: Trace events folded into the state.
    events: int
    #: Events lost to full client buffers (every client, summed).
    dropped: int
    #: Clients cut off because they left a ping unanswered for ``ping_timeout``.
    unresponsive: int
    #: Client messages answered with an ``error``.
    protocol_errors: int
    #: Failures inside the trace listener (the first one logged; should stay 0).
    listener_errors: int
    #: Connections ended by a failure of the feed's own (the first one
    #: logged; should stay 0).
    connection_errors: int
    #: Connections whose handshake is in progress now (they hold no slot).
    handshakes: int = 0
    #: Handshakes cut off by ``handshake_timeout``.
    handshake_timeouts: int = 0
    #: Handshakes cut off because ``max_handshakes`` newer ones arrived.
    handshakes_evicted: int = 0
    #: Connected clients dropped, unresponsive, to make room for a fresh one.
    evicted: int = 0


@final
class _Client:
    __slots__ = ("outbox", "ping_sent", "scope", "subscription", "unresponsive")

    def __init__(self, buffer: int) -> None:
        self.outbox: Outbox[TraceEvent] = Outbox(buffer)
        self.subscription = Subscription()
        self.unresponsive = False
        #: When the ping now in flight was sent (None: none in flight).
        self.ping_sent: float | None = None
        #: Cancelled when the client is evicted.
        self.scope = anyio.CancelScope()


class _WebSocket(Protocol):
    """A websocket connection as the feed uses it (see ``_ws_trio``,
    ``_ws_anyio``); a connection that ends raises :class:`ConnectionGone`."""

    @property
    def closed(self) -> bool: ...
    async def get_message(self) -> str | bytes: ...
    async def send_message(self, message: str) -> None: ...
    async def ping(self) -> None: ...
    async def aclose(self, code: int, reason: str) -> None: ...


class _WebSocketRequest(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    async def reject(self, status: int, body: bytes) -> None: ...
    async def accept(self) -> _WebSocket: ...


_ReceiveRequest = Callable[[Any, Any, int], Awaitable[_WebSocketRequest | None]]


def _transport() -> _ReceiveRequest:
    """The websocket I/O for the running event loop (imported on first use)."""
    if current_backend() == "trio":
        require("trio_websocket", extra="trio", why="the feed in trio")
        from . import _ws_trio

        return _ws_trio.receive_request
    require("wsproto", extra="feed", why="the feed in asyncio")
    from . import _ws_anyio

    return _ws_anyio.receive_request


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, anyio.get_cancelled_exc_class())


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int of at least 1, not {value!r}")
    return value


@final
class Feed:
    """Streams ``hub``'s trace events to websocket clients.

    Guarantees:

    * Job control never waits for the feed: the trace listener only folds the
      event into the state model and appends it to each client's bounded
      outbox (``buffer`` events). A client that falls behind loses events; it
      is told how many (``dropped``) and gets a fresh ``snapshot``.
    * A connection holds one of the ``max_clients`` slots only once its
      websocket handshake completed. Until then it is one of at most
      ``max_handshakes`` handshakes in progress, each cut off after
      ``handshake_timeout`` seconds, or as soon as its stream ends (a plain
      HTTP request gets its ``400`` and is gone at once). When that pool is
      full, a new connection is let in and the oldest handshake is dropped.
    * Every client is pinged on connecting, then every ``ping_interval``
      seconds; one that leaves a ping unanswered for ``ping_timeout`` seconds
      is cut off. The feed always reads what clients send, so live clients'
      pongs are seen.
    * A fresh client that finds every slot taken is not refused while some
      client has left a ping unanswered for :data:`UNRESPONSIVE_AFTER`
      seconds (or ``ping_timeout``, if shorter): the one whose ping has waited
      longest is dropped (its stream cut, no close frame) and the fresh client
      takes its slot, waiting within its handshake time for such a ping to
      come of age. Only a feed full of responsive clients answers ``503``.
    * A malformed client message gets an ``error`` message; nothing else.
    * With a ``token``, a client must present it (``/feed?token=...``);
      without one, a browser (a request with an ``Origin`` header) is let in
      only from ``allowed_origins``.

    Use it as a context manager: the hub subscription lives as long as the
    ``with`` block. Serve connections with :meth:`handle_stream` (e.g. under
    :func:`trio.serve_tcp`, or an anyio listener's ``serve``). It runs in
    trio (over trio-websocket: the ``trio`` extra) and in asyncio (over
    wsproto: the ``feed`` extra); used elsewhere, or without the package it
    needs there, :meth:`handle_stream` raises :class:`FeedBackendError`
    naming what to install.
    """

    def __init__(
        self,
        hub: TraceHub | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
        token: str | None = None,
        allowed_origins: Collection[str] = (),
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_domains: int = DEFAULT_MAX_DOMAINS,
        history: int = DEFAULT_HISTORY,
        history_age: float = DEFAULT_HISTORY_AGE,
        describe: Callable[[str], Mapping[str, Any] | None] | None = None,
        status_interval: float = DEFAULT_STATUS_INTERVAL,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        self._hub = default_trace_hub if hub is None else hub
        self._buffer = _count("buffer", buffer)
        self._token = token
        self._origins = frozenset(allowed_origins)
        self._ping_interval = _positive("ping_interval", ping_interval)
        self._ping_timeout = _positive("ping_timeout", ping_timeout)
        self._handshake_timeout = _positive("handshake_timeout", handshake_timeout)
        self._unresponsive_after = min(UNRESPONSIVE_AFTER, self._ping_timeout)
        self._max_clients = _count("max_clients", max_clients)
        self._handshakes = PendingPool(_count("max_handshakes", max_handshakes))
        self._state = FeedState(max_domains=max_domains)
        # The recent past, oldest first: every event folded into the state,
        # up to ``history`` of them (0: none kept).
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"history must be an int of at least 0, not {history!r}")
        self._history: deque[TraceEvent] = deque(maxlen=history)
        self._history_age = _positive("history_age", history_age)
        self._describe = describe
        self._status_interval = _positive("status_interval", status_interval)
        # Every client holding a slot; insertion order is arrival order.
        self._clients: dict[_Client, None] = {}
        # Set (and replaced) whenever a slot is freed; made when first awaited.
        self._room: anyio.Event | None = None
        self._subscription: TraceSubscription | None = None
        self._accepted = self._refused = self._events = self._dropped = 0
        self._unresponsive = self._protocol_errors = 0
        self._listener_errors = self._connection_errors = 0
        self._handshake_timeouts = self._evicted = 0

    # -- lifetime ------------------------------------------------------------

    def __enter__(self) -> Feed:
        if self._subscription is not None:
            raise RuntimeError("this feed is already open")
        self._subscription = self._hub.subscribe(self._on_event)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening to the hub; refuse new clients. Idempotent."""
        if self._subscription is not None:
            self._subscription.close()
        self._subscription = None

    def statistics(self) -> FeedStatistics:
        """The feed's counters now (see :class:`FeedStatistics`): a snapshot,
        made fresh on each call.
        """
        return FeedStatistics(
            clients=len(self._clients),
            accepted=self._accepted,
            refused=self._refused,
            events=self._events,
            dropped=self._dropped,
            unresponsive=self._unresponsive,
            protocol_errors=self._protocol_errors,
            listener_errors=self._listener_errors,
            connection_errors=self._connection_errors,
            handshakes=len(self._handshakes),
            handshake_timeouts=self._handshake_timeouts,
            handshakes_evicted=self._handshakes.evicted,
            evicted=self._evicted,
        )

    # -- the trace listener: never blocks ------------------------------------

    def _on_event(self, event: TraceEvent) -> None:
        # Called in the emitting task: a failure here must not reach job control.
        try:
            self._events += 1
            self._state.fold(event)
            if self._history.maxlen:
                self._history.append(event)
            for client in self._clients:
                if client.subscription.matches(event) and not client.outbox.put_nowait(event):
                    self._dropped += 1
        except Exception:
            # Logged once (with the traceback), counted always: a feed bug must
            # neither break nor slow job control.
            self._listener_errors += 1
            if self._listener_errors == 1:
                logger.exception("jobctl.feed: trace listener failed on %r", event)

    # -- slots ---------------------------------------------------------------

    def _register(self) -> _Client:
        client = _Client(self._buffer)
        # Registered and marked for a snapshot in one step: nothing is missed.
        self._clients[client] = None
        client.outbox.resync_nowait()
        return client

    def _release(self, client: _Client) -> None:
        """Free ``client``'s slot (idempotent)."""
        if client in self._clients:
            del self._clients[client]
            if self._room is not None:
                self._room.set()
            self._room = None

    def _least_responsive(self) -> _Client | None:
        """The client whose unanswered ping has waited longest, if any."""
        waiting = [c for c in self._clients if c.ping_sent is not None]
        return min(waiting, key=lambda c: c.ping_sent or 0.0, default=None)

    async def _take_slot(self, deadline: float) -> _Client | None:
        """A slot for a fresh client, by eviction if need be; None (refuse)
        if every client is responsive up to ``deadline``."""
        while True:
            if len(self._clients) < self._max_clients:
                return self._register()
            victim = self._least_responsive()
            if victim is None or victim.ping_sent is None:
                return None
            ripe = victim.ping_sent + self._unresponsive_after
            if ripe <= anyio.current_time():
                del self._clients[victim]
                victim.scope.cancel()
                self._evicted += 1
                return self._register()
            if ripe > deadline:
                return None
            if self._room is None:
                self._room = anyio.Event()
            room = self._room
            with anyio.CancelScope(deadline=ripe):
                await room.wait()

    # -- connections ---------------------------------------------------------

    async def handle_stream(self, stream: Any) -> None:
        """Serve one client connection until it ends; closes ``stream``.

        A client's misbehaviour (bad handshake, bad messages, silence, a
        dropped connection) ends its connection only, and so does a failure
        of the feed's own (logged once, counted): whatever runs beside the
        feed, such as job control, never sees an exception from here.

        ``stream`` is a byte stream of the running event loop: a
        :class:`trio.abc.Stream` in trio, an :class:`anyio.abc.ByteStream` in
        asyncio. Outside trio and asyncio, or without trio-websocket (in trio)
        or wsproto (in asyncio), it raises :class:`FeedBackendError` at once.
        """
        receive_request = _transport()
        try:
            async with anyio.create_task_group() as nursery:
                try:
                    admitted = await self._handshake(nursery, receive_request, stream)
                    if admitted is not None:
                        await self._run_client(*admitted)
                finally:
                    # Ends trio-websocket's reader task, whatever state it is in.
                    nursery.cancel_scope.cancel()
        except* Exception:
            self._connection_errors += 1
            if self._connection_errors == 1:
                logger.exception("jobctl.feed: serving a client failed")
        finally:
            # Shielded: under cancellation an await here would raise Cancelled
            # and lose whatever is propagating.
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)

    async def _handshake(
        self, nursery: Any, receive_request: _ReceiveRequest, stream: Any
    ) -> tuple[_WebSocket, _Client] | None:
        """In the handshake pool, within the handshake time: the request, a
        slot, the answer. The connection and its client (holding a slot), or
        None: refused, timed out, evicted from the pool, or gone."""
        client: _Client | None = None
        kept = False
        try:
            with self._handshakes.admit():
                deadline = anyio.current_time() + self._handshake_timeout
                request = None
                with anyio.CancelScope(deadline=deadline) as waiting:
                    request = await receive_request(nursery, stream, MAX_CLIENT_MESSAGE)
                if waiting.cancelled_caught:
                    self._handshake_timeouts += 1
                if request is None:
                    return None
                refusal = self._refusal(request)
                if refusal is None:
                    with anyio.CancelScope(deadline=deadline):
                        client = await self._take_slot(deadline)
                    if client is None:
                        refusal = 503, f"too many clients (at most {self._max_clients})"
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    if refusal is not None:
                        self._refused += 1
                        status, reason = refusal
                        await request.reject(status, body=reason.encode())
                        return None
                    assert client is not None
                    ws = await request.accept()
                    kept = True
                    return ws, client
        except ConnectionGone:
            pass  # the client went away
        finally:
            if client is not None and not kept:
                self._release(client)
        return None

    def _refusal(self, request: _WebSocketRequest) -> tuple[int, str] | None:
        url = urlsplit(request.path)
        if url.path != FEED_PATH:
            return 404, f"no such endpoint; the feed is at {FEED_PATH}"
        if self._subscription is None:
            return 503, "the feed is closed"
        if self._token is not None:
            given = parse_qs(url.query).get("token", [""])[-1]
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return 403, "a valid token is required (/feed?token=...)"
            return None
        origin = next((v for k, v in request.headers if k.lower() == b"origin"), None)
        if origin is not None and origin.decode("latin-1") not in self._origins:
            return 403, "this origin may not read the feed"
        return None

    async def _run_client(self, ws: _WebSocket, client: _Client) -> None:
        self._accepted += 1
        try:
            # Cancelled by an eviction: the client ends quietly, its stream cut.
            with client.scope:
                async with anyio.create_task_group() as nursery:
                    parts = [self._heartbeat, self._write, self._read]
                    if self._describe is not None:
                        parts.append(self._status)
                    for part in parts:
                        nursery.start_soon(self._until_done, nursery, part, ws, client)
        except BaseException as exc:
            # Cancelled (the server is shutting down) or a failure of the
            # feed's own: say which, then go. The close frame goes out at once;
            # its answer is awaited briefly.
            if not ws.closed:
                if _only_cancelled(exc):
                    code, reason = 1001, "the feed is shutting down"
                else:
                    code, reason = 1011, "the feed failed"
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
                    await ws.aclose(code, reason)
            raise
        finally:
            self._release(client)
        # Here the client has closed, or it is unresponsive or evicted and its
        # stream is cut without a closing handshake (by handle_stream).

    @staticmethod
    async def _until_done(
        nursery: anyio.abc.TaskGroup,
        part: Callable[[_WebSocket, _Client], Awaitable[None]],
        ws: _WebSocket,
        client: _Client,
    ) -> None:
        """Run one part of a client's service; when it ends, end the others."""
        try:
            await part(ws, client)
        except ConnectionGone:
            pass
        finally:
            nursery.cancel_scope.cancel()

    async def _read(self, ws: _WebSocket, client: _Client) -> None:
        while True:
            data = await ws.get_message()
            try:
                request = parse_client_message(data)
            except FeedProtocolError as exc:
                self._protocol_errors += 1
                await ws.send_message(encode(error_message(exc)))
                continue
            if isinstance(request, Subscription):
                client.subscription = request
            client.outbox.resync_nowait()

    def _recent(self, subscription: Subscription, now: float) -> list[TraceEvent]:
        """The kept past this client wants, up to the state's last event."""
        oldest = now - self._history_age
        return [e for e in self._history if e.time >= oldest and subscription.matches(e)]

    async def _write(self, ws: _WebSocket, client: _Client) -> None:
        # The hello goes out here, beside the heartbeat: a client that reads
        # nothing stalls this task only, and the heartbeat sees it.
        now = anyio.current_time()
        await ws.send_message(encode(hello_message(now, self._buffer, wall=time.time())))
        outbox = client.outbox
        reported = 0
        # Events up to this seq are folded into the last snapshot sent.
        folded = 0
        first = True
        batch: list[dict[str, Any]] = []

        def event_json(event: TraceEvent, offset: float) -> dict[str, Any]:
            data = event.to_json()
            data["wall"] = round(event.time + offset, 6)
            return data

        while True:
            entry: TraceEvent | Resync | None = await outbox.get()
            # Wall-clock time minus the loop's clock, now: a trace event's
            # wall-clock time is its ``t`` plus this.
            offset = time.time() - anyio.current_time()
            # Take everything waiting, events in batches: on a busy event loop
            # this task gets few turns, and each message costs several.
            while entry is not None:
                if isinstance(entry, Resync):
                    if batch:
                        await ws.send_message(encode(events_message(batch)))
                        batch = []
                    if entry.dropped:
                        reported += entry.dropped
                        await ws.send_message(encode(dropped_message(entry.dropped, reported)))
                    now = anyio.current_time()
                    # Taken together with the snapshot, in one step: the past
                    # ends exactly where the snapshot's seq does.
                    past = self._recent(client.subscription, now) if first else []
                    snapshot = self._state.snapshot(now, client.subscription)
                    snapshot["wall"] = now + offset
                    folded = snapshot["seq"]
                    for start in range(0, len(past), MAX_BATCH):
                        chunk = [event_json(e, offset) for e in past[start : start + MAX_BATCH]]
                        await ws.send_message(encode(events_message(chunk, history=True)))
                    first = False
                    await ws.send_message(encode(snapshot))
                elif entry.seq > folded:
                    batch.append(event_json(entry, offset))
                    if len(batch) == MAX_BATCH:
                        await ws.send_message(encode(events_message(batch)))
                        batch = []
                try:
                    entry = outbox.get_nowait()
                except anyio.WouldBlock:
                    entry = None
            if batch:
                await ws.send_message(encode(events_message(batch)))
                batch = []

    def _status_message(self, subscription: Subscription) -> dict[str, Any]:
        """The ``status`` message: what ``describe`` says of each known domain
        (a domain it says nothing of, or fails on, is left out)."""
        assert self._describe is not None
        domains: dict[str, Any] = {}
        for name in self._state.names():
            if not subscription.wants_domain(name):
                continue
            try:
                described = self._describe(name)
            except Exception:
                self._listener_errors += 1
                if self._listener_errors == 1:
                    logger.exception("jobctl.feed: describe(%r) failed", name)
                continue
            if described is not None:
                domains[name] = dict(described)
        now = anyio.current_time()
        return {
            "v": FEED_SCHEMA_VERSION,
            "type": "status",
            # The last trace event when this was taken: the status may
            # overtake events still in the client's outbox.
            "seq": self._state.seq,
            "t": now,
            "wall": time.time(),
            "domains": domains,
        }

    async def _status(self, ws: _WebSocket, client: _Client) -> None:
        while True:
            await anyio.sleep(self._status_interval)
            await ws.send_message(encode(self._status_message(client.subscription)))

    async def _heartbeat(self, ws: _WebSocket, client: _Client) -> None:
        # The first ping goes out at once: a client that reads nothing is
        # known as such within a round trip, not a ping interval.
        while True:
            client.ping_sent = anyio.current_time()
            with anyio.move_on_after(self._ping_timeout) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                client.unresponsive = True
                self._unresponsive += 1
                return
            client.ping_sent = None
            await anyio.sleep(self._ping_interval)
