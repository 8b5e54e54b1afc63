"""The per-client outbox: bounded, never blocks the producer, reports gaps in place."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from jobctl.feed._outbox import Outbox, Resync

pytestmark = pytest.mark.anyio


@given(
    capacity=st.integers(1, 5),
    ops=st.lists(st.sampled_from(["put", "get", "resync"]), max_size=60),
)
def test_order_is_kept_and_every_loss_is_reported_where_it_happened(
    capacity: int, ops: list[str]
) -> None:
    box: Outbox[int] = Outbox(capacity)
    taken: list[int | Resync] = []
    # What the consumer must see: items in order, each run of drops as one
    # count right where it happened.
    sent = 0
    for op in ops:
        if op == "put":
            box.put_nowait(sent)
            sent += 1
        elif op == "resync":
            box.resync_nowait()
        else:
            with contextlib.suppress(trio.WouldBlock):
                taken.append(box.get_nowait())
        stats = box.statistics()
        assert stats.buffered <= capacity
    while True:
        try:
            taken.append(box.get_nowait())
        except trio.WouldBlock:
            break
    expected = 0
    for entry in taken:
        if isinstance(entry, Resync):
            expected += entry.dropped
        else:
            assert entry == expected
            expected += 1
    assert expected == sent
    assert sum(e.dropped for e in taken if isinstance(e, Resync)) == box.statistics().dropped


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
