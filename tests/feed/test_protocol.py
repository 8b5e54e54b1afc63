"""The feed's messages as a client meets them: what it may send, what it is
answered, and that what it receives is strict JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobctl import TRACE_SCHEMA_VERSION, TraceEvent, TraceHub, TraceKind
from jobctl.feed import Feed, Subscription

from ._support import connected, emit, receive, receive_type

pytestmark = pytest.mark.anyio


async def answers(*messages: str) -> list[dict[str, Any]]:
    """What a fresh client of a feed is answered to each of ``messages``."""
    answered = []
    with Feed(TraceHub()) as feed:
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            for message in messages:
                await ws.send_message(message)
                answered.append(await receive(ws))
    return answered


async def test_subscribe_and_resync_are_understood() -> None:
    resync, everything, some = await answers(
        '{"type": "resync"}',
        '{"type": "subscribe"}',
        '{"v": 1, "type": "subscribe", "domains": ["b", "a"], "kinds": ["job.begin", "gate.open"]}',
    )
    assert resync["type"] == everything["type"] == some["type"] == "snapshot"
    assert resync["subscription"] == everything["subscription"] == {"domains": None, "kinds": None}
    assert some["subscription"] == {"domains": ["a", "b"], "kinds": ["gate.open", "job.begin"]}


async def test_unknown_kinds_are_named() -> None:
    (error,) = await answers('{"type": "subscribe", "kinds": ["job.nope"]}')
    assert (error["type"], error["code"]) == ("error", "unknown_kind")
    assert "'job.nope'" in error["message"]


async def test_filters_are_bounded() -> None:
    def subscribe(domains: list[str]) -> str:
        return json.dumps({"type": "subscribe", "domains": domains})

    most, too_many, longest, too_long = await answers(
        subscribe([f"d{i}" for i in range(1024)]),
        subscribe([f"d{i}" for i in range(1025)]),
        subscribe(["x" * 256]),
        subscribe(["x" * 257]),
    )
    assert most["type"] == longest["type"] == "snapshot"
    assert (too_many["code"], too_long["code"]) == ("bad_message", "bad_message")
    assert "more than 1024" in too_many["message"]
    assert "1 to 256" in too_long["message"]


def test_subscription_matching() -> None:
    event = TraceEvent(1, 0.0, "a", TraceKind.GATE_OPEN)
    assert Subscription().matches(event)
    assert Subscription(domains=frozenset({"a"})).matches(event)
    assert not Subscription(domains=frozenset({"b"})).matches(event)
    assert not Subscription(kinds=frozenset({TraceKind.GATE_CLOSE})).matches(event)


def strict_json(text: str | bytes) -> dict[str, Any]:
    assert isinstance(text, str), "the feed sends text messages"
    message = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert isinstance(message, dict)
    return message


async def test_what_a_client_receives_is_strict_json_whatever_the_detail_holds() -> None:
    hub = TraceHub()
    progress = {"rate": float("inf"), "parts": (1, float("nan")), "obj": object}
    with Feed(hub) as feed:
        async with connected(feed) as ws:
            await receive_type(ws, "hello")
            await receive_type(ws, "snapshot")
            emit(hub, "vm", TraceKind.ASYNC_BEGIN, 1, "SAVE", allowed=["QUERY"], waited=False)
            emit(hub, "vm", TraceKind.ASYNC_PROGRESS, 1, "SAVE", progress=progress)
            message = strict_json(await ws.get_message())
            while len(message["events"]) < 2:  # the events may come in two messages
                message["events"] += strict_json(await ws.get_message())["events"]
            await ws.send_message('{"type": "resync"}')
            snapshot = strict_json(await ws.get_message())
    assert message["type"] == "events"
    sent = message["events"][-1]
    assert sent["v"] == TRACE_SCHEMA_VERSION
    assert sent["kind"] == "async.progress"
    expected = {"rate": "inf", "parts": [1, "nan"], "obj": str(object)}
    assert sent["detail"]["progress"] == expected
    assert snapshot["type"] == "snapshot"
    (vm,) = snapshot["domains"]
    assert vm["async_job"]["progress"] == expected
