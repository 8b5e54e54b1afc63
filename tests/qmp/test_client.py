"""The QMP client against a scripted fake server on real sockets."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import anyio
import anyio.abc
import pytest
import trio.testing
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.stapled import StapledObjectStream

import jobctl
from jobctl.qmp import (
    DEFAULT_CONNECT_TIMEOUT,
    MAX_COMMAND_BYTES,
    CommandNotFoundError,
    DeviceNotActiveError,
    DeviceNotFoundError,
    GenericError,
    KVMMissingCapError,
    QMPClient,
    QMPClosedError,
    QMPCommandError,
    QMPConnectTimeoutError,
    QMPError,
    QMPEvent,
    QMPGreeting,
    QMPProtocolError,
    QMPStatistics,
    QMPTimeoutError,
    SubscriptionStatistics,
    open_qmp_stream,
    open_qmp_tcp,
    open_qmp_unix,
)

from ._fake import GREETING, Peer, fake_qmp, fake_qmp_tcp

pytestmark = pytest.mark.anyio


@pytest.fixture
def timeout(anyio_backend_name: str) -> float:
    """A call timeout: virtual on trio, short real time on asyncio."""
    return 5.0 if anyio_backend_name == "trio" else 0.05


async def _cancel_when_blocked(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


# -- commands ---------------------------------------------------------------------


async def test_greeting_negotiation_and_commands() -> None:
    requests: list[dict[str, Any]] = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        for value in ({"status": "running"}, None):
            request = await peer.receive()
            requests.append(request)
            await peer.reply(request, value)
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        async with open_qmp_unix(path) as client:
            assert isinstance(client, jobctl.Monitor)
            assert client.greeting == QMPGreeting(
                version=(7, 2, 0), package="fake", capabilities=frozenset({"oob"})
            )
            assert await client.execute("query-status") == {"status": "running"}
            assert await client.execute("block-job-cancel", {"device": "j0", "force": True}) == {}
            statistics = client.statistics()
    assert [r["execute"] for r in requests] == ["query-status", "block-job-cancel"]
    assert "arguments" not in requests[0]
    assert requests[1]["arguments"] == {"device": "j0", "force": True}
    assert requests[0]["id"] != requests[1]["id"]
    assert statistics == QMPStatistics(
        commands_sent=3,
        direct_writes=3,  # one at a time on a unix socket: each caller wrote its own
        replies=3,
        events=0,
        events_dropped=0,
        in_flight=0,
        orphaned=0,
        queued=0,
        stray_errors=0,
        subscriptions=0,
        closed=False,
    )
    assert client.closed


async def test_tcp() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.reply(await peer.expect("query-name"), {"name": "vm1"})
        await peer.expect_eof()

    async with fake_qmp_tcp(script) as (host, port), open_qmp_tcp(host, port) as client:
        assert await client.execute("query-name") == {"name": "vm1"}


async def test_any_byte_stream() -> None:
    """Memory streams work too, and lines may arrive in arbitrary pieces."""
    to_server, from_client = anyio.create_memory_object_stream[bytes](10)
    to_client, from_server = anyio.create_memory_object_stream[bytes](10)
    greeting = json.dumps(GREETING).encode() + b"\r\n"

    async def server() -> None:
        async with to_client, from_client:
            await to_client.send(greeting[:7])
            await to_client.send(greeting[7:] + b"\r\n")  # a blank line is skipped
            values: list[Any] = [{}, 42]
            for value in values:
                request = json.loads(await from_client.receive())
                reply = json.dumps({"return": value, "id": request["id"]}).encode()
                await to_client.send(reply[:3])
                await to_client.send(reply[3:] + b"\r\n")

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        stream = StapledObjectStream(to_server, from_server)
        async with open_qmp_stream(stream) as client:
            assert await client.execute("query-answer") == 42


async def test_pipelining() -> None:
    """Concurrent callers have several commands in flight; replies find their caller."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        requests = [await peer.receive() for _ in range(3)]  # all three before any reply
        for request in reversed(requests):
            await peer.reply(request, request["arguments"]["n"])
        await peer.expect_eof()

    results: dict[int, Any] = {}
    async with fake_qmp(script) as path, open_qmp_unix(path) as client:

        async def run(n: int) -> None:
            results[n] = await client.execute("echo", {"n": n})

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(run, n)
    assert results == {0: 0, 1: 1, 2: 2}


@pytest.mark.parametrize(
    ("error_class", "error_type"),
    [
        ("GenericError", GenericError),
        ("CommandNotFound", CommandNotFoundError),
        ("DeviceNotFound", DeviceNotFoundError),
        ("DeviceNotActive", DeviceNotActiveError),
        ("KVMMissingCap", KVMMissingCapError),
        ("SomethingNew", QMPCommandError),
    ],
)
async def test_error_replies_are_typed(error_class: str, error_type: type[Exception]) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.fail(await peer.expect("device_del"), error_class, "no such thing")
        await peer.reply(await peer.expect("query-status"))
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(QMPCommandError) as info:
            await client.execute("device_del", {"id": "nic0"})
        assert type(info.value) is error_type
        assert isinstance(info.value, QMPError)
        assert not isinstance(info.value, QMPClosedError)
        assert (info.value.command, info.value.error_class, info.value.desc) == (
            "device_del",
            error_class,
            "no such thing",
        )
        assert str(info.value) == f"device_del: {error_class}: no such thing"
        assert await client.execute("query-status") == {}  # the session goes on


async def test_requests_that_cannot_be_encoded_are_refused_before_writing() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.reply(await peer.expect("query-status"))
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(TypeError, match=r"'bad'.*JSON"):
            await client.execute("bad", {"x": object()})
        with pytest.raises(ValueError, match=r"'bad'.*JSON"):
            await client.execute("bad", {"x": math.nan})
        with pytest.raises(ValueError, match=f"{MAX_COMMAND_BYTES}-byte limit"):
            await client.execute("bad", {"x": "a" * MAX_COMMAND_BYTES})
        with pytest.raises(TypeError, match="must be a mapping"):
            await client.execute("bad", ["x"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be a str"):
            await client.execute(b"bad")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            await client.execute("bad", timeout=-1)
        assert client.statistics().commands_sent == 1
        assert await client.execute("query-status") == {}


# -- handshake ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "match"),
    [
        (b'{"return": {}}\r\n', "expected a QMP greeting"),
        (b'{"QMP": {"capabilities": []}}\r\n', "malformed QMP greeting"),
        (
            b'{"QMP": {"version": {"qemu": {"major": "7", "minor": 2, "micro": 0}}, '
            b'"capabilities": []}}\r\n',
            "malformed QMP greeting",
        ),
        (b"Welcome!\r\n", "bad JSON"),
    ],
)
async def test_bad_greeting(greeting: bytes, match: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(greeting)
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        with pytest.raises(QMPProtocolError, match=match):
            async with open_qmp_unix(path):
                pytest.fail("opened")


async def test_negotiation_refused() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(GREETING)
        await peer.fail(await peer.expect("qmp_capabilities"), "GenericError", "not today")
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        with pytest.raises(QMPProtocolError, match=r"negotiation failed.*not today") as info:
            async with open_qmp_unix(path):
                pytest.fail("opened")
    assert isinstance(info.value.__cause__, GenericError)
    assert isinstance(info.value, QMPClosedError)


async def test_end_of_stream_before_greeting() -> None:
    async def script(peer: Peer) -> None:
        pass

    async with fake_qmp(script) as path:
        with pytest.raises(QMPClosedError, match="closed the connection"):
            async with open_qmp_unix(path):
                pytest.fail("opened")


async def never_greets(peer: Peer) -> None:
    """Say nothing, with no time limit of its own, until the client leaves."""
    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
        await peer.stream.receive()


async def test_handshake_timeout(timeout: float) -> None:
    async with fake_qmp(never_greets) as path:
        with pytest.raises(QMPConnectTimeoutError, match="no QMP greeting") as info:
            async with open_qmp_unix(path, timeout=timeout):
                pytest.fail("opened")
    assert isinstance(info.value, TimeoutError)
    assert (info.value.where, info.value.timeout, info.value.stage) == (
        f"QMP socket {path!r}",
        timeout,
        "greeting",
    )
    assert f"QMP socket {path!r} within {timeout:g} s" in str(info.value)
    assert "larger timeout=, or None" in str(info.value)


class TestOpeningTimeouts:
    """In virtual time (trio's MockClock), so the limits show to the second."""

    @pytest.fixture
    def anyio_backend(self) -> Any:
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})

    @pytest.mark.parametrize("opener", ["unix", "tcp", "stream"])
    async def test_opening_waits_for_the_greeting_30_s_by_default(self, opener: str) -> None:
        """Virtual time: the default limit is DEFAULT_CONNECT_TIMEOUT, to the second."""
        assert DEFAULT_CONNECT_TIMEOUT == 30.0
        async with fake_qmp(never_greets) as path, fake_qmp_tcp(never_greets) as (host, port):
            begun = anyio.current_time()
            with anyio.fail_after(3600), pytest.raises(QMPConnectTimeoutError, match="within 30 s"):
                if opener == "unix":
                    async with open_qmp_unix(path):
                        pytest.fail("opened")
                elif opener == "tcp":
                    async with open_qmp_tcp(host, port):
                        pytest.fail("opened")
                else:
                    async with open_qmp_stream(await anyio.connect_unix(path)):
                        pytest.fail("opened")
            assert anyio.current_time() - begun == DEFAULT_CONNECT_TIMEOUT
            if opener != "unix":  # the unused server was never connected to
                async with await anyio.connect_unix(path):
                    pass
            if opener != "tcp":
                async with await anyio.connect_tcp(host, port):
                    pass

    async def test_a_wider_timeout_and_none(self) -> None:
        """``timeout=`` widens the limit; None waits for the greeting without limit
        (here: until the caller's own scope gives up, a day later)."""
        async with fake_qmp(never_greets) as path:
            begun = anyio.current_time()
            with pytest.raises(QMPConnectTimeoutError, match="within 3600 s"):
                async with open_qmp_unix(path, timeout=3600):
                    pytest.fail("opened")
            assert anyio.current_time() - begun == 3600
        async with fake_qmp(never_greets) as path:
            begun = anyio.current_time()
            with anyio.move_on_after(86400) as scope:
                async with open_qmp_unix(path, timeout=None):
                    pytest.fail("opened")
            assert scope.cancelled_caught
            assert anyio.current_time() - begun == 86400


