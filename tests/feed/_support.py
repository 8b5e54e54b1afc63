"""Helpers for the feed's tests: clients over in-memory streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

from jobctl import TraceEvent, TraceHub, TraceKind
from jobctl.feed import Feed


class Recorder:
    """Subscribes to a hub and keeps every event, to compare with what clients get."""

    def __init__(self, hub: TraceHub) -> None:
        self.events: list[TraceEvent] = []
        hub.subscribe(self.events.append)


def emit(
    hub: TraceHub,
    domain: str,
    kind: TraceKind,
    job_id: int | None = None,
    job: str | None = None,
    **detail: Any,
) -> None:
    hub.emit(domain, kind, job_id, job, "test" if job else None, detail)


@asynccontextmanager
async def connected(
    feed: Feed,
    *,
    path: str = "/feed",
    headers: list[tuple[bytes, bytes]] | None = None,
    lockstep: bool = False,
    message_queue_size: int = 1,
) -> AsyncIterator[WebSocketConnection]:
    """A websocket client of ``feed`` over an in-memory stream pair.

    ``lockstep``: a stream with no buffer, so the server's writes wait for
    the client to read (a client that stops reading stalls them).
    """
    server, client = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.handle_stream, server)
        ws = await wrap_client_stream(
            nursery,
            client,  # type: ignore[arg-type]
            "localhost",
            path,
            extra_headers=headers,
            message_queue_size=message_queue_size,
        )
        yield ws
        nursery.cancel_scope.cancel()


async def refused(
    client: trio.abc.Stream,
    *,
    path: str = "/feed",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> ConnectionRejected:
    """Open a websocket over ``client``, expect the handshake to be refused,
    close ``client``; return the refusal. (trio-websocket's own
    ``open_websocket`` leaves the socket of a refused connection open.)"""
    async with client:
        with pytest.RaisesGroup(ConnectionRejected) as info:
            async with trio.open_nursery() as nursery:
                await wrap_client_stream(
                    nursery,
                    client,  # type: ignore[arg-type]
                    "localhost",
                    path,
                    extra_headers=headers,
                )
    rejected = info.value.exceptions[0]
    assert isinstance(rejected, ConnectionRejected)
    return rejected


async def refusal(
    feed: Feed, *, path: str = "/feed", headers: list[tuple[bytes, bytes]] | None = None
) -> ConnectionRejected:
    """Connect to ``feed`` in memory and expect the handshake to be refused."""
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.handle_stream, server)
        return await refused(client, path=path, headers=headers)


async def receive(ws: WebSocketConnection, *, history: bool = False) -> dict[str, Any]:
    """The next message; the recent past sent on connecting (``events`` with
    ``history``) is skipped unless ``history``. Each event's ``wall`` (its
    wall-clock time) is checked, then taken out, so that events compare equal
    to ``TraceEvent.to_json()``."""
    while True:
        message = json.loads(await ws.get_message())
        assert isinstance(message, dict)
        assert message["v"] == 1
        if message["type"] == "events":
            for event in message["events"]:
                assert isinstance(event.pop("wall"), float)
            if message.get("history") and not history:
                continue
        return message


async def receive_type(ws: WebSocketConnection, kind: str) -> dict[str, Any]:
    message = await receive(ws)
    assert message["type"] == kind, message
    return message


async def receive_events(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` trace events, over one or more ``events`` messages."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        events += (await receive_type(ws, "events"))["events"]
    assert len(events) == count, "more events than expected"
    return events
