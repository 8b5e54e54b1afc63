"""The feed's websocket protocol, over in-memory streams, in virtual time."""

from __future__ import annotations

import json
import time
from typing import NoReturn

import pytest
import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, wrap_client_stream

from jobctl import TRACE_SCHEMA_VERSION, TraceHub, TraceKind
from jobctl.feed import Feed, FeedState

from ._support import Recorder, connected, emit, receive, receive_events, receive_type, refusal

pytestmark = pytest.mark.anyio


async def test_hello_snapshot_then_live_events() -> None:
    hub = TraceHub()
    seen = Recorder(hub)
    with Feed(hub, buffer=8) as feed:
        emit(
            hub, "vm-1", TraceKind.ASYNC_BEGIN, 1, "MIGRATION_OUT", allowed=["QUERY"], waited=False
        )
        emit(hub, "vm-1", TraceKind.ASYNC_PHASE, 1, "MIGRATION_OUT", phase="perform")
        emit(hub, "vm-1", TraceKind.GATE_OPEN, 1, "MIGRATION_OUT")
        emit(hub, "vm-2", TraceKind.JOB_WAIT, 2, "MODIFY", position=0)
        async with connected(feed) as ws:
            hello = await receive_type(ws, "hello")
            assert hello["trace_schema"] == TRACE_SCHEMA_VERSION
            assert hello["kinds"] == [kind.value for kind in TraceKind]
            assert hello["buffer"] == 8
            assert hello["t"] == trio.current_time()

            snapshot = await receive_type(ws, "snapshot")
            assert snapshot["seq"] == seen.events[-1].seq
            assert snapshot["subscription"] == {"domains": None, "kinds": None}
            vm1, vm2 = snapshot["domains"]
            assert vm1["name"] == "vm-1"
            assert vm1["async_job"]["job"] == "MIGRATION_OUT"
            assert vm1["async_job"]["phase"] == "perform"
            assert vm1["interruptible"] == {"since": seen.events[2].time}
            assert vm2["waiters"][0]["job"] == "MODIFY"

            emit(hub, "vm-1", TraceKind.JOB_BEGIN, 3, "QUERY", in_section=True, waited=False)
            emit(hub, "vm-1", TraceKind.JOB_END, 3, "QUERY", outcome="ok")
            events = await receive_events(ws, 2)
            assert events == [e.to_json() for e in seen.events[-2:]]
        assert feed.statistics().accepted == 1


async def test_subscription_filters_domains_and_kinds() -> None:
    hub = TraceHub()
    seen = Recorder(hub)
    with Feed(hub) as feed:
        emit(hub, "a", TraceKind.JOB_BEGIN, 1, "QUERY")
        emit(hub, "b", TraceKind.JOB_BEGIN, 2, "QUERY")
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            assert len((await receive_type(ws, "snapshot"))["domains"]) == 2
            await ws.send_message(
                json.dumps({"type": "subscribe", "domains": ["a"], "kinds": ["job.end"]})
            )
            snapshot = await receive_type(ws, "snapshot")
            assert snapshot["subscription"] == {"domains": ["a"], "kinds": ["job.end"]}
            assert [d["name"] for d in snapshot["domains"]] == ["a"]

            emit(hub, "b", TraceKind.JOB_END, 2, "QUERY", outcome="ok")
            emit(hub, "a", TraceKind.MONITOR_ENTER, 1, "QUERY")
            emit(hub, "a", TraceKind.JOB_END, 1, "QUERY", outcome="ok")
            assert await receive_events(ws, 1) == [seen.events[-1].to_json()]

            # Back to everything; the new snapshot shows both domains again.
            await ws.send_message(json.dumps({"v": 1, "type": "subscribe"}))
            snapshot = await receive_type(ws, "snapshot")
            assert [d["name"] for d in snapshot["domains"]] == ["a", "b"]
            emit(hub, "b", TraceKind.GATE_OPEN)
            assert (await receive_events(ws, 1))[0]["domain"] == "b"


