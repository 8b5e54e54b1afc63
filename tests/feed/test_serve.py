"""serve_feed over real loopback sockets (in trio and in asyncio), and the
``jobctl serve`` options."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
import trio

from jobctl import TraceHub, TraceKind
from jobctl.cli import build_parser, main
from jobctl.feed import FeedAddress, FeedConfigError, check_listen, serve_feed

from ._loopback import BOTH, client, raw_exchange, raw_refusal

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> Any:
    """Real sockets, the real clock: trio, unless a test runs in both loops
    (``BOTH``): ``jobctl serve`` itself runs in trio."""
    return "trio"


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    return await raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


@pytest.mark.parametrize("anyio_backend", BOTH)
async def test_the_page_and_the_feed_on_loopback(anyio_backend: Any) -> None:
    hub = TraceHub()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            address = await tg.start(partial(serve_feed, hub))
            assert address.host == "127.0.0.1"
            assert address.page_url == f"http://127.0.0.1:{address.http_port}/"
            assert address.ws_url == f"ws://127.0.0.1:{address.ws_port}/feed"

            status, body = await http_get(address.http_port, "/")
            assert status == 200
            assert b"app.js" in body
            status, body = await http_get(address.http_port, "/config.json")
            assert json.loads(body) == {
                "v": 1,
                "ws_port": address.ws_port,
                "ws_path": "/feed",
                "token_required": False,
            }
            # Plain HTTP on the websocket's own port gets 400.
            assert (await http_get(address.ws_port, "/"))[0] == 400

            page = [("Origin", f"http://127.0.0.1:{address.http_port}")]
            async with client(address.ws_url, page) as ws:
                await ws.receive_type("hello")
                await ws.receive_type("snapshot")
                hub.emit("vm", TraceKind.GATE_OPEN)
                (event,) = (await ws.receive_type("events"))["events"]
                assert (event["domain"], event["kind"]) == ("vm", "gate.open")

            evil = "Origin: http://evil.example\r\n"
            assert (await raw_refusal(address.ws_port, headers=evil))[0] == 403
            tg.cancel_scope.cancel()
    assert not hub.active  # the feed let go of the hub


@pytest.mark.parametrize("anyio_backend", BOTH)
async def test_with_a_token(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            address = await tg.start(partial(serve_feed, TraceHub(), token="s3cret"))
            config = json.loads((await http_get(address.http_port, "/config.json"))[1])
            assert config["token_required"]
            assert (await raw_refusal(address.ws_port))[0] == 403
            assert (await raw_refusal(address.ws_port, path="/feed?token=wrong"))[0] == 403
            async with client(address.ws_url + "?token=s3cret") as ws:
                await ws.receive_type("hello")
            tg.cancel_scope.cancel()


async def test_off_loopback_without_a_token_is_refused_before_listening() -> None:
    with pytest.raises(FeedConfigError, match="needs a token"):
        await serve_feed(TraceHub(), host="0.0.0.0")


@pytest.mark.parametrize("anyio_backend", BOTH)
async def test_a_busy_port_is_an_error_and_leaks_nothing(anyio_backend: Any) -> None:
    """The page's port is taken: serve_feed raises, after closing the
    websocket's listener it had opened (an unclosed one would warn: an error)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as taken:
        port = taken.extra(anyio.abc.SocketAttribute.local_port)
        with pytest.raises(OSError):
            await serve_feed(TraceHub(), http_port=port)


@pytest.mark.parametrize(
    ("host", "token", "bind"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("localhost", None, "127.0.0.1"),
        ("::1", None, "::1"),
        ("127.0.0.2", None, "127.0.0.2"),
        ("0.0.0.0", "t", "0.0.0.0"),
        ("::", "t", "::"),
        ("10.1.2.3", "t", "10.1.2.3"),
    ],
)
def test_where_the_feed_may_listen(host: str, token: str | None, bind: str) -> None:
    assert check_listen(host, token) == bind


@pytest.mark.parametrize(
    ("host", "token", "match"),
    [
        ("0.0.0.0", None, "needs a token"),
        ("::", None, "needs a token"),
        ("192.168.1.1", None, "needs a token"),
        ("example.com", "t", "give an IP address"),
        ("127.0.0.1", "", "must not be empty"),
    ],
)
def test_where_the_feed_may_not_listen(host: str, token: str | None, match: str) -> None:
    with pytest.raises(FeedConfigError, match=match):
        check_listen(host, token)


def test_addresses_print_as_urls() -> None:
    assert FeedAddress("::1", 1, 2, False).ws_url == "ws://[::1]:1/feed"
    assert FeedAddress("::1", 1, 2, False).page_url == "http://[::1]:2/"
    assert "0.0.0.0" not in FeedAddress("0.0.0.0", 1, 2, True).page_url


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_serve_refuses_to_listen_off_loopback_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBCTL_FEED_TOKEN", raising=False)
    assert main(["serve", "--listen", "0.0.0.0"]) == 2
    assert "needs a token" in capsys.readouterr().err


def test_the_token_may_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBCTL_FEED_TOKEN", "from-env")
    argv = ["--listen", "0.0.0.0", "--ws-port", "0", "--http-port", "0", "--duration", "0.2"]
    assert main(["serve", *argv, "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert "needs a token" not in captured.err
    assert "#token=YOUR-TOKEN" in captured.out  # the page asks for it


@pytest.mark.parametrize(
    "argv",
    [
        ("--ws-port", "65536"),
        ("--http-port", "x"),
        ("--buffer", "0"),
        ("--domains", "-1"),
        ("--duration", "nan"),
        ("--duration", "0"),
    ],
)
def test_bad_options_are_refused(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_serve_runs_for_its_duration(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--ws-port", "0", "--http-port", "0", "--duration", "0.5", "--seed", "1"]
    assert main(["serve", *argv]) == 0
    out = capsys.readouterr().out
    assert "timeline page http://127.0.0.1:" in out
    assert "websocket feed ws://127.0.0.1:" in out


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
async def test_jobctl_serve_runs_until_stopped(stop: signal.Signals) -> None:
    command = [sys.executable, "-m", "jobctl", "serve", "--ws-port", "0", "--http-port", "0"]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        out = b""
        with trio.fail_after(60):
            while not re.search(rb"websocket feed ws://\S+\n", out):
                chunk = await process.stdout.receive_some()
                assert chunk, f"jobctl serve said only {out!r}"
                out += chunk
        found = re.search(rb"timeline page http://127.0.0.1:(\d+)/", out)
        assert found is not None
        assert (await http_get(int(found.group(1)), "/"))[0] == 200
        process.send_signal(stop)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
