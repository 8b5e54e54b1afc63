"""``serve_feed``: the feed's websocket and the timeline page, on two TCP ports."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, final

import anyio
import anyio.abc
import attrs

from jobctl import TraceHub

from ._backend import current_backend, require
from ._feed import (
    DEFAULT_BUFFER,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_AGE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    FEED_PATH,
    Feed,
)
from ._page import PageServer
from ._protocol import FEED_SCHEMA_VERSION

__all__ = ["FeedAddress", "FeedConfigError", "check_listen", "serve_feed"]

DEFAULT_HOST: Final = "127.0.0.1"


class FeedConfigError(ValueError):
    """The feed was asked to listen in a way it refuses (e.g. off loopback
    without a token)."""


def check_listen(host: str, token: str | None) -> str:
    """Validate where the feed would listen; return the IP address to bind.

    ``host`` must be an IP address (or ``localhost``). Anything but a loopback
    address needs a ``token``: the feed shows what every VM is doing.
    """
    literal = "127.0.0.1" if host == "localhost" else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        raise FeedConfigError(
            f"cannot listen on {host!r}: give an IP address, such as 127.0.0.1 or 0.0.0.0"
        ) from None
    if token is not None and not token:
        raise FeedConfigError("the token must not be empty")
    if not address.is_loopback and token is None:
        raise FeedConfigError(
            f"listening on {host} (not loopback) exposes the feed to the network; "
            "it needs a token (--token, or JOBCTL_FEED_TOKEN)"
        )
    return str(address)


@final
@attrs.frozen
class FeedAddress:
    """Where a running feed listens."""

    host: str
    ws_port: int
    http_port: int
    token_required: bool
    #: The feed serving there (None in an address made by hand).
    feed: Feed | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)

    @property
    def _url_host(self) -> str:
        address = ipaddress.ip_address(self.host)
        if address.is_unspecified:
            return socket.gethostname()
        return f"[{address}]" if address.version == 6 else str(address)

    @property
    def ws_url(self) -> str:
        """The websocket endpoint (add ``?token=...`` when a token is required)."""
        return f"ws://{self._url_host}:{self.ws_port}{FEED_PATH}"

    @property
    def page_url(self) -> str:
        """The timeline page (add ``#token=...`` when a token is required)."""
        return f"http://{self._url_host}:{self.http_port}/"


def _page_origins(host: str, http_port: int) -> frozenset[str]:
    names = {"localhost", "127.0.0.1", "[::1]", host if ":" not in host else f"[{host}]"}
    return frozenset(f"http://{name}:{http_port}" for name in names)


async def _listen(host: str, port: int) -> anyio.abc.SocketListener:
    # An IP address gives exactly one listener.
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    (listener,) = multi.listeners
    assert isinstance(listener, anyio.abc.SocketListener)
    return listener


async def _serve(listener: anyio.abc.SocketListener, handler: Any) -> None:
    """Serve each connection in a task of its own, until cancelled. In trio,
    the handler is given the trio stream itself (trio-websocket wants one)."""
    async with listener, anyio.create_task_group() as tg:
        if current_backend() == "trio":
            trio = require("trio", extra="trio", why="the feed in trio")
            raw = listener.extra(anyio.abc.SocketAttribute.raw_socket)
            trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw.dup()))
            await trio.serve_listeners(handler, [trio_listener])
        else:
            await listener.serve(handler, tg)


async def serve_feed(
    hub: TraceHub | None = None,
    *,
    host: str = DEFAULT_HOST,
    ws_port: int = 0,
    http_port: int = 0,
    token: str | None = None,
    buffer: int = DEFAULT_BUFFER,
    max_clients: int = DEFAULT_MAX_CLIENTS,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    ping_timeout: float = DEFAULT_PING_TIMEOUT,
    history: int = DEFAULT_HISTORY,
    history_age: float = DEFAULT_HISTORY_AGE,
    describe: Callable[[str], Mapping[str, Any] | None] | None = None,
    task_status: anyio.abc.TaskStatus[FeedAddress] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``hub``'s trace (default: :data:`jobctl.default_trace_hub`) until cancelled.

    The websocket feed listens on ``ws_port`` at ``/feed``, the timeline page
    on ``http_port`` (0: any free port). ``host`` is loopback by default;
    anything else requires ``token`` (:class:`FeedConfigError`), which clients
    then present (``?token=`` on the websocket, ``#token=`` on the page). Use
    ``address = await nursery.start(serve_feed, ...)`` to learn the ports.

    The limits (see :class:`Feed`, whose guarantees hold here): each client
    holds up to ``buffer`` events (default 1024); at most ``max_clients``
    websocket clients (default 64), counted once their handshake completed;
    at most ``max_handshakes`` connections still in their handshake (default
    64; one more drops the oldest), each for at most ``handshake_timeout``
    seconds (default 3); a ping every ``ping_interval`` seconds (default 10),
    to be answered within ``ping_timeout`` (default 10). A new client is sent
    the recent past first: the last ``history`` events (default 2000), none
    older than ``history_age`` seconds (default 120). With ``describe``
    (domain name to a JSON-ready dict, e.g. its host and run state from
    :attr:`jobctl.qemu.VM.observed`; None: nothing known), every client gets
    a ``status`` message four times a second. The page's port has
    the same bounds on connections still sending their request
    (``max_handshakes``, ``handshake_timeout``). The address handed to
    ``task_status`` carries the :class:`Feed` (``address.feed``), to read its
    :meth:`~Feed.statistics`.

    It runs in trio (the ``trio`` extra: trio-websocket) and in asyncio, for
    instance inside an anyio task group of an asyncio application (the
    ``feed`` extra: wsproto); start it with ``await tg.start(serve_feed, ...)``.
    Without the package the running event loop needs, it raises
    :class:`FeedBackendError` naming the extra, before listening.
    """
    bind = check_listen(host, token)
    if current_backend() == "trio":
        require("trio_websocket", extra="trio", why="the feed in trio")
    else:
        require("wsproto", extra="feed", why="the feed in asyncio")
    listeners: list[anyio.abc.SocketListener] = []
    try:
        for port in (ws_port, http_port):
            listeners.append(await _listen(bind, port))
        ws_listener, http_listener = listeners
        address = FeedAddress(
            bind,
            ws_listener.extra(anyio.abc.SocketAttribute.local_port),
            http_listener.extra(anyio.abc.SocketAttribute.local_port),
            token is not None,
        )
        feed = Feed(
            hub,
            buffer=buffer,
            token=token,
            allowed_origins=_page_origins(bind, address.http_port),
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            handshake_timeout=handshake_timeout,
            max_clients=max_clients,
            max_handshakes=max_handshakes,
            history=history,
            history_age=history_age,
            describe=describe,
        )
        page = PageServer(
            {
                "v": FEED_SCHEMA_VERSION,
                "ws_port": address.ws_port,
                "ws_path": FEED_PATH,
                "token_required": address.token_required,
            },
            request_timeout=handshake_timeout,
            max_pending=max_handshakes,
        )
        address = attrs.evolve(address, feed=feed)
    except BaseException:
        for listener in listeners:
            await anyio.aclose_forcefully(listener)
        raise
    with feed:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, ws_listener, feed.handle_stream)
            tg.start_soon(_serve, http_listener, page.handle_stream)
            task_status.started(address)
            await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover
