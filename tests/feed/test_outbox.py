"""The per-client outbox: bounded, never blocks the producer, reports gaps in place.

Through a client of the feed: it meets its events in order, with no gap but
where a ``dropped`` message (then a snapshot) says how many were lost. What
no client can see is tested on the outbox itself (see
``tests/test_public_names.py``): a ``get`` that had an item at hand still
yields to the scheduler, and a cancelled one takes nothing.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st

from jobctl import TraceHub, TraceKind
from jobctl.feed import Feed
from jobctl.feed._outbox import Outbox, Resync

from ._support import Recorder, connected, emit, receive, receive_type

_steps = st.lists(
    st.tuples(st.sampled_from(["emit", "read", "resync"]), st.integers(1, 8)), max_size=20
)


@given(buffer=st.integers(1, 5), steps=_steps)
def test_order_is_kept_and_every_loss_is_reported_where_it_happened(
    buffer: int, steps: list[tuple[str, int]]
) -> None:
    async def main() -> None:
        hub = TraceHub()
        seen = Recorder(hub)
        messages: list[dict[str, object]] = []
        with Feed(hub, buffer=buffer) as feed:
            # Lockstep: a client that stops reading stalls the feed's writes.
            async with connected(feed, lockstep=True) as ws:
                await receive_type(ws, "hello")
                for step, n in steps:
                    if step == "emit":
                        for _ in range(n):
                            emit(hub, "vm", TraceKind.GATE_OPEN)
                    elif step == "resync":
                        await ws.send_message('{"type": "resync"}')
                    else:
                        with trio.move_on_after(1):
                            for _ in range(n):
                                messages.append(await receive(ws))
                await ws.send_message('{"type": "resync"}')
                while True:
                    with trio.move_on_after(1) as idle:
                        messages.append(await receive(ws))
                    if idle.cancelled_caught:
                        break
            dropped = feed.statistics().dropped
        emitted = [event.seq for event in seen.events]
        assert messages and messages[0]["type"] == "snapshot"
        # Positions in ``emitted``: of the last event delivered, and of the
        # last event delivered or covered by a snapshot.
        delivered = covered = -1
        lost = reported = 0
        for message in messages:
            kind = message["type"]
            if kind == "events":
                assert not lost, "events between a loss and its snapshot"
                for sent in message["events"]:  # type: ignore[attr-defined]
                    covered += 1
                    assert sent["seq"] == emitted[covered], "out of order, or a silent gap"
                    delivered = covered
            elif kind == "dropped":
                assert not lost, "two losses in a row"
                lost = int(message["count"])  # type: ignore[call-overload]
                reported += lost
                assert lost >= 1 and message["total"] == reported
            else:
                assert kind == "snapshot", message
                seq = message["seq"]
                upto = emitted.index(seq) if seq in emitted else -1
                # The events lost came after the last one delivered, and
                # before this snapshot.
                assert lost <= upto - delivered
                covered = max(covered, upto)
                lost = 0
        assert reported == dropped
        event("some events dropped" if dropped else "nothing dropped")
        assert covered == len(emitted) - 1  # the final resync covers everything

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.anyio
async def test_get_waits_for_an_item_and_is_a_checkpoint() -> None:
    box: Outbox[str] = Outbox(1)
    async with trio.open_nursery() as nursery:
        got: list[str | Resync] = []

        async def consumer() -> None:
            got.append(await box.get())

        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert box.put_nowait("a")
        assert not box.put_nowait("b")
    assert got == ["a"]
    assert await box.get() == Resync(1)
    with trio.testing.assert_checkpoints():
        box.put_nowait("c")
        await box.get()
    with trio.CancelScope() as scope:
        scope.cancel()
        box.put_nowait("d")
        with pytest.raises(trio.Cancelled):
            await box.get()
    assert box.get_nowait() == "d"  # a cancelled get takes nothing


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5])
def test_capacity_must_be_a_positive_int(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(capacity)  # type: ignore[arg-type]