BAD_MESSAGES: list[tuple[str | bytes, str]] = [
    ("not json", "bad_json"),
    ("[" * 50_000, "bad_json"),
    ("[1, 2]", "bad_message"),
    ('{"type": "nope"}', "unknown_type"),
    ("{}", "unknown_type"),
    ('{"v": 2, "type": "resync"}', "bad_message"),
    ('{"v": true, "type": "resync"}', "bad_message"),
    ('{"type": "subscribe", "domains": "vm-1"}', "bad_message"),
    ('{"type": "subscribe", "domains": [1]}', "bad_message"),
    ('{"type": "subscribe", "domains": [""]}', "bad_message"),
    ('{"type": "subscribe", "kinds": ["job.nope"]}', "unknown_kind"),
    (b"\x00\x01", "binary"),
]


async def test_malformed_messages_get_an_error_and_the_connection_lives() -> None:
    hub = TraceHub()
    with Feed(hub) as feed:
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            for data, code in BAD_MESSAGES:
                await ws.send_message(data)
                error = await receive_type(ws, "error")
                assert error["code"] == code, data
                assert error["message"]
            # Still subscribed to everything, still served.
            await ws.send_message('{"type": "resync"}')
            await receive_type(ws, "snapshot")
            emit(hub, "vm", TraceKind.GATE_OPEN)
            await receive_events(ws, 1)
        assert feed.statistics().protocol_errors == len(BAD_MESSAGES)


