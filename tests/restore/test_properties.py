"""Property: whatever the layout, latencies and limits, the target ends up equal
to the image, zero chunks are never fetched, and the limits hold."""

from __future__ import annotations

import random

import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from jobctl.restore import MemoryTarget, SimulatedChunkStore, restore_image


class Watched:
    """Checks, at each fetch, that fetches in flight and chunks held (fetched
    but not yet written) stay within the limits."""

    def __init__(self, store: SimulatedChunkStore, target: MemoryTarget, limit: int, held: int):
        self.store = store
        self.chunk_map = store.chunk_map
        self.target = target
        self.limit = limit
        self.held = held
        self.started = 0

    async def fetch(self, index: int) -> bytes:
        self.started += 1
        assert self.store.statistics().in_flight < self.limit
        assert self.started - self.target.statistics().writes <= self.held
        return await self.store.fetch(index)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[bytes, int, set[int]]:
    chunk_size = draw(st.integers(1, 48))
    count = draw(st.integers(0, 30))
    tail = draw(st.integers(0, chunk_size - 1)) if count else 0
    zero = draw(st.sets(st.integers(0, count - 1))) if count else set()
    rng = random.Random(draw(st.integers(0, 2**32)))
    image = bytearray(rng.randbytes(count * chunk_size - tail))
    for i in range(count):
        start = i * chunk_size
        end = min(start + chunk_size, len(image))
        image[start:end] = bytes(end - start) if i in zero else b"\1" + image[start + 1 : end]
    return bytes(image), chunk_size, zero


@given(
    layout=layouts(),
    latencies=st.lists(st.integers(0, 5), min_size=1, max_size=8),
    concurrency=st.integers(1, 8),
    max_buffered=st.integers(1, 10),
    skip_zeros=st.booleans(),
)
def test_any_restore_is_exact(
    layout: tuple[bytes, int, set[int]],
    latencies: list[int],
    concurrency: int,
    max_buffered: int,
    skip_zeros: bool,
) -> None:
    image, chunk_size, zero = layout
    store = SimulatedChunkStore(
        image, chunk_size, latency=lambda i: latencies[i % len(latencies)] / 1000
    )
    target = MemoryTarget(len(image), skip_zeros=skip_zeros)
    source = Watched(store, target, min(concurrency, max_buffered), max_buffered)

    async def main() -> None:
        report = await restore_image(
            source, target, concurrency=concurrency, max_buffered=max_buffered
        )
        count = store.chunk_map.count
        assert report.chunks == count
        assert report.bytes == len(image)
        assert report.fetched_chunks == count - len(zero)
        assert report.zero_chunks_written == (0 if skip_zeros else len(zero))

    trio.run(main, clock=MockClock(autojump_threshold=0))
    assert bytes(target.data) == image
    assert store.statistics().fetches == {i: 1 for i in store.chunk_map.data_chunks()}
    assert store.statistics().in_flight == 0
    writes = target.statistics()
    assert writes.writes == store.chunk_map.count - (len(zero) if skip_zeros else 0)
    assert writes.max_writers == min(1, writes.writes)
