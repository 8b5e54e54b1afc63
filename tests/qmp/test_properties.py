"""Property: with any reply order and events interleaved anywhere, every caller
gets its own reply and every subscriber sees every event in order."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
import trio.testing
from anyio.streams.stapled import StapledObjectStream
from hypothesis import given
from hypothesis import strategies as st

from jobctl.qmp import open_qmp_stream

from ._fake import GREETING


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\r\n"


async def _scenario(order: list[int], events_before: list[int]) -> None:
    """``len(order)`` concurrent commands; the server answers them in ``order``,
    sending ``events_before[k]`` events before the k-th reply."""
    count = len(order)
    to_server, from_client = anyio.create_memory_object_stream[bytes](100)
    to_client, from_server = anyio.create_memory_object_stream[bytes](100)

    async def server() -> None:
        async with to_client, from_client:
            await to_client.send(_line(GREETING))
            buffered = b""
            requests: list[dict[str, Any]] = []
            while len(requests) < count + 1:
                buffered += await from_client.receive()
                *lines, buffered = buffered.split(b"\n")
                requests += [json.loads(line) for line in lines]
                if requests and requests[0]["execute"] == "qmp_capabilities":
                    await to_client.send(_line({"return": {}, "id": requests[0]["id"]}))
                    requests[0] = {"execute": "answered"}
            serial = 0
            for k, index in enumerate(order):
                for _ in range(events_before[k]):
                    stamp = {"seconds": 1, "microseconds": serial}
                    await to_client.send(
                        _line({"event": "E", "data": {"n": serial}, "timestamp": stamp})
                    )
                    serial += 1
                request = requests[1 + index]
                reply = {"return": request["arguments"]["n"], "id": request["id"]}
                await to_client.send(_line(reply))
            with pytest.raises(anyio.EndOfStream):
                await from_client.receive()  # the client sends nothing more and closes

    results: dict[int, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with open_qmp_stream(StapledObjectStream(to_server, from_server)) as qmp:
            with qmp.subscribe("E", max_buffer=1000) as events:

                async def call(n: int) -> None:
                    results[n] = await qmp.execute("echo", {"n": n})

                async with anyio.create_task_group() as callers:
                    for n in range(count):
                        callers.start_soon(call, n)
                received = [events.receive_nowait().data["n"] for _ in range(sum(events_before))]
            statistics = qmp.statistics()
    assert results == {n: n for n in range(count)}
    assert received == list(range(sum(events_before)))
    assert (statistics.replies, statistics.in_flight, statistics.events) == (
        count + 1,
        0,
        sum(events_before),
    )


@st.composite
def _plans(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    count = draw(st.integers(min_value=1, max_value=6))
    order = draw(st.permutations(range(count)))
    events = draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
    return list(order), events


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@given(plan=_plans())
def test_replies_find_their_callers_in_any_order(
    backend: str, plan: tuple[list[int], list[int]]
) -> None:
    options = {"clock": trio.testing.MockClock(autojump_threshold=0)} if backend == "trio" else {}
    anyio.run(_scenario, *plan, backend=backend, backend_options=options)
