"""The feed and its page over real sockets, in trio and in asyncio.

Clients are real websocket libraries: trio-websocket in trio, websockets in
asyncio. Real sockets: the real clock (the timeouts here are short, and no
assertion is about how long anything took).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anyio
import pytest

from jobctl import TraceHub, TraceKind
from jobctl.feed import Feed, FeedBackendError, serve_feed

from ._loopback import anyio_backend_name, client, raw_exchange, serving
from ._loopback import raw_refusal as refusal


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.mark.anyio
async def test_the_page_and_the_feed_on_loopback() -> None:
    hub = TraceHub()
    async with serving(hub) as address:
        status, body = await raw_exchange(
            address.http_port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert (status, b"app.js" in body) == (200, True)
        status, body = await raw_exchange(
            address.http_port, b"GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert json.loads(body)["ws_port"] == address.ws_port
        # Plain HTTP on the websocket's port: 400, on both backends.
        plain = await raw_exchange(address.ws_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain[0] == 400
        page = [("Origin", f"http://127.0.0.1:{address.http_port}")]
        async with client(address.ws_url, page) as ws:
            hello = await ws.receive_type("hello")
            assert hello["buffer"] == 1024
            await ws.receive_type("snapshot")
            hub.emit("vm", TraceKind.GATE_OPEN)
            (event,) = (await ws.receive_type("events"))["events"]
            assert (event["domain"], event["kind"]) == ("vm", "gate.open")
        assert (await refusal(address.ws_port, headers="Origin: http://evil.example\r\n"))[0] == 403
        assert (await refusal(address.ws_port, path="/nope"))[0] == 404
    assert not hub.active


@pytest.mark.anyio
async def test_off_loopback_the_token_is_checked() -> None:
    async with serving(TraceHub(), host="127.0.0.1", token="s3cret") as address:
        status, body = await refusal(address.ws_port)
        assert (status, b"token" in body) == (403, True)
        assert (await refusal(address.ws_port, path="/feed?token=wrong"))[0] == 403
        async with client(address.ws_url + "?token=s3cret") as ws:
            await ws.receive_type("hello")


@pytest.mark.anyio
async def test_max_clients_and_the_bounded_outbox() -> None:
    hub = TraceHub()
    async with serving(hub, max_clients=1, buffer=4) as address:
        async with client(address.ws_url) as ws:
            await ws.receive_type("hello")
            await ws.receive_type("snapshot")
            status, body = await refusal(address.ws_port)
            assert (status, b"too many clients" in body) == (503, True)
            # 50 events at once, without a checkpoint: 4 fit, 46 are lost.
            for _ in range(50):
                hub.emit("vm", TraceKind.GATE_OPEN)
            events = (await ws.receive_type("events"))["events"]
            assert len(events) == 4
            dropped = await ws.receive_type("dropped")
            assert (dropped["count"], dropped["total"]) == (46, 46)
            snapshot = await ws.receive_type("snapshot")
            assert snapshot["seq"] == events[0]["seq"] + 49


@pytest.mark.anyio
async def test_pings_are_answered_by_live_clients_and_deaf_ones_are_cut_off() -> None:
    """The feed only pushes, yet reads: a live client's pongs are seen."""
    hub = TraceHub()
    async with serving(hub, ping_interval=0.05, ping_timeout=1.0) as address:
        feed = address.feed
        assert isinstance(feed, Feed)
        async with client(address.ws_url) as ws:
            await ws.receive_type("hello")
            await ws.receive_type("snapshot")
            # A deaf client: handshake, then reads bytes but never answers a ping.
            status, _ = await refusal(address.ws_port)  # returns at EOF: cut off
            assert status == 101
            stats = feed.statistics()
            assert (stats.unresponsive, stats.clients) == (1, 1)
            hub.emit("vm", TraceKind.GATE_OPEN)
            await ws.receive_type("events")  # the live one, pinged all along, stays


@pytest.mark.anyio
async def test_a_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    async with serving(TraceHub(), handshake_timeout=0.2) as address:
        feed = address.feed
        assert feed is not None
        async with await anyio.connect_tcp("127.0.0.1", address.ws_port) as stream:
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        assert feed.statistics().handshake_timeouts == 1


@pytest.mark.anyio
async def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    trio = anyio_backend_name() == "trio"
    module, extra = ("trio_websocket", "trio") if trio else ("wsproto", "feed")
    monkeypatch.setitem(sys.modules, module, None)
    message = rf"needs {module}, which is not installed: pip install 'virt-jobctl\[{extra}\]'"
    with pytest.raises(FeedBackendError, match=message):
        await serve_feed(TraceHub())
    with Feed(TraceHub()) as feed, pytest.raises(FeedBackendError, match=message):
        await feed.handle_stream(None)


def test_outside_an_event_loop_the_feed_says_so() -> None:
    serving = Feed(TraceHub()).handle_stream(None)
    with pytest.raises(FeedBackendError, match="inside an event loop"):
        serving.send(None)  # driven by hand: no event loop runs it


ASYNCIO_APP = """
import sys
sys.modules["trio"] = None  # an asyncio application without trio installed
sys.modules["trio_websocket"] = None
import asyncio, json
from functools import partial
import anyio
from websockets.asyncio.client import connect
import jobctl
from jobctl.feed import serve_feed

async def main():
    hub = jobctl.TraceHub()
    async with anyio.create_task_group() as tg:
        address = await tg.start(partial(serve_feed, hub))
        async with connect(address.ws_url) as ws:
            kinds = [json.loads(await ws.recv())["type"] for _ in range(2)]
            hub.emit("vm", jobctl.TraceKind.GATE_OPEN)
            kinds.append(json.loads(await ws.recv())["type"])
        print(" ".join(kinds))
        tg.cancel_scope.cancel()

asyncio.run(main())
"""


def test_an_asyncio_application_needs_no_trio() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ASYNCIO_APP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "snapshot", "events"]
