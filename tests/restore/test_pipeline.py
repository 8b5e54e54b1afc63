"""The restore pipeline on trio (virtual clock) and asyncio."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from jobctl import JobError
from jobctl.restore import (
    FETCH_CONCURRENCY_ENV,
    MAX_BUFFERED_ENV,
    ChunkMap,
    ChunkSizeError,
    DiskRestoreError,
    FileTarget,
    MemoryTarget,
    RestoreConfigError,
    RestorePipeline,
    RestoreStatistics,
    SimulatedChunkStore,
    restore_image,
)

from ._support import GatedSource, GatedTarget, make_image

pytestmark = pytest.mark.anyio

CHUNK = 64


@pytest.mark.parametrize("skip_zeros", [True, False])
async def test_restores_every_byte(skip_zeros: bool) -> None:
    zero = {0, 3, 4, 9}
    image = make_image(10, CHUNK, zero, tail=5)
    source = SimulatedChunkStore(image, CHUNK, latency=lambda i: 0.001 * (i % 3))
    target = MemoryTarget(len(image), skip_zeros=skip_zeros)
    report = await restore_image(source, target, concurrency=3, max_buffered=4)

    assert bytes(target.data) == image
    assert source.chunk_map.zero == frozenset(zero)
    # zero chunks are never fetched; every other chunk exactly once
    assert source.statistics().fetches == {i: 1 for i in range(10) if i not in zero}
    stats = target.statistics()
    assert stats.writes == (6 if skip_zeros else 10)
    assert stats.max_writers == 1
    assert stats.flushes == 1
    assert report.chunks == 10
    assert report.bytes == len(image)
    assert report.fetched_chunks == 6
    assert report.zero_chunks == 4
    assert report.zero_chunks_written == (0 if skip_zeros else 4)
    assert (report.concurrency, report.max_buffered) == (3, 4)


@pytest.mark.parametrize("fresh", [True, False])
async def test_restores_into_a_real_file(tmp_path: Path, fresh: bool) -> None:
    zero = {1, 2, 6}
    image = make_image(8, 4096, zero, tail=100)
    path = tmp_path / "disk.img"
    if not fresh:
        path.write_bytes(b"\xee" * len(image))  # old contents, zero chunks included
    source = SimulatedChunkStore(image, 4096, latency=0.001)
    with FileTarget.create(path, len(image)) if fresh else FileTarget.open(path) as target:
        report = await restore_image(source, target, concurrency=4)
    assert path.read_bytes() == image
    assert report.zero_chunks_written == (0 if fresh else 3)


async def test_zero_chunks_are_written_when_the_target_cannot_skip() -> None:
    image = bytes(3 * CHUNK)
    source = SimulatedChunkStore(image, CHUNK)
    target = MemoryTarget(len(image), skip_zeros=False)
    target.data[:] = b"\xff" * len(image)  # old contents must be overwritten
    report = await restore_image(source, target)
    assert bytes(target.data) == image
    assert source.statistics().fetches == {}
    assert report.bound == "write"


async def test_empty_image() -> None:
    source = SimulatedChunkStore(b"", CHUNK)
    target = MemoryTarget(0)
    report = await restore_image(source, target)
    assert report.chunks == 0
    assert report.bound is None
    assert target.statistics().flushes == 1


async def test_all_zero_image_on_a_sparse_target_does_no_io() -> None:
    source = SimulatedChunkStore(bytes(5 * CHUNK), CHUNK)
    target = MemoryTarget(5 * CHUNK)
    seen: list[RestoreStatistics] = []
    report = await restore_image(source, target, on_progress=seen.append)
    assert target.statistics().writes == 0
    assert report.chunks == 5
    assert report.bound is None
    assert seen[-1].chunks_done == 5


async def test_fetches_never_exceed_the_concurrency() -> None:
    image = make_image(20, CHUNK, set())
    source = GatedSource(image, CHUNK, set())
    target = MemoryTarget(len(image))
    pipeline = RestorePipeline(source, target, concurrency=4, max_buffered=100)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        await anyio.wait_all_tasks_blocked()
        assert source.in_flight == 4
        assert pipeline.statistics().fetches_in_flight == 4
        source.gate.set()
    assert source.max_in_flight == 4
    assert bytes(target.data) == image


async def test_concurrency_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FETCH_CONCURRENCY_ENV, "3")
    monkeypatch.delenv(MAX_BUFFERED_ENV, raising=False)
    image = make_image(10, CHUNK, set())
    source = GatedSource(image, CHUNK, set())
    pipeline = RestorePipeline(source, MemoryTarget(len(image)))
    assert (pipeline.settings.concurrency, pipeline.settings.max_buffered) == (3, 6)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        await anyio.wait_all_tasks_blocked()
        assert source.in_flight == 3
        source.gate.set()
    assert source.max_in_flight == 3


async def test_bad_settings_fail_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    source = GatedSource(make_image(2, CHUNK, set()), CHUNK, set())
    with pytest.raises(RestoreConfigError, match="concurrency must be at least 1, got -2"):
        RestorePipeline(source, MemoryTarget(2 * CHUNK), concurrency=-2)
    monkeypatch.setenv(MAX_BUFFERED_ENV, "lots")
    with pytest.raises(RestoreConfigError, match=MAX_BUFFERED_ENV):
        await restore_image(source, MemoryTarget(2 * CHUNK))
    assert source.started == []


@pytest.mark.parametrize("skip_zeros", [True, False])
async def test_memory_is_bounded_by_max_buffered(skip_zeros: bool) -> None:
    zero = {1, 2}
    image = make_image(12, CHUNK, zero)
    source = SimulatedChunkStore(image, CHUNK)
    target = GatedTarget(len(image), skip_zeros=skip_zeros)
    pipeline = RestorePipeline(source, target, concurrency=8, max_buffered=3)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run)
            # The writer is stuck on its first chunk; the fetchers fill the
            # buffer and then wait for it, whatever the concurrency says.
            await anyio.wait_all_tasks_blocked()
            stats = pipeline.statistics()
            assert stats.chunks_held == 3
            assert stats.chunks_done == (len(zero) if skip_zeros else 0)
            assert stats.fetches_in_flight == 0
            fetched = sum(source.statistics().fetches.values())
            # skipping zeros, the slots hold chunks 0, 3, 4; else 0 and the zero chunks 1, 2
            assert fetched == (3 if skip_zeros else 1)
            target.gate.set()
    finally:
        target.gate.set()
    assert bytes(target.inner.data) == image
    assert pipeline.statistics().chunks_held == 0


async def test_progress_counts_chunks_and_bytes() -> None:
    zero = {2}
    image = make_image(5, CHUNK, zero, tail=10)
    seen: list[RestoreStatistics] = []
    await restore_image(
        SimulatedChunkStore(image, CHUNK), MemoryTarget(len(image)), on_progress=seen.append
    )
    # the zero chunk is done at once, then one step per written chunk
    assert [s.chunks_done for s in seen] == [1, 2, 3, 4, 5]
    assert seen[0].bytes_done == CHUNK
    assert seen[-1].bytes_done == len(image)
    assert all(s.chunks_total == 5 and s.bytes_total == len(image) for s in seen)
    assert [s.bytes_done for s in seen] == sorted(s.bytes_done for s in seen)


# -- failures -----------------------------------------------------------------


class FailingStore:
    """Chunk ``bad`` fails at once; every other fetch takes 1000 s."""

    def __init__(self, image: bytes, bad: int, error: Exception) -> None:
        self.inner = SimulatedChunkStore(image, CHUNK, latency=1000)
        self.chunk_map = self.inner.chunk_map
        self.bad = bad
        self.error = error

    async def fetch(self, index: int) -> bytes:
        if index == self.bad:
            await anyio.lowlevel.checkpoint()
            raise self.error
        return await self.inner.fetch(index)


async def test_first_fetch_error_cancels_the_rest() -> None:
    image = make_image(40, CHUNK, set())
    boom = OSError("store unreachable")
    source = FailingStore(image, bad=5, error=boom)
    start = anyio.current_time()
    with pytest.raises(DiskRestoreError, match="at chunk 5: OSError: store unreachable") as info:
        await restore_image(source, MemoryTarget(len(image)), concurrency=8)
    assert anyio.current_time() - start < 1000
    assert info.value.index == 5
    assert info.value.cause is boom
    assert info.value.__cause__ is boom
    assert not isinstance(info.value, JobError)  # the pipeline's own, not the job core's
    stats = source.inner.statistics()
    assert stats.in_flight == 0  # every other fetch was cancelled, none left behind
    assert 5 not in stats.fetches  # chunk 5 was asked for but never reached the store
    assert len(stats.fetches) == 7  # the 7 other slots were fetching, and no more began


async def test_wrong_size_chunk_is_a_typed_error() -> None:
    class ShortStore:
        chunk_map = ChunkMap(3 * CHUNK, CHUNK)

        async def fetch(self, index: int) -> bytes:
            await anyio.lowlevel.checkpoint()
            return bytes(CHUNK - 1) if index == 1 else b"\1" * CHUNK

    with pytest.raises(DiskRestoreError, match="at chunk 1") as info:
        await restore_image(ShortStore(), MemoryTarget(3 * CHUNK), concurrency=1)
    cause = info.value.cause
    assert isinstance(cause, ChunkSizeError)
    assert (cause.index, cause.expected, cause.actual) == (1, CHUNK, CHUNK - 1)
    assert str(cause) == f"chunk 1 has {CHUNK - 1} bytes, expected {CHUNK}"


async def test_write_error_names_the_chunk() -> None:
    image = make_image(6, CHUNK, set())

    class BadDisk:
        skip_zeros = True

        def __init__(self) -> None:
            self.inner = MemoryTarget(len(image))

        def write(self, offset: int, data: bytes) -> None:
            if offset == 4 * CHUNK:
                raise OSError(28, "No space left on device")
            self.inner.write(offset, data)

        def flush(self) -> None:
            raise AssertionError("a failed restore must not flush")

    source = SimulatedChunkStore(image, CHUNK)
    with pytest.raises(DiskRestoreError, match="at chunk 4: OSError") as info:
        await restore_image(source, BadDisk(), concurrency=1, max_buffered=1)
    assert info.value.index == 4
    assert isinstance(info.value.cause, OSError)
    # with one chunk held at a time nothing past chunk 4 was fetched
    assert sorted(source.statistics().fetches) == [0, 1, 2, 3, 4]


async def test_flush_error_has_no_chunk() -> None:
    class NoSync:
        skip_zeros = True

        def write(self, offset: int, data: bytes) -> None:
            pass

        def flush(self) -> None:
            raise OSError(5, "Input/output error")

    source = SimulatedChunkStore(make_image(2, CHUNK, set()), CHUNK)
    with pytest.raises(DiskRestoreError, match="at the final flush: OSError") as info:
        await restore_image(source, NoSync())
    assert info.value.index is None


async def test_failing_progress_callback_fails_the_restore() -> None:
    image = make_image(4, CHUNK, set())

    def on_progress(stats: RestoreStatistics) -> None:
        if stats.chunks_done == 2:
            raise RuntimeError("listener broke")

    with pytest.raises(DiskRestoreError, match="listener broke") as info:
        await restore_image(
            SimulatedChunkStore(image, CHUNK), MemoryTarget(len(image)), on_progress=on_progress
        )
    assert info.value.index is not None


# -- cancellation -----------------------------------------------------------------


async def test_cancellation_leaves_no_fetch_behind() -> None:
    image = make_image(20, CHUNK, set())
    source = GatedSource(image, CHUNK, set())
    target = MemoryTarget(len(image))
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(restore_image, source, target)
            await anyio.wait_all_tasks_blocked()
            assert source.in_flight == 16
            scope.cancel()
    assert source.in_flight == 0
    assert source.cancelled == 16
    assert target.statistics().writes == 0


async def test_cancellation_waits_for_the_write_in_progress() -> None:
    image = make_image(4, CHUNK, set())
    target = GatedTarget(len(image))
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await restore_image(SimulatedChunkStore(image, CHUNK), target, concurrency=1)
        target.log.append("returned")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            assert await anyio.to_thread.run_sync(target.entered.wait, 60)  # chunk 0 is writing
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert target.log == []  # the cancelled restore still waits for its write
            target.gate.set()
    finally:
        target.gate.set()
    # the write was never abandoned: it ended before the restore returned
    assert target.log == ["wrote 0", "returned"]


async def test_pipeline_runs_once() -> None:
    source = SimulatedChunkStore(make_image(2, CHUNK, set()), CHUNK)
    pipeline = RestorePipeline(source, MemoryTarget(2 * CHUNK))
    with pytest.raises(RuntimeError, match=r"flush\(\) may run once, after transfer"):
        await pipeline.flush()
    await pipeline.run()
    with pytest.raises(RuntimeError, match=r"transfer\(\) may run only once"):
        await pipeline.transfer()
    with pytest.raises(RuntimeError, match=r"flush\(\) may run once"):
        await pipeline.flush()