@pytest.mark.parametrize("bad", [-1, math.nan, "5", True])
async def test_bad_open_timeouts_are_refused_before_connecting(bad: Any) -> None:
    with pytest.raises(ValueError, match="timeout must be a non-negative number"):
        async with open_qmp_unix("/tmp/jobctl-no-such-dir/qmp.sock", timeout=bad):
            pytest.fail("opened")


def test_the_connect_timeout_message_names_the_stage() -> None:
    error = QMPConnectTimeoutError("QMP at h:1", 2.5, "connect")
    assert str(error).startswith("could not connect to QMP at h:1 within 2.5 s")


async def test_connect_failure_names_the_socket() -> None:
    path = "/tmp/jobctl-no-such-dir/qmp.sock"
    with pytest.raises(FileNotFoundError, match=path):
        async with open_qmp_unix(path):
            pytest.fail("opened")


async def test_errors_of_the_body_leave_as_themselves() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        with pytest.raises(KeyError) as info:
            async with open_qmp_unix(path):
                raise KeyError("mine")
    assert info.value.__context__ is None


async def test_outer_cancellation_of_the_body() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect("query-status")
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        with anyio.CancelScope() as outer:
            async with open_qmp_unix(path) as client, anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_blocked, outer)
                await client.execute("query-status")
        assert outer.cancelled_caught
        assert client.closed


async def test_a_client_that_is_not_running_refuses_calls() -> None:
    to_server, from_client = anyio.create_memory_object_stream[bytes](1)
    to_client, from_server = anyio.create_memory_object_stream[bytes](1)
    client = QMPClient(StapledObjectStream(to_server, from_server))
    with pytest.raises(RuntimeError, match="not running"):
        await client.execute("query-status")
    with pytest.raises(RuntimeError, match="not been greeted"):
        client.greeting  # noqa: B018
    for stream in (to_server, from_client, to_client, from_server):
        stream.close()


async def test_calls_after_the_block_raise_closed() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        async with open_qmp_unix(path) as client:
            pass
        with pytest.raises(QMPClosedError, match="client was closed"):
            await client.execute("query-status")
        assert client.statistics().closed


# -- events -------------------------------------------------------------------------


async def test_event_before_the_return_is_delivered() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("stop")
        await peer.event("STOP")
        await peer.reply(request)
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with client.subscribe("STOP") as stops:
            await client.execute("stop")
            event = stops.receive_nowait()
        assert (event.name, dict(event.data), event.timestamp) == ("STOP", {}, 1700000000.25)
        assert client.statistics().events == 1


