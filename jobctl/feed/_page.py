"""The timeline page's HTTP server: the static files and a config, GET only.

trio-websocket answers plain HTTP with 400, so the page has a port of its own.
One request per connection, answered with ``Connection: close``; connections
still sending their request are bounded in number and time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from importlib import resources
from typing import Any, Final, final
from urllib.parse import urlsplit

import anyio
import h11

from ._backend import ConnectionGone, receive_some, send_all
from ._pool import PendingPool

__all__ = ["PageServer"]

#: Path -> (file in jobctl/feed/static, content type).
STATIC_FILES: Final[Mapping[str, tuple[str, str]]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS: Final = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "frame-ancestors 'none'",
    ),
)
_MAX_REQUEST: Final = 16 * 1024


@final
class PageServer:
    """Answers ``GET``/``HEAD`` for the page's files and ``/config.json``.

    ``config`` is served as ``/config.json`` (it must be JSON-ready). Each
    connection gets ``request_timeout`` seconds to send its request and have
    the answer sent; at most ``max_pending`` connections are served at once,
    and one more drops the oldest (so silent connections cannot keep the page
    from a fresh browser). Anything else than a well-formed GET or HEAD of a
    known path gets 400, 404 or 405.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        request_timeout: float = 3.0,
        max_pending: int = 64,
    ) -> None:
        if not (isinstance(request_timeout, int | float) and request_timeout > 0):
            raise ValueError(f"request_timeout must be a positive number, not {request_timeout!r}")
        static = resources.files("jobctl.feed") / "static"
        self._routes: dict[str, tuple[bytes, str]] = {
            path: ((static / name).read_bytes(), content_type)
            for path, (name, content_type) in STATIC_FILES.items()
        }
        self._routes["/config.json"] = (
            json.dumps(dict(config)).encode(),
            "application/json",
        )
        self._request_timeout = request_timeout
        self._pending = PendingPool(max_pending)

    @property
    def pending(self) -> int:
        """Connections being served now."""
        return len(self._pending)

    @property
    def evicted(self) -> int:
        """Connections dropped to make room for newer ones."""
        return self._pending.evicted

    async def handle_stream(self, stream: Any) -> None:
        """Answer one request on ``stream``, then close it.

        ``stream``: a :class:`trio.abc.Stream` or an :class:`anyio.abc.ByteStream`
        (the page is served in trio and in asyncio alike).
        """
        try:
            with self._pending.admit(), anyio.move_on_after(self._request_timeout):
                await self._answer(stream)
        except ConnectionGone:
            pass  # the client went away
        finally:
            await anyio.aclose_forcefully(stream)

    async def _answer(self, stream: Any) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
        try:
            request = await _receive_request(conn, stream)
        except h11.RemoteProtocolError as exc:
            await _respond(conn, stream, exc.error_status_hint, b"bad request\n")
            return
        if request is None:
            return
        head = request.method == b"HEAD"
        if request.method != b"GET" and not head:
            allow = (("allow", "GET, HEAD"),)
            await _respond(conn, stream, 405, b"only GET and HEAD\n", extra=allow)
            return
        route = self._routes.get(urlsplit(request.target.decode("ascii", "replace")).path)
        if route is None:
            await _respond(conn, stream, 404, b"not found\n", head=head)
            return
        body, content_type = route
        await _respond(conn, stream, 200, body, content_type=content_type, head=head)


async def _receive_request(conn: h11.Connection, stream: Any) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            try:
                data = await receive_some(stream, _MAX_REQUEST)
            except ConnectionGone:
                return None
            conn.receive_data(data)
        else:
            return None  # the client closed before a whole request


async def _respond(
    conn: h11.Connection,
    stream: Any,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    head: bool = False,
    extra: Sequence[tuple[str, str]] = (),
) -> None:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *_SECURITY_HEADERS,
        *extra,
    ]
    response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
    data = conn.send(response) or b""
    if not head:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await send_all(stream, data)
