"""The page's HTTP server, over in-memory streams, in virtual time."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
import trio
import trio.testing

from jobctl import TRACE_SCHEMA_VERSION
from jobctl.feed import PageServer

pytestmark = pytest.mark.anyio

CONFIG = {"v": 1, "ws_port": 8765, "ws_path": "/feed", "token_required": False}


async def exchange(request: bytes, *, close: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` to a fresh PageServer; return status, headers, body."""
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(PageServer(CONFIG).handle_stream, server)
        await client.send_all(request)
        if close:
            await client.send_eof()
        response = b""
        while chunk := await client.receive_some():
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def static(name: str) -> bytes:
    return (resources.files("jobctl.feed") / "static" / name).read_bytes()


@pytest.mark.parametrize(
    ("path", "name", "content_type"),
    [
        ("/", "index.html", "text/html"),
        ("/?token=x", "index.html", "text/html"),
        ("/app.js", "app.js", "text/javascript"),
        ("/style.css", "style.css", "text/css"),
    ],
)
async def test_the_static_files_are_served(path: str, name: str, content_type: str) -> None:
    status, headers, body = await exchange(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 200
    assert body == static(name)
    assert headers["content-type"].startswith(content_type)
    assert headers["content-length"] == str(len(body))
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in headers["content-security-policy"]


async def test_the_config_is_served() -> None:
    status, headers, body = await exchange(b"GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == CONFIG


async def test_head_has_no_body() -> None:
    status, headers, body = await exchange(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len(static("index.html")))


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /../secret HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 40_000, 431),
    ],
)
async def test_anything_else_is_refused(request_bytes: bytes, status: int) -> None:
    got, headers, _ = await exchange(request_bytes)
    assert got == status
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


async def test_a_silent_client_is_hung_up_on() -> None:
    server, client = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await PageServer(CONFIG, request_timeout=5).handle_stream(server)
    assert trio.current_time() - start == 5
    assert await client.receive_some() == b""


async def test_a_request_cut_short_is_a_bad_request() -> None:
    status, _, _ = await exchange(b"GET / HTT", close=True)
    assert status == 400


async def test_a_client_that_leaves_at_once_gets_nothing() -> None:
    server, client = trio.testing.memory_stream_pair()
    await client.send_eof()
    await PageServer(CONFIG).handle_stream(server)
    assert await client.receive_some() == b""


def test_the_page_reads_the_trace_schema_the_core_writes() -> None:
    """The page skips events of another trace schema: a bump in the core
    without one in the page would leave every lane empty."""
    script = (resources.files("jobctl.feed") / "static" / "app.js").read_text()
    found = re.search(r"const TRACE_SCHEMA = (\d+);", script)
    assert found is not None
    assert int(found.group(1)) == TRACE_SCHEMA_VERSION