async def test_names_and_filters_route_events() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("go")
        await peer.event("JOB", {"id": "a"})
        await peer.event("JOB", {"id": "b"})
        await peer.event("STOP")
        await peer.event("RESUME")
        await peer.reply(request)
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with (
            client.subscribe("JOB", filter=lambda data: data["id"] == "b") as job_b,
            client.subscribe(["STOP", "RESUME"]) as runstate,
            client.subscribe() as everything,
        ):
            assert client.statistics().subscriptions == 3
            await client.execute("go")
            assert dict(job_b.receive_nowait().data) == {"id": "b"}
            with pytest.raises(anyio.WouldBlock):
                job_b.receive_nowait()
            assert [runstate.receive_nowait().name for _ in range(2)] == ["STOP", "RESUME"]
            assert [(await everything.receive()).name for _ in range(4)] == [
                "JOB",
                "JOB",
                "STOP",
                "RESUME",
            ]
        assert client.statistics().subscriptions == 0
        with pytest.raises(anyio.ClosedResourceError):
            job_b.receive_nowait()


async def test_listeners_are_called_as_events_arrive_and_never_break_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("go")
        for n in range(3):
            await peer.event("TICK", {"n": n})
        await peer.event("STOP")
        await peer.reply(request, "done")
        request = await peer.expect("again")
        await peer.event("TICK", {"n": 3})
        await peer.reply(request, "done")
        await peer.expect_eof()

    seen: list[tuple[str, int | None]] = []

    def broken(event: QMPEvent) -> None:
        raise ValueError(f"cannot take {event.name}")

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        ticks = client.listen("TICK", lambda event: seen.append((event.name, event.data["n"])))
        with client.listen(None, broken), client.subscribe("STOP") as stops:
            # Called by the reader before the reply is: all taken by now.
            assert await client.execute("go") == "done"
            assert seen == [("TICK", 0), ("TICK", 1), ("TICK", 2)]
            assert stops.receive_nowait().name == "STOP"  # subscriptions still get theirs
        ticks.close()
        assert ticks.closed
        assert await client.execute("again") == "done"
        assert seen == [("TICK", 0), ("TICK", 1), ("TICK", 2)]
    raised = [r for r in caplog.records if r.name == "jobctl.qmp"]
    assert [r.getMessage() for r in raised] == [
        f"an event listener raised on a {name} event" for name in ("TICK",) * 3 + ("STOP",)
    ]
    with pytest.raises(ValueError, match="no event names"):
        client.listen([], print)


async def test_slow_subscriber_drops_without_blocking_anyone() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("go")
        for n in range(5):
            await peer.event("TICK", {"n": n})
        await peer.reply(request, "done")
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with (
            client.subscribe("TICK", max_buffer=2) as slow,
            client.subscribe("TICK", max_buffer=8) as roomy,
        ):
            assert await client.execute("go") == "done"
            assert [slow.receive_nowait().data["n"] for _ in range(2)] == [0, 1]
            with pytest.raises(anyio.WouldBlock):
                slow.receive_nowait()
            assert slow.dropped == 3
            assert slow.statistics() == SubscriptionStatistics(
                buffered=0, max_buffer=2, delivered=2, dropped=3, closed=False
            )
            assert [roomy.receive_nowait().data["n"] for _ in range(5)] == list(range(5))
            assert roomy.dropped == 0
        statistics = client.statistics()
        assert (statistics.events, statistics.events_dropped) == (5, 3)


async def test_async_for_and_a_failing_filter() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("go")
        await peer.event("A")
        await peer.event("B", {"n": 1})
        await peer.reply(request)
        await peer.reply(await peer.expect("query-status"))
        await peer.expect_eof()

    def broken(data: Any) -> bool:
        return bool(data["missing"])

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with client.subscribe() as everything, client.subscribe("B", filter=broken) as bad:
            await client.execute("go")
            names = []
            async for event in everything:
                names.append(event.name)
                if len(names) == 2:
                    everything.close()
            assert names == ["A", "B"]
            with pytest.raises(RuntimeError, match="filter raised on a B event") as info:
                await bad.receive()
            assert isinstance(info.value.__cause__, KeyError)
            assert await client.execute("query-status") == {}


