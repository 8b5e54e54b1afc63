"""Client message parsing and message encoding."""

from __future__ import annotations

import json

import pytest

from jobctl import TRACE_SCHEMA_VERSION, TraceEvent, TraceKind
from jobctl.feed import FeedProtocolError, Subscription
from jobctl.feed._protocol import ResyncRequest, encode, events_message, parse_client_message


def test_subscribe_and_resync_parse() -> None:
    assert parse_client_message('{"type": "resync"}') == ResyncRequest()
    assert parse_client_message('{"type": "subscribe"}') == Subscription()
    assert parse_client_message(
        '{"v": 1, "type": "subscribe", "domains": ["a", "b"], "kinds": ["job.begin", "gate.open"]}'
    ) == Subscription(frozenset({"a", "b"}), frozenset({TraceKind.JOB_BEGIN, TraceKind.GATE_OPEN}))


def test_unknown_kinds_are_named() -> None:
    with pytest.raises(FeedProtocolError, match=r"'job\.nope'") as info:
        parse_client_message('{"type": "subscribe", "kinds": ["job.nope"]}')
    assert info.value.code == "unknown_kind"


def test_filters_are_bounded() -> None:
    many = json.dumps({"type": "subscribe", "domains": [f"d{i}" for i in range(1025)]})
    with pytest.raises(FeedProtocolError, match="more than 1024"):
        parse_client_message(many)
    long = json.dumps({"type": "subscribe", "domains": ["x" * 257]})
    with pytest.raises(FeedProtocolError, match="1 to 256"):
        parse_client_message(long)


def test_subscription_matching() -> None:
    event = TraceEvent(1, 0.0, "a", TraceKind.GATE_OPEN)
    assert Subscription().matches(event)
    assert Subscription(domains=frozenset({"a"})).matches(event)
    assert not Subscription(domains=frozenset({"b"})).matches(event)
    assert not Subscription(kinds=frozenset({TraceKind.GATE_CLOSE})).matches(event)


def test_encoding_is_strict_json_whatever_the_detail_holds() -> None:
    event = TraceEvent(
        7,
        1.5,
        "vm",
        TraceKind.ASYNC_PROGRESS,
        1,
        "SAVE",
        None,
        {"progress": {"rate": float("inf"), "parts": (1, float("nan")), "obj": object}},
    )
    text = encode(events_message([event.to_json()]))
    message = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert message["type"] == "events"
    (sent,) = message["events"]
    assert sent["v"] == TRACE_SCHEMA_VERSION
    assert sent["seq"] == 7
    progress = sent["detail"]["progress"]
    assert progress["rate"] == "inf"
    assert progress["parts"] == [1, "nan"]
    assert progress["obj"] == str(object)
