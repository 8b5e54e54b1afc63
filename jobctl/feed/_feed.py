"""The feed: one trace hub streamed to websocket clients, each at its own pace."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, final
from urllib.parse import parse_qs, urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from jobctl import TraceEvent, TraceHub, TraceSubscription, default_trace_hub

from ._outbox import Outbox, Resync
from ._protocol import (
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

__all__ = ["FEED_PATH", "Feed", "FeedStatistics"]

logger = logging.getLogger("jobctl.feed")

#: The websocket endpoint's path; ``?token=...`` carries the token.
FEED_PATH: Final = "/feed"
#: Largest client message accepted (bigger ones close the connection, 1009).
MAX_CLIENT_MESSAGE: Final = 64 * 1024
#: Most events in one ``events`` message.
MAX_BATCH: Final = 256
#: How long a shutting-down feed waits for a client to answer its close frame.
CLOSE_TIMEOUT: Final = 0.5


@final
@attrs.frozen
class FeedStatistics:
    """Counters since the feed was made."""

    #: Clients connected now.
    clients: int
    #: Connections accepted / refused at the handshake.
    accepted: int
    refused: int
    #: Trace events folded into the state.
    events: int
    #: Events lost to full client buffers (every client, summed).
    dropped: int
    #: Clients cut off because they left a ping unanswered.
    unresponsive: int
    #: Client messages answered with an ``error``.
    protocol_errors: int
    #: Failures inside the trace listener (the first one logged; should stay 0).
    listener_errors: int
    #: Connections ended by a failure of the feed's own (the first one
    #: logged; should stay 0).
    connection_errors: int


@final
class _Client:
    __slots__ = ("outbox", "subscription", "unresponsive")

    def __init__(self, buffer: int) -> None:
        self.outbox: Outbox[TraceEvent] = Outbox(buffer)
        self.subscription = Subscription()
        self.unresponsive = False


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value


@final
class Feed:
    """Streams ``hub``'s trace events to websocket clients.

    Guarantees:

    * Job control never waits for the feed: the trace listener only folds the
      event into the state model and appends it to each client's bounded
      outbox (``buffer`` events). A client that falls behind loses events; it
      is told how many (``dropped``) and gets a fresh ``snapshot``.
    * A client that leaves a ping unanswered for ``ping_timeout`` seconds
      (``ping_interval`` apart) is cut off. The feed always reads what clients
      send, so live clients' pongs are seen.
    * A malformed client message gets an ``error`` message; nothing else.
    * With a ``token``, a client must present it (``/feed?token=...``);
      without one, a browser (a request with an ``Origin`` header) is let in
      only from ``allowed_origins``.

    Use it as a context manager: the hub subscription lives as long as the
    ``with`` block. Serve connections with :meth:`handle_stream` (e.g. under
    :func:`trio.serve_tcp`). Trio only.
    """

    def __init__(
        self,
        hub: TraceHub | None = None,
        *,
        buffer: int = 1024,
        token: str | None = None,
        allowed_origins: Collection[str] = (),
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        max_clients: int = 64,
        max_domains: int = DEFAULT_MAX_DOMAINS,
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an int of at least 1, not {buffer!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
            raise ValueError(f"max_clients must be an int of at least 1, not {max_clients!r}")
        self._hub = default_trace_hub if hub is None else hub
        self._buffer = buffer
        self._token = token
        self._origins = frozenset(allowed_origins)
        self._ping_interval = _positive("ping_interval", ping_interval)
        self._ping_timeout = _positive("ping_timeout", ping_timeout)
        self._handshake_timeout = _positive("handshake_timeout", handshake_timeout)
        self._max_clients = max_clients
        self._state = FeedState(max_domains=max_domains)
        self._clients: dict[_Client, None] = {}
        self._subscription: TraceSubscription | None = None
        self._accepted = self._refused = self._events = self._dropped = 0
        self._unresponsive = self._protocol_errors = 0
        self._listener_errors = self._connection_errors = 0

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
        )

    # -- the trace listener: never blocks ------------------------------------

    def _on_event(self, event: TraceEvent) -> None:
        # Called in the emitting task: a failure here must not reach job control.
        try:
            self._events += 1
            self._state.fold(event)
            for client in self._clients:
                if client.subscription.matches(event) and not client.outbox.put_nowait(event):
                    self._dropped += 1
        except Exception:
            # Logged once (with the traceback), counted always: a feed bug must
            # neither break nor slow job control.
            self._listener_errors += 1
            if self._listener_errors == 1:
                logger.exception("jobctl.feed: trace listener failed on %r", event)

    # -- connections ---------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it ends; closes ``stream``.

        A client's misbehaviour (bad handshake, bad messages, silence, a
        dropped connection) ends its connection only, and so does a failure
        of the feed's own (logged once, counted): whatever runs beside the
        feed, such as job control, never sees an exception from here.
        """
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._serve(nursery, stream)
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
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _serve(self, nursery: trio.Nursery, stream: trio.abc.Stream) -> None:
        ws: WebSocketConnection | None = None
        with trio.move_on_after(self._handshake_timeout):
            request = await wrap_server_stream(nursery, stream, max_message_size=MAX_CLIENT_MESSAGE)
            refusal = self._refusal(request)
            if refusal is not None:
                self._refused += 1
                status, reason = refusal
                await request.reject(status, body=reason.encode())
                return
            ws = await request.accept()
        if ws is not None:
            await self._run_client(ws)

    def _refusal(self, request: WebSocketRequest) -> tuple[int, str] | None:
        url = urlsplit(request.path)
        if url.path != FEED_PATH:
            return 404, f"no such endpoint; the feed is at {FEED_PATH}"
        if self._subscription is None:
            return 503, "the feed is closed"
        if len(self._clients) >= self._max_clients:
            return 503, f"too many clients (at most {self._max_clients})"
        if self._token is not None:
            given = parse_qs(url.query).get("token", [""])[-1]
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return 403, "a valid token is required (/feed?token=...)"
            return None
        origin = next((v for k, v in request.headers if k.lower() == b"origin"), None)
        if origin is not None and origin.decode("latin-1") not in self._origins:
            return 403, "this origin may not read the feed"
        return None

    async def _run_client(self, ws: WebSocketConnection) -> None:
        client = _Client(self._buffer)
        # Registered and marked for a snapshot in one step: nothing is missed.
        self._clients[client] = None
        client.outbox.resync_nowait()
        self._accepted += 1
        try:
            await ws.send_message(encode(hello_message(trio.current_time(), self._buffer)))
            async with trio.open_nursery() as nursery:
                for part in (self._heartbeat, self._write, self._read):
                    nursery.start_soon(self._until_done, nursery, part, ws, client)
        except ConnectionClosed:
            pass
        except BaseException as exc:
            # Cancelled (the server is shutting down) or a failure of the
            # feed's own: say which, then go. The close frame goes out at once;
            # its answer is awaited briefly.
            if ws.closed is None:
                if _only_cancelled(exc):
                    code, reason = 1001, "the feed is shutting down"
                else:
                    code, reason = 1011, "the feed failed"
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                    await ws.aclose(code, reason)
            raise
        finally:
            del self._clients[client]
        # Here the client has closed, or it is unresponsive and its stream is
        # cut without a closing handshake (by handle_stream).

    @staticmethod
    async def _until_done(
        nursery: trio.Nursery,
        part: Callable[[WebSocketConnection, _Client], Awaitable[None]],
        ws: WebSocketConnection,
        client: _Client,
    ) -> None:
        """Run one part of a client's service; when it ends, end the others."""
        try:
            await part(ws, client)
        except ConnectionClosed:
            pass
        finally:
            nursery.cancel_scope.cancel()

    async def _read(self, ws: WebSocketConnection, client: _Client) -> None:
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

    async def _write(self, ws: WebSocketConnection, client: _Client) -> None:
        outbox = client.outbox
        reported = 0
        # Events up to this seq are folded into the last snapshot sent.
        folded = 0
        batch: list[dict[str, Any]] = []
        while True:
            entry: TraceEvent | Resync | None = await outbox.get()
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
                    snapshot = self._state.snapshot(trio.current_time(), client.subscription)
                    folded = snapshot["seq"]
                    await ws.send_message(encode(snapshot))
                elif entry.seq > folded:
                    batch.append(entry.to_json())
                    if len(batch) == MAX_BATCH:
                        await ws.send_message(encode(events_message(batch)))
                        batch = []
                try:
                    entry = outbox.get_nowait()
                except trio.WouldBlock:
                    entry = None
            if batch:
                await ws.send_message(encode(events_message(batch)))
                batch = []

    async def _heartbeat(self, ws: WebSocketConnection, client: _Client) -> None:
        while True:
            await trio.sleep(self._ping_interval)
            with trio.move_on_after(self._ping_timeout) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                client.unresponsive = True
                self._unresponsive += 1
                return