async def test_subscription_validation() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(ValueError, match="max_buffer"):
            client.subscribe("STOP", max_buffer=0)
        with pytest.raises(ValueError, match="no event names"):
            client.subscribe([])
        with pytest.raises(TypeError, match="event names must be str"):
            client.subscribe([b"STOP"])  # type: ignore[list-item]


# -- the connection failing --------------------------------------------------------


async def _run_three(client: QMPClient) -> list[BaseException]:
    errors: list[BaseException] = []

    async def run(n: int) -> None:
        try:
            await client.execute("echo", {"n": n})
        except QMPClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(run, n)
    return errors


async def test_end_of_stream_fails_every_waiter_at_once() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        for _ in range(3):
            await peer.receive()
        await peer.event("LAST")
        # leaving closes the connection with three commands in flight

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with client.subscribe() as events:
            started = anyio.current_time()
            errors = await _run_three(client)
            assert anyio.current_time() - started < 1
            assert len(errors) == 3
            assert {type(e) for e in errors} == {QMPClosedError}
            assert all("peer closed the connection" in str(e) for e in errors)
            assert len({id(e) for e in errors}) == 3  # one exception object each
            assert events.receive_nowait().name == "LAST"  # buffered events still come
            with pytest.raises(QMPClosedError):
                await events.receive()
        with pytest.raises(QMPClosedError, match="peer closed"):
            await client.execute("query-status")
        statistics = client.statistics()
        assert statistics.closed
        assert statistics.in_flight == 0


async def test_reset_fails_every_waiter() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.reset()  # unread commands: the client's read gets ECONNRESET

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        errors = await _run_three(client)
        assert len(errors) == 3
        assert {type(e) for e in errors} == {QMPClosedError}
        # The read sees the reset, or a write (a caller's own, on a clear
        # line) sees the socket broken first: either names it.
        assert len({str(e) for e in errors}) == 1, errors
        assert all(
            "ConnectionResetError" in str(e) or "BrokenPipeError" in str(e) for e in errors
        ), errors


async def test_stream_ending_inside_a_message() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect("query-status")
        await peer.send(b'{"return": {')

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(QMPClosedError, match="ended inside a message"):
            await client.execute("query-status")


@pytest.mark.parametrize(
    ("garbage", "match"),
    [
        (b"{bad json\r\n", "bad JSON"),
        (b"[1, 2]\r\n", "not a JSON object"),
        (b'{"hello": 1}\r\n', "unrecognised QMP message"),
        (b'{"return": {}, "id": 999}\r\n', "reply for id 999, which no command"),
        (b'{"return": {}}\r\n', "reply without an id"),
        (b'{"error": "oops", "id": 1}\r\n', "malformed QMP error reply"),
        (b'{"event": "STOP", "timestamp": "now"}\r\n', "malformed QMP event"),
        (b'{"event": 7, "timestamp": {"seconds": 1, "microseconds": 0}}\r\n', "malformed"),
    ],
)
async def test_malformed_input_is_a_protocol_error(garbage: bytes, match: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect("query-status")
        await peer.send(garbage)
        await peer.expect_eof()  # the client closed the connection

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(QMPProtocolError, match=match):
            await client.execute("query-status")
        assert client.closed
        with pytest.raises(QMPProtocolError, match=match):
            await client.execute("query-status")


@pytest.mark.parametrize("in_pieces", [False, True])
async def test_oversized_line(in_pieces: bool) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("query-qmp-schema")
        line = json.dumps({"return": "x" * 2000, "id": request["id"]}).encode() + b"\r\n"
        if in_pieces:
            await peer.send(line[:1500])  # the limit is hit before any newline
        else:
            await peer.send(line)
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path, max_line=1024) as client:
        with pytest.raises(QMPProtocolError, match="1024-byte limit"):
            await client.execute("query-qmp-schema")


async def test_max_line_must_be_positive() -> None:
    to_server, from_client = anyio.create_memory_object_stream[bytes](1)
    to_client, from_server = anyio.create_memory_object_stream[bytes](1)
    with pytest.raises(ValueError, match="max_line"):
        async with open_qmp_stream(StapledObjectStream(to_server, from_server), max_line=0):
            pytest.fail("opened")
    with pytest.raises(anyio.ClosedResourceError):  # the stream was closed
        await to_server.send(b"x")
    from_client.close()
    to_client.close()