async def test_an_oversized_message_closes_the_connection() -> None:
    with Feed(TraceHub()) as feed:
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            await ws.send_message("x" * (64 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1009
        await trio.testing.wait_all_tasks_blocked()
        assert feed.statistics().clients == 0


async def test_a_slow_client_loses_events_and_is_told() -> None:
    hub = TraceHub()
    seen = Recorder(hub)
    with Feed(hub, buffer=4) as feed:
        async with connected(feed, lockstep=True) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            # The client reads nothing while 500 events go by. Emitting is
            # synchronous: job control cannot have waited for anyone.
            for i in range(500):
                emit(hub, "vm", TraceKind.JOB_BEGIN, i, "QUERY")
            stats = feed.statistics()
            assert stats.dropped > 400
            await trio.testing.wait_all_tasks_blocked()

            delivered: list[int] = []
            message = await receive(ws)
            while message["type"] == "events":
                delivered += [event["seq"] for event in message["events"]]
                message = await receive(ws)
            assert message["type"] == "dropped"
            assert message["count"] == message["total"] == stats.dropped
            assert len(delivered) + message["count"] == 500
            assert delivered == [e.seq for e in seen.events[: len(delivered)]]
            snapshot = await receive_type(ws, "snapshot")
            assert snapshot["seq"] == seen.events[-1].seq
            (state,) = snapshot["domains"]
            assert len(state["regular_jobs"]) == 500

            # The stream goes on after the gap.
            emit(hub, "vm", TraceKind.JOB_END, 0, "QUERY", outcome="ok")
            assert (await receive_events(ws, 1))[0]["seq"] == seen.events[-1].seq


async def test_events_that_waited_go_out_together_in_order() -> None:
    hub = TraceHub()
    seen = Recorder(hub)
    with Feed(hub, buffer=1000) as feed:
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            for i in range(600):
                emit(hub, "vm", TraceKind.JOB_BEGIN, i, "QUERY")
            sizes: list[int] = []
            while sum(sizes) < 600:
                sizes.append(len((await receive_type(ws, "events"))["events"]))
            assert sizes == [256, 256, 88]
            emit(hub, "vm", TraceKind.GATE_OPEN)
            assert await receive_events(ws, 1) == [seen.events[-1].to_json()]


async def test_a_client_that_stops_reading_is_dropped() -> None:
    hub = TraceHub()
    with Feed(hub, buffer=4, ping_interval=5, ping_timeout=5) as feed:
        async with connected(feed, lockstep=True) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            # One message fills the client's one-message queue, the next one
            # stalls its reader: it stops reading, so it answers no ping.
            emit(hub, "vm", TraceKind.GATE_OPEN)
            await trio.testing.wait_all_tasks_blocked()
            emit(hub, "vm", TraceKind.GATE_CLOSE)
            await trio.sleep(9.9)
            assert feed.statistics().clients == 1
            await trio.sleep(0.2)
            assert feed.statistics().clients == 0
            assert feed.statistics().unresponsive == 1
            # Its connection is cut; the feed goes on without it.
            emit(hub, "vm", TraceKind.GATE_OPEN)
            assert feed.statistics().events == 3


async def test_a_quiet_client_that_reads_is_kept() -> None:
    hub = TraceHub()
    with Feed(hub, ping_interval=1, ping_timeout=1) as feed:
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            # Nothing to read for a long while; pings come and are answered.
            with trio.move_on_after(100):
                await ws.get_message()
            assert feed.statistics().clients == 1
            assert feed.statistics().unresponsive == 0
            emit(hub, "vm", TraceKind.GATE_OPEN)
            await receive_events(ws, 1)


async def test_the_feed_reads_what_clients_send() -> None:
    """If the feed did not read, trio-websocket's one-message queue would
    stall its reader and the client's ping would never be answered."""
    with Feed(TraceHub()) as feed:
        async with connected(feed, message_queue_size=100) as ws:
            for _ in range(20):
                await ws.send_message('{"type": "resync"}')
            with trio.fail_after(1):
                await ws.ping()


async def test_the_token_is_required_when_set() -> None:
    with Feed(TraceHub(), token="s3cret") as feed:
        for path in ("/feed", "/feed?token=", "/feed?token=s3cre", "/feed?x=s3cret"):
            assert (await refusal(feed, path=path)).status_code == 403
        # With the token, even a foreign origin may read.
        headers = [(b"Origin", b"http://elsewhere.example")]
        async with connected(feed, path="/feed?token=s3cret", headers=headers) as ws:
            await receive_type(ws, "hello")
        assert feed.statistics().refused == 4


async def test_browsers_need_an_allowed_origin_without_a_token() -> None:
    page = "http://127.0.0.1:8766"
    with Feed(TraceHub(), allowed_origins={page}) as feed:
        evil = [(b"Origin", b"http://evil.example")]
        assert (await refusal(feed, headers=evil)).status_code == 403
        for headers in ([(b"Origin", page.encode())], None):
            async with connected(feed, headers=headers) as ws:
                await receive_type(ws, "hello")


async def test_unknown_paths_full_and_closed_feeds_are_refused() -> None:
    feed = Feed(TraceHub(), max_clients=1)
    assert (await refusal(feed)).status_code == 503  # not open yet
    with feed:
        assert (await refusal(feed, path="/other")).status_code == 404
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            refused = await refusal(feed)
            assert refused.status_code == 503
            assert refused.body is not None
            assert b"too many clients" in refused.body


async def test_a_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    server, client = trio.testing.memory_stream_pair()
    with Feed(TraceHub(), handshake_timeout=3) as feed:
        start = trio.current_time()
        await feed.handle_stream(server)
        assert trio.current_time() - start == 3
        assert await client.receive_some() == b""  # closed


async def test_shutdown_tells_clients_the_feed_is_going_away() -> None:
    with Feed(TraceHub()) as feed:
        server, client = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            serving = trio.CancelScope()

            async def serve() -> None:
                with serving:
                    await feed.handle_stream(server)

            nursery.start_soon(serve)
            ws = await wrap_client_stream(nursery, client, "localhost", "/feed")  # type: ignore[arg-type]
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            serving.cancel()
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1001
        assert feed.statistics().clients == 0


async def test_a_bad_event_cannot_break_job_control(caplog: pytest.LogCaptureFixture) -> None:
    hub = TraceHub()
    with Feed(hub) as feed:
        emit(hub, "vm", TraceKind.BARRIER_START, 1, "MIGRATION_OUT", pending=5)  # not a list
        assert feed.statistics().listener_errors == 1
        assert "trace listener failed" in caplog.text
        emit(hub, "vm", TraceKind.BARRIER_START, 1, "MIGRATION_OUT", pending=6)
        assert feed.statistics().listener_errors == 2
        assert caplog.text.count("trace listener failed") == 1  # logged once
        emit(hub, "vm", TraceKind.GATE_OPEN)
        assert feed.statistics().events == 3


async def test_a_failure_of_the_feed_ends_one_connection_only(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_snapshot(*args: object) -> NoReturn:
        raise RuntimeError("a bug in the feed")

    hub = TraceHub()
    with Feed(hub) as feed:
        monkeypatch.setattr(FeedState, "snapshot", broken_snapshot)
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1011
        assert feed.statistics().connection_errors == 1
        assert "serving a client failed" in caplog.text
        monkeypatch.undo()
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")


async def test_closing_the_feed_unsubscribes_from_the_hub() -> None:
    hub = TraceHub()
    with Feed(hub) as feed:
        assert hub.active
        with pytest.raises(RuntimeError, match="already open"):
            feed.__enter__()
    assert not hub.active


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("buffer", 0),
        ("buffer", True),
        ("token", ""),
        ("max_clients", 0),
        ("ping_interval", 0),
        ("ping_timeout", -1.0),
        ("handshake_timeout", float("nan")),
        ("max_domains", 0),
    ],
)
def test_bad_options_are_named(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        Feed(TraceHub(), **{option: value})  # type: ignore[arg-type]


# -- property: what a client sees always adds up --------------------------------

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 30), st.sampled_from(["a", "b"])),
        st.tuples(st.just("read"), st.integers(1, 30), st.just("")),
        st.tuples(st.just("subscribe"), st.integers(0, 2), st.just("")),
    ),
    max_size=25,
)


