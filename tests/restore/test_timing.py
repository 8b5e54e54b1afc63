"""Where a restore's time went: fetch latency, writer busy/idle, the bound.

These run on trio's virtual clock, where a fetch latency of L seconds is
exactly L. The writer's times are real seconds, measured in its thread.
"""

from __future__ import annotations

import pytest

from jobctl.restore import MemoryTarget, SimulatedChunkStore, restore_image
from jobctl.restore._report import limiting_stage  # private: see tests/test_public_names.py

from ._support import make_image

virtual = pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)

CHUNK = 32


@pytest.mark.anyio
@virtual
async def test_fetch_latency_percentiles() -> None:
    image = make_image(100, CHUNK, set())
    # chunk i takes (i + 1) / 100 s: latencies 0.01 .. 1.00
    source = SimulatedChunkStore(image, CHUNK, latency=lambda i: (i + 1) / 100)
    report = await restore_image(source, MemoryTarget(len(image)), concurrency=7)
    assert report.fetch_p50 == pytest.approx(0.50)
    assert report.fetch_p99 == pytest.approx(0.99)
    assert report.fetched_chunks == 100


@pytest.mark.anyio
@virtual
async def test_one_at_a_time_is_fetch_bound() -> None:
    image = make_image(10, CHUNK, {4})
    source = SimulatedChunkStore(image, CHUNK, latency=100.0)
    report = await restore_image(source, MemoryTarget(len(image)), concurrency=1, max_buffered=1)
    # one fetch at a time, each 100 s of virtual time; the writes take no virtual time
    assert report.wall_time == pytest.approx(9 * 100.0)
    assert report.fetch_p50 == report.fetch_p99 == pytest.approx(100.0)
    assert report.bound == "fetch"
    assert report.throughput == pytest.approx(len(image) / 900.0)


@pytest.mark.anyio
@virtual
async def test_slow_writer_is_write_bound() -> None:
    image = make_image(10, CHUNK, set())
    source = SimulatedChunkStore(image, CHUNK)  # fetches take no time
    target = MemoryTarget(len(image), write_cost=0.002)  # each write blocks 2 ms (real)
    report = await restore_image(source, target, concurrency=4)
    assert bytes(target.data) == image
    assert report.writer_busy >= 10 * 0.002
    assert report.fetch_p99 == 0
    assert report.bound == "write"


@pytest.mark.anyio
@virtual
@pytest.mark.parametrize(
    ("latencies", "p50", "p99"),
    [
        ((), 0.0, 0.0),  # nothing fetched
        ((3.0,), 3.0, 3.0),
        # nearest rank: 5 and 10, where interpolation would give 5.5 and 9.91
        (tuple(float(v) for v in range(1, 11)), 5.0, 10.0),
    ],
)
async def test_fetch_percentiles_are_nearest_rank(
    latencies: tuple[float, ...], p50: float, p99: float
) -> None:
    count = max(1, len(latencies))
    image = make_image(count, CHUNK, set() if latencies else {0})
    source = SimulatedChunkStore(image, CHUNK, latency=lambda i: latencies[i])
    report = await restore_image(source, MemoryTarget(len(image)), concurrency=4)
    assert report.fetched_chunks == len(latencies)
    assert (report.fetch_p50, report.fetch_p99) == (p50, p99)


@pytest.mark.parametrize(
    ("fetch_total", "fetches", "parallel", "writes", "writer_busy", "bound"),
    [
        # 8 fetches of 1 s each, 4 at once: the fetch stage needs 2 s
        (8.0, 8, 4, 8, 1.0, "fetch"),
        (8.0, 8, 4, 8, 3.0, "write"),
        (8.0, 8, 4, 8, 2.0, "fetch"),
        # 2 fetches of 1 s with room for 16: they still need 1 s, not 2/16 s
        (2.0, 2, 16, 2, 0.9, "fetch"),
        (0.0, 0, 4, 3, 0.0, "write"),
        (0.0, 0, 4, 0, 0.0, None),
    ],
)
def test_limiting_stage(
    fetch_total: float,
    fetches: int,
    parallel: int,
    writes: int,
    writer_busy: float,
    bound: str | None,
) -> None:
    assert (
        limiting_stage(
            fetch_total=fetch_total,
            fetches=fetches,
            parallel=parallel,
            writes=writes,
            writer_busy=writer_busy,
        )
        == bound
    )