# -- error replies without an id ------------------------------------------------------


async def test_idless_error_fails_the_oldest_command_only() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        first = await peer.expect("first")
        second = await peer.expect("second")
        await peer.send({"error": {"class": "GenericError", "desc": "JSON parse error"}})
        await peer.reply(second, "two")
        await peer.reply(await peer.expect("query-status"), "fine")
        await peer.expect_eof()
        assert first["id"] != second["id"]

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        outcome: dict[str, Any] = {}

        async def run(command: str) -> None:
            try:
                outcome[command] = await client.execute(command)
            except GenericError as exc:
                outcome[command] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(run, "second")
        assert isinstance(outcome["first"], GenericError)
        assert outcome["first"].desc == "JSON parse error"
        assert outcome["first"].command == "first"
        assert outcome["second"] == "two"
        assert await client.execute("query-status") == "fine"
        assert client.statistics().stray_errors == 0


async def test_stray_idless_error_is_counted_and_the_session_goes_on() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.reply(await peer.expect("ready"))
        await peer.send({"error": {"class": "GenericError", "desc": "JSON parse error"}})
        await peer.event("MARK")
        await peer.reply(await peer.expect("query-status"), "fine")
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with client.subscribe("MARK") as mark:
            await client.execute("ready")
            await mark.receive()  # the stray error came before it, with nothing in flight
        assert client.statistics().stray_errors == 1
        assert await client.execute("query-status") == "fine"
        assert not client.closed


# -- timeouts and cancellation ----------------------------------------------------------


@pytest.mark.parametrize("give_up", ["timeout", "cancel"])
async def test_abandoned_command_holds_back_the_next_one(give_up: str, timeout: float) -> None:
    second_waiting = anyio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        first = await peer.expect("slow")
        await second_waiting.wait()
        assert not peer.has_pending()  # "query-status" was not written
        await peer.reply(first, "late")
        await peer.reply(await peer.expect("query-status"), "ok")
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        if give_up == "timeout":
            with pytest.raises(QMPTimeoutError, match="still in flight") as info:
                await client.execute("slow", timeout=timeout)
            assert (info.value.command, info.value.sent) == ("slow", True)
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, QMPError)
        else:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_when_blocked, scope)
                    await client.execute("slow")
            assert scope.cancelled_caught
        statistics = client.statistics()
        assert (statistics.in_flight, statistics.orphaned) == (1, 1)

        results = []

        async def second() -> None:
            results.append(await client.execute("query-status"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert client.statistics().queued == 1
            second_waiting.set()
        assert results == ["ok"]  # not the late reply of "slow"
        statistics = client.statistics()
        assert (statistics.in_flight, statistics.orphaned, statistics.replies) == (0, 0, 3)
        # Past the orphan, "query-status" went through the writer, not its caller.
        assert (statistics.commands_sent, statistics.direct_writes) == (3, 2)


async def test_cancelled_before_writing_is_never_written() -> None:
    release = anyio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        first = await peer.expect("slow")
        await release.wait()
        await peer.reply(first)
        await peer.reply(await peer.expect("third"), 3)  # "second" never arrives
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_blocked, scope)
                await client.execute("slow")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_blocked, scope)
                await client.execute("second")  # held back by the orphan, then withdrawn
        assert client.statistics().queued == 0
        release.set()
        assert await client.execute("third") == 3
        assert client.statistics().commands_sent == 3  # capabilities, slow, third


async def test_timeout_before_writing(timeout: float) -> None:
    release = anyio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        first = await peer.expect("slow")
        await release.wait()
        await peer.reply(first)
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(QMPTimeoutError):
            await client.execute("slow", timeout=timeout)
        with pytest.raises(QMPTimeoutError, match="not sent") as info:
            await client.execute("held", timeout=timeout)
        assert not info.value.sent
        release.set()