@given(steps=_steps, buffer=st.integers(1, 6))
def test_every_event_is_delivered_once_or_covered_by_a_snapshot(
    steps: list[tuple[str, int, str]], buffer: int
) -> None:
    async def main() -> None:
        hub = TraceHub()
        seen = Recorder(hub)
        messages: list[dict[str, object]] = []
        subscriptions = [None, ["a"], ["b"]]
        with Feed(hub, buffer=buffer) as feed:
            async with connected(feed, lockstep=True) as ws:
                for step, n, domain in steps:
                    if step == "emit":
                        for _ in range(n):
                            emit(hub, domain, TraceKind.GATE_OPEN)
                    elif step == "subscribe":
                        domains = subscriptions[n]
                        await ws.send_message(json.dumps({"type": "subscribe", "domains": domains}))
                    else:
                        with trio.move_on_after(1):
                            for _ in range(n):
                                messages.append(await receive(ws))
                # Drain.
                await ws.send_message('{"type": "resync"}')
                while True:
                    with trio.move_on_after(1) as idle:
                        messages.append(await receive(ws))
                    if idle.cancelled_caught:
                        break
            dropped = feed.statistics().dropped
        assert messages[0]["type"] == "hello"
        covered = 0
        delivered: set[int] = set()
        reported = 0
        after_drop = False
        for message in messages[1:]:
            if after_drop:
                assert message["type"] == "snapshot"
                after_drop = False
            if message["type"] == "snapshot":
                covered = int(message["seq"])  # type: ignore[call-overload]
            elif message["type"] == "events":
                for sent in message["events"]:  # type: ignore[attr-defined]
                    seq = sent["seq"]
                    assert seq > covered, "an event already folded into a snapshot was sent"
                    assert seq not in delivered
                    delivered.add(seq)
            elif message["type"] == "dropped":
                reported += message["count"]  # type: ignore[operator]
                assert message["total"] == reported
                after_drop = True
        assert reported == dropped
        event("some events dropped" if dropped else "nothing dropped")
        # The final resync covers everything: nothing was silently lost.
        assert covered == (seen.events[-1].seq if seen.events else covered)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_new_client_gets_the_recent_past_then_live_events_without_gap_or_duplicate() -> (
    None
):
    hub = TraceHub()
    seen = Recorder(hub)
    with Feed(hub, history=5, history_age=60) as feed:
        emit(hub, "old", TraceKind.GATE_OPEN)
        await trio.sleep(61)  # older than history_age: not sent
        for _ in range(8):  # only the last 5 are kept
            emit(hub, "vm", TraceKind.GATE_OPEN)
        async with connected(feed) as ws:
            emit(hub, "vm", TraceKind.GATE_CLOSE)  # while the client is being set up
            await receive_type(ws, "hello")
            past = await receive(ws, history=True)
            assert (past["type"], past["history"]) == ("events", True)
            snapshot = await receive_type(ws, "snapshot")
            assert isinstance(snapshot["wall"], float)
            emit(hub, "vm", TraceKind.GATE_OPEN)
            emit(hub, "vm", TraceKind.GATE_CLOSE)
            live = await receive_events(ws, 2)
            past_seqs = [e["seq"] for e in past["events"]]
            # The past ends where the snapshot does; live events go on from there.
            assert past_seqs[-1] == snapshot["seq"]
            seqs = past_seqs + [e["seq"] for e in live]
            assert seqs == [e.seq for e in seen.events[-len(seqs) :]]
            assert len(past_seqs) == 5


