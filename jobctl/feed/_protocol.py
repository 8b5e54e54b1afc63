"""The feed's wire protocol: JSON text messages over one websocket.

Every message is a JSON object with ``"v"`` (:data:`FEED_SCHEMA_VERSION`) and
``"type"``. Times (``t``, ``since``) are the job layer's event-loop clock in
seconds, the same clock as the trace events' ``t``; compare them with each
other, not with wall time. ``jobctl/feed/SCHEMA.md`` has the full reference.

Server to client:

``hello``
    First message on every connection: ``t`` (server time now),
    ``trace_schema`` (the version of the embedded trace events), ``kinds``
    (every trace event kind), ``buffer`` (this client's buffer, in events).
``snapshot``
    The current state, sent after ``hello``, after every ``subscribe`` or
    ``resync`` request and after every ``dropped``: ``seq`` (the last trace
    event folded in; every event sent after it has a greater ``seq``), ``t``,
    ``subscription`` (``domains``, ``kinds``: lists, or null for all) and
    ``domains`` (a list of per-domain states, filtered by the subscription).
``events``
    Trace events, in order: ``events`` is a list (one or more) of exactly
    ``TraceEvent.to_json()`` (each with its own ``"v"``, the trace schema
    version). Events that happened together arrive together.
``dropped``
    This client's buffer overflowed: ``count`` events were lost here,
    ``total`` since it connected. A fresh ``snapshot`` follows at once.
``error``
    A client message was not understood: ``code`` (``bad_json``,
    ``bad_message``, ``unknown_type``, ``unknown_kind``, ``binary``) and
    ``message``. The connection stays open.

Client to server:

``subscribe``
    ``domains``: list of domain names, or null/absent for all; ``kinds``: list
    of trace event kinds, or null/absent for all. Replaces the previous
    subscription; a ``snapshot`` answers it.
``resync``
    Ask for a fresh ``snapshot``.

A client message may carry ``"v"``; if it does, it must be
:data:`FEED_SCHEMA_VERSION`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, final

import attrs

from jobctl import TRACE_SCHEMA_VERSION, TraceEvent, TraceKind

__all__ = [
    "FEED_SCHEMA_VERSION",
    "FeedProtocolError",
    "ResyncRequest",
    "Subscription",
    "dropped_message",
    "encode",
    "error_message",
    "events_message",
    "hello_message",
    "parse_client_message",
]

#: Version of the feed's message shapes; bumped on incompatible change.
FEED_SCHEMA_VERSION: Final = 1

#: Limits on a ``subscribe`` message's lists and names.
MAX_FILTER_ITEMS: Final = 1024
MAX_NAME_LENGTH: Final = 256

_ALL_KINDS: Final = tuple(kind.value for kind in TraceKind)


class FeedProtocolError(ValueError):
    """A client message was not understood; ``code`` names the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@final
@attrs.frozen
class Subscription:
    """Which events a client wants: ``None`` means every domain (kind)."""

    domains: frozenset[str] | None = None
    kinds: frozenset[TraceKind] | None = None

    def matches(self, event: TraceEvent) -> bool:
        """Whether ``event`` passes this subscription."""
        return (self.domains is None or event.domain in self.domains) and (
            self.kinds is None or event.kind in self.kinds
        )

    def wants_domain(self, domain: str) -> bool:
        """Whether ``domain``'s state belongs in this client's snapshots."""
        return self.domains is None or domain in self.domains

    def to_json(self) -> dict[str, Any]:
        """The subscription as a snapshot shows it: ``domains`` and ``kinds``
        sorted (the same subscription always gives the same JSON), None for
        "every"; a ``subscribe`` message with these fields asks for it again.
        """
        return {
            "domains": None if self.domains is None else sorted(self.domains),
            "kinds": None if self.kinds is None else sorted(k.value for k in self.kinds),
        }


@final
@attrs.frozen
class ResyncRequest:
    """The client asked for a fresh snapshot."""


def _names(message: Mapping[str, Any], key: str) -> list[str] | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise FeedProtocolError("bad_message", f"{key!r} must be a list of strings or null")
    if len(value) > MAX_FILTER_ITEMS:
        raise FeedProtocolError("bad_message", f"{key!r} has more than {MAX_FILTER_ITEMS} items")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_NAME_LENGTH:
            raise FeedProtocolError(
                "bad_message",
                f"{key!r} items must be strings of 1 to {MAX_NAME_LENGTH} characters, "
                f"not {item!r:.80}",
            )
    return value


def _kinds(names: Iterable[str]) -> frozenset[TraceKind]:
    kinds: set[TraceKind] = set()
    for name in names:
        try:
            kinds.add(TraceKind(name))
        except ValueError:
            raise FeedProtocolError(
                "unknown_kind", f"unknown trace event kind {name!r}; known: {', '.join(_ALL_KINDS)}"
            ) from None
    return frozenset(kinds)


def parse_client_message(data: str | bytes) -> Subscription | ResyncRequest:
    """Decode one client message, or raise :class:`FeedProtocolError`."""
    if isinstance(data, bytes):
        raise FeedProtocolError("binary", "binary messages are not understood; send JSON text")
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FeedProtocolError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FeedProtocolError("bad_message", "a message must be a JSON object")
    version = message.get("v", FEED_SCHEMA_VERSION)
    if version != FEED_SCHEMA_VERSION or isinstance(version, bool):
        raise FeedProtocolError(
            "bad_message",
            f"unsupported schema version {version!r:.40}; this is {FEED_SCHEMA_VERSION}",
        )
    kind = message.get("type")
    if kind == "subscribe":
        domains = _names(message, "domains")
        kinds = _names(message, "kinds")
        return Subscription(
            None if domains is None else frozenset(domains),
            None if kinds is None else _kinds(kinds),
        )
    if kind == "resync":
        return ResyncRequest()
    raise FeedProtocolError(
        "unknown_type", f"unknown message type {kind!r:.80}; known: subscribe, resync"
    )


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats spelled as strings (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def encode(message: Mapping[str, Any]) -> str:
    """``message`` as strict JSON text; values JSON cannot hold become strings."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(message), separators=(",", ":"), allow_nan=False, default=str)


def hello_message(now: float, buffer: int, *, wall: float | None = None) -> dict[str, Any]:
    return {
        "v": FEED_SCHEMA_VERSION,
        "type": "hello",
        "t": now,
        "wall": time.time() if wall is None else wall,
        "trace_schema": TRACE_SCHEMA_VERSION,
        "kinds": list(_ALL_KINDS),
        "buffer": buffer,
    }


def events_message(events: list[dict[str, Any]], *, history: bool = False) -> dict[str, Any]:
    """An ``events`` message carrying ``TraceEvent.to_json()`` dicts, in order
    (``history``: the recent past, sent on connecting before the snapshot)."""
    message: dict[str, Any] = {"v": FEED_SCHEMA_VERSION, "type": "events", "events": events}
    if history:
        message["history"] = True
    return message


def dropped_message(count: int, total: int) -> dict[str, Any]:
    return {"v": FEED_SCHEMA_VERSION, "type": "dropped", "count": count, "total": total}


def error_message(error: FeedProtocolError) -> dict[str, Any]:
    return {"v": FEED_SCHEMA_VERSION, "type": "error", "code": error.code, "message": str(error)}