async def test_cancelled_caller_does_not_disturb_the_connection() -> None:
    """A cancelled wait leaves pipelined neighbours and later calls intact."""
    cancelled = anyio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        doomed = await peer.expect("doomed")
        kept = await peer.expect("kept")
        await peer.reply(kept, "kept")
        await cancelled.wait()
        await peer.reply(doomed, "late")
        await peer.reply(await peer.expect("after"), "after")
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        results = []
        doomed_scope = anyio.CancelScope()

        async def doomed() -> None:
            with doomed_scope:
                await client.execute("doomed")

        async def kept() -> None:
            results.append(await client.execute("kept"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(kept)
            await anyio.wait_all_tasks_blocked()
            assert results == ["kept"]
            doomed_scope.cancel()
        assert doomed_scope.cancelled_caught
        assert client.statistics().orphaned == 1
        cancelled.set()
        assert await client.execute("after") == "after"
        assert client.statistics().orphaned == 0


# -- a caller's own write, on a plain socket -----------------------------------


async def test_a_command_on_a_clear_line_is_written_by_its_caller() -> None:
    """One at a time, each caller writes its own command; a second caller
    while one is in flight goes through the writer, and both are answered."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.reply(await peer.expect("alone"), 1)
        first, second = await peer.receive(), await peer.receive()
        await peer.reply(second, second["arguments"]["n"])
        await peer.reply(first, first["arguments"]["n"])
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        assert client.statistics().direct_writes == 1  # qmp_capabilities
        assert await client.execute("alone") == 1
        assert client.statistics().direct_writes == 2
        results: dict[int, Any] = {}

        async def run(n: int) -> None:
            results[n] = await client.execute("echo", {"n": n})

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 1)
            tg.start_soon(run, 2)
        assert results == {1: 1, 2: 2}
        statistics = client.statistics()
        assert (statistics.commands_sent, statistics.direct_writes) == (4, 3)


async def test_what_a_direct_write_leaves_the_writer_writes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A command longer than the socket's buffer (only with the limit on
    direct writes raised: 4 KiB always fits) is written in part by its
    caller and the rest by the writer, before anything queued after it."""
    import socket

    from anyio.abc import SocketAttribute

    import jobctl.qmp._client as client_module

    monkeypatch.setattr(client_module, "_DIRECT_BYTES", MAX_COMMAND_BYTES)
    big = "x" * 300_000

    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("big")
        assert request["arguments"] == {"blob": big}
        after = await peer.expect("after")
        await peer.reply(request, len(request["arguments"]["blob"]))
        await peer.reply(after, "after")
        await peer.expect_eof()

    async with fake_qmp(script) as path:
        stream = await anyio.connect_unix(path)
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel's minimum
        async with open_qmp_stream(stream) as client:
            results: list[Any] = []

            async def after() -> None:
                await anyio.wait_all_tasks_blocked()
                results.append(await client.execute("after"))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(after)
                    results.append(await client.execute("big", {"blob": big}))
            assert sorted(map(str, results)) == ["300000", "after"]
            assert client.statistics().direct_writes == 2  # capabilities, big


async def test_memory_streams_go_through_the_writer() -> None:
    to_server, from_client = anyio.create_memory_object_stream[bytes](10)
    to_client, from_server = anyio.create_memory_object_stream[bytes](10)

    async def server() -> None:
        async with to_client, from_client:
            await to_client.send(json.dumps(GREETING).encode() + b"\r\n")
            for _ in range(2):
                request = json.loads(await from_client.receive())
                await to_client.send(
                    json.dumps({"return": 7, "id": request["id"]}).encode() + b"\n"
                )

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with open_qmp_stream(StapledObjectStream(to_server, from_server)) as client:
            assert await client.execute("seven") == 7
            statistics = client.statistics()
            assert (statistics.commands_sent, statistics.direct_writes) == (2, 0)


_SIGPIPE_PROGRAM = """
import json, signal, socket, sys, threading
import anyio, anyio.abc
from jobctl.qmp import QMPClosedError, open_qmp_stream

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a program may have it: SIGPIPE kills
path, backend = sys.argv[1], sys.argv[2]

async def main() -> None:
    ours, theirs = socket.socketpair()
    greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                    "package": ""}, "capabilities": []}}
    theirs.sendall(json.dumps(greeting).encode() + b"\\r\\n")
    shut = threading.Event()

    def peer() -> None:
        reader = theirs.makefile("rb")
        request = json.loads(reader.readline())
        theirs.sendall(json.dumps({"return": {}, "id": request["id"]}).encode() + b"\\r\\n")
        if path == "writer":
            json.loads(reader.readline())  # "first", left unanswered
        theirs.shutdown(socket.SHUT_RD)  # reads no more: a write to it is EPIPE
        shut.set()

    thread = threading.Thread(target=peer)
    thread.start()
    stream = await anyio.abc.UNIXSocketStream.from_socket(ours)
    errors = []

    async def run(command):
        try:
            await client.execute(command)
        except QMPClosedError as exc:
            errors.append(str(exc))

    async with open_qmp_stream(stream) as client, anyio.create_task_group() as tg:
        if path == "writer":
            tg.start_soon(run, "first")  # in flight: the next goes through the writer
        await anyio.to_thread.run_sync(shut.wait)
        await run("query-status")
    thread.join()
    print(json.dumps({"errors": errors, "direct": client.statistics().direct_writes}))

anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("path", ["direct", "writer"])
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_peer_gone_is_an_error_not_sigpipe(path: str, backend: str) -> None:
    """In a program where SIGPIPE kills (its default action), a write to a
    peer that reads no more fails every waiter with the broken pipe, by the
    caller's own write and by the writer's; the program lives on."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SIGPIPE_PROGRAM, path, backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    outcome = json.loads(done.stdout)
    expected = 1 if path == "direct" else 2
    assert len(outcome["errors"]) == expected, outcome
    assert all("failed while writing: BrokenPipeError" in e for e in outcome["errors"]), outcome
    # Callers' own writes: capabilities, then query-status ("direct") or
    # "first" ("writer": query-status went through the writer).
    assert outcome["direct"] == 2, outcome


class _Masked(anyio.abc.ByteStream):
    """A stream over a socket stream that changes the bytes both ways (XOR)
    and names the socket's attributes as its own, as anyio's ``TLSStream``
    does: its bytes are not the socket's."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner

    async def send(self, item: bytes) -> None:
        await self.inner.send(bytes(b ^ 0x55 for b in item))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return bytes(b ^ 0x55 for b in await self.inner.receive(max_bytes))

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Any:
        return self.inner.extra_attributes


async def test_a_wrapper_naming_its_socket_goes_through_the_stream() -> None:
    """The socket under a wrapper stream (TLS) is not written or read
    directly: the wrapper's bytes are what the peer speaks."""
    with tempfile.TemporaryDirectory(prefix="qmp", dir="/tmp") as tmp:
        await _serve_masked(os.path.join(tmp, "qmp.sock"))


async def _serve_masked(path: str) -> None:
    async with await anyio.create_unix_listener(path) as listener:

        async def peer() -> None:
            async with await listener.accept() as raw:
                masked = _Masked(raw)
                await masked.send(json.dumps(GREETING).encode() + b"\r\n")
                buffered = BufferedByteReceiveStream(masked)
                values: list[Any] = [{}, "fine"]
                for value in values:
                    request = json.loads(await buffered.receive_until(b"\n", 1 << 16))
                    await masked.send(
                        json.dumps({"return": value, "id": request["id"]}).encode() + b"\r\n"
                    )

        async with anyio.create_task_group() as tg:
            tg.start_soon(peer)
            stream = _Masked(await anyio.connect_unix(path))
            assert stream.extra(anyio.abc.SocketAttribute.raw_socket) is not None
            async with open_qmp_stream(stream, timeout=5) as client:
                assert await client.execute("query-status") == "fine"
                assert client.statistics().direct_writes == 0


async def test_a_stream_closed_under_the_client_is_a_closed_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream its owner closes while the client waits to read (through
    ``open_qmp_stream``) ends the connection as a failed read, on either
    backend: the backend's own error for a socket closed under a wait is
    named as such, not taken for a message the client could not handle
    (it was, with trio's own socket wait, until that error was translated)."""
    import socket

    ours, theirs = socket.socketpair()
    client_end = await anyio.abc.UNIXSocketStream.from_socket(ours)
    peer = Peer(await anyio.abc.UNIXSocketStream.from_socket(theirs))
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.handshake)
        async with open_qmp_stream(client_end) as client:
            await anyio.wait_all_tasks_blocked()  # the reader waits for the socket
            await client_end.aclose()
            # (On asyncio the command's own write meets the closed socket first.)
            with pytest.raises(QMPClosedError, match=r"failed while (reading|writing)") as info:
                await client.execute("query-status")
            assert type(info.value) is QMPClosedError  # not a protocol error
    await peer.stream.aclose()
    assert not [r for r in caplog.records if r.name == "jobctl.qmp" and r.levelname == "ERROR"]