async def test_the_recent_past_is_bounded_by_age_too() -> None:
    hub = TraceHub()
    with Feed(hub, history=100, history_age=60) as feed:
        emit(hub, "old", TraceKind.GATE_OPEN)
        await trio.sleep(61)
        for _ in range(3):
            emit(hub, "vm", TraceKind.GATE_OPEN)
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            past = await receive(ws, history=True)
            assert [e["domain"] for e in past["events"]] == ["vm"] * 3
            assert (await receive_type(ws, "snapshot"))["seq"] == past["events"][-1]["seq"]


async def test_each_event_has_its_wall_clock_time() -> None:
    hub = TraceHub()
    with Feed(hub) as feed:
        async with connected(feed) as ws:
            hello = await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            await trio.sleep(5)
            emit(hub, "vm", TraceKind.GATE_OPEN)
            raw = json.loads(await ws.get_message())
            (event,) = raw["events"]
            # Wall-clock (UTC, seconds since the epoch), not the loop's
            # (virtual) clock: it is now, give or take, whatever ``t`` says.
            assert hello["wall"] <= event["wall"] <= time.time()
            assert abs(event["wall"] - event["t"]) > 1e6


def test_history_options_are_checked() -> None:
    with pytest.raises(ValueError, match="history must be"):
        Feed(TraceHub(), history=-1)
    with pytest.raises(ValueError, match="history_age"):
        Feed(TraceHub(), history_age=0)


async def test_describe_is_sent_as_a_status_message_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = TraceHub()

    def describe(name: str) -> dict[str, str] | None:
        if name == "broken":
            raise RuntimeError("a bug in describe")
        return {"host": "host-a", "run_state": "running"} if name == "vm" else None

    with Feed(hub, describe=describe, status_interval=2) as feed:
        for name in ("vm", "unknown", "broken"):
            emit(hub, name, TraceKind.GATE_OPEN)
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            start = trio.current_time()
            status = await receive_type(ws, "status")
            assert trio.current_time() - start == 2
            assert status["domains"] == {"vm": {"host": "host-a", "run_state": "running"}}
            assert isinstance(status["wall"], float)
            await receive_type(ws, "status")  # and again: the connection lives on
        assert feed.statistics().listener_errors == 2
        assert caplog.text.count("describe('broken') failed") == 1
