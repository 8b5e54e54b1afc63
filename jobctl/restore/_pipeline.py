"""The restore pipeline: concurrent fetches, one writer, bounded memory."""

from __future__ import annotations

import math
import queue
import time
from array import array
from collections.abc import Callable, Iterator
from typing import final

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs

from jobctl._percentile import percentile

from ._chunks import ChunkSource
from ._errors import ChunkSizeError, DiskRestoreError
from ._report import RestoreReport, RestoreStatistics, limiting_stage
from ._settings import RestoreSettings
from ._target import RestoreTarget

__all__ = ["RestorePipeline", "restore_image"]

#: Called with the restore's statistics whenever chunks are done. Runs in the
#: event loop: it must not block. If it raises, the restore fails.
ProgressCallback = Callable[[RestoreStatistics], None]

_Chunk = tuple[int, bytes]


@final
class RestorePipeline:
    """Restores one image from a :class:`ChunkSource` into a
    :class:`RestoreTarget`.

    Guarantees, for :meth:`transfer`:

    - at most ``settings.concurrency`` fetches run at once;
    - at most ``settings.max_buffered`` chunks are held at once, from the start
      of their fetch to the end of their write;
    - one writer writes each chunk at its own offset as it arrives, in its
      own thread (one write at a time), so the event loop never blocks and
      the writer never waits for the event loop;
    - chunks the map marks zero are never fetched, and not written when the
      target's ``skip_zeros`` is true;
    - the first failure of a fetch, a write or the progress callback cancels
      everything else and is raised as :class:`DiskRestoreError` naming the chunk;
    - when it returns or raises, no task it started is left running and no
      write is in progress (a write is never abandoned mid-call).

    Use it once: :meth:`transfer`, then :meth:`flush`, then :meth:`report`;
    or :meth:`run` for all three. :meth:`statistics` and :meth:`report` may be
    read at any time.
    """

    def __init__(
        self,
        source: ChunkSource,
        target: RestoreTarget,
        *,
        concurrency: int | None = None,
        max_buffered: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = RestoreSettings.resolve(concurrency=concurrency, max_buffered=max_buffered)
        self._source = source
        self._target = target
        self._map = source.chunk_map
        self._on_progress = on_progress
        self._slots = anyio.Semaphore(self.settings.max_buffered)
        self._writer_thread = anyio.CapacityLimiter(1)
        self._collector_thread = anyio.CapacityLimiter(1)
        self._scope: anyio.CancelScope | None = None
        self._error: DiskRestoreError | None = None
        self._transfer_started = False
        self._transferred = False
        self._flush_started = False
        # counters
        self._chunks_done = 0
        self._bytes_done = 0
        self._in_flight = 0
        self._writes = 0
        self._zero_written = 0
        self._latencies = array("d")
        self._writer_busy = 0.0
        self._writer_idle = 0.0
        self._flush_time = 0.0
        self._wall_time = 0.0

    def statistics(self) -> RestoreStatistics:
        """The restore's progress right now."""
        return RestoreStatistics(
            chunks_total=self._map.count,
            chunks_done=self._chunks_done,
            bytes_total=self._map.size,
            bytes_done=self._bytes_done,
            fetches_in_flight=self._in_flight,
            chunks_held=self.settings.max_buffered - self._slots.value,
        )

    def report(self) -> RestoreReport:
        """What the restore did so far and where its time went."""
        latencies = sorted(self._latencies)
        return RestoreReport(
            chunks=self._chunks_done,
            bytes=self._bytes_done,
            fetched_chunks=len(latencies),
            zero_chunks=len(self._map.zero),
            zero_chunks_written=self._zero_written,
            fetch_p50=percentile(latencies, 0.50),
            fetch_p99=percentile(latencies, 0.99),
            writer_busy=self._writer_busy,
            writer_idle=self._writer_idle,
            flush_time=self._flush_time,
            wall_time=self._wall_time,
            bound=limiting_stage(
                fetch_total=math.fsum(latencies),
                fetches=len(latencies),
                parallel=min(self.settings.concurrency, self.settings.max_buffered),
                writes=self._writes,
                writer_busy=self._writer_busy,
            ),
            concurrency=self.settings.concurrency,
            max_buffered=self.settings.max_buffered,
        )

    async def run(self) -> RestoreReport:
        """Transfer every chunk, flush the target, and return the report."""
        await self.transfer()
        await self.flush()
        return self.report()

    async def transfer(self) -> None:
        """Fetch and write every chunk of the image (see the class guarantees).

        Raises :class:`DiskRestoreError` for the first failure. Cancelling it
        cancels every fetch and waits for a write in progress to end.
        """
        if self._transfer_started:
            raise RuntimeError("RestorePipeline.transfer() may run only once")
        self._transfer_started = True
        start = anyio.current_time()
        skip = self._target.skip_zeros
        if skip:
            self._chunks_done = len(self._map.zero)
            self._bytes_done = sum(self._map.length(i) for i in self._map.zero)
        todo = iter(self._map.data_chunks() if skip else range(self._map.count))
        work = self._map.count - (len(self._map.zero) if skip else 0)
        to_write: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        written: queue.SimpleQueue[_Written | None] = queue.SimpleQueue()
        try:
            self._progressed()
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._run_writer, to_write, written)
                tg.start_soon(self._collect, written)
                try:
                    async with anyio.create_task_group() as feeders:
                        for _ in range(min(self.settings.concurrency, work)):
                            feeders.start_soon(self._feed, todo, to_write)
                finally:
                    to_write.put(None)  # the writer leaves after the chunks before this
        finally:
            self._wall_time += anyio.current_time() - start
        if self._error is not None:
            raise self._error
        self._transferred = True

    async def flush(self) -> None:
        """Make the writes durable (the target's ``flush``, in a worker thread).

        Only after a :meth:`transfer` that succeeded. Raises
        :class:`DiskRestoreError` (``index`` ``None``) if the flush fails.
        """
        if not self._transferred or self._flush_started:
            raise RuntimeError("RestorePipeline.flush() may run once, after transfer() succeeded")
        self._flush_started = True
        start = anyio.current_time()
        try:
            await anyio.to_thread.run_sync(self._target.flush, limiter=self._writer_thread)
        except Exception as exc:
            raise DiskRestoreError(None, exc) from exc
        finally:
            elapsed = anyio.current_time() - start
            self._flush_time += elapsed
            self._wall_time += elapsed

    # -- the tasks ---------------------------------------------------------

    async def _feed(self, todo: Iterator[int], to_write: queue.SimpleQueue[_Chunk | None]) -> None:
        """One fetch slot: take the next chunk, fetch it, queue it for the writer."""
        while True:
            await self._slots.acquire()  # released once the chunk is written
            index = next(todo, None)
            if index is None:
                self._slots.release()
                return
            try:
                if index in self._map.zero:
                    to_write.put((index, bytes(self._map.length(index))))
                else:
                    to_write.put((index, await self._fetch(index)))
            except Exception as exc:
                self._fail(index, exc)
                return

    async def _fetch(self, index: int) -> bytes:
        expected = self._map.length(index)
        self._in_flight += 1
        start = anyio.current_time()
        try:
            chunk = await self._source.fetch(index)
        finally:
            self._in_flight -= 1
        self._latencies.append(anyio.current_time() - start)
        if len(chunk) != expected:
            raise ChunkSizeError(index, expected=expected, actual=len(chunk))
        return chunk

    async def _run_writer(
        self,
        to_write: queue.SimpleQueue[_Chunk | None],
        written: queue.SimpleQueue[_Written | None],
    ) -> None:
        try:
            # Never abandoned: this returns only once the writer thread has
            # ended (or raises before it began, if cancelled at once).
            await anyio.to_thread.run_sync(
                self._write_loop, to_write, written, limiter=self._writer_thread
            )
        finally:
            written.put(None)  # the collector stops at this mark

    def _write_loop(
        self,
        to_write: queue.SimpleQueue[_Chunk | None],
        written: queue.SimpleQueue[_Written | None],
    ) -> None:
        """The one writer, in its own thread: write chunks in the order they
        were fetched until the end mark or a failed write, reporting each
        write on ``written``. It never waits for the event loop. Once the
        transfer is cancelled (or failed) it starts no other write: it raises
        the cancellation instead."""
        while True:
            waited = time.perf_counter()
            item = to_write.get()
            started = time.perf_counter()
            if item is None:
                return
            anyio.from_thread.check_cancelled()
            index, chunk = item
            del item
            try:
                self._target.write(self._map.offset(index), chunk)
            except Exception as exc:
                written.put(_Written(index, started - waited, time.perf_counter() - started, exc))
                return
            del chunk
            written.put(_Written(index, started - waited, time.perf_counter() - started))

    async def _collect(self, written: queue.SimpleQueue[_Written | None]) -> None:
        """Account for the writes the writer reported and free their slots."""
        while True:
            for result in await anyio.to_thread.run_sync(
                _take_all, written, limiter=self._collector_thread
            ):
                if result is None:
                    return
                self._writer_idle += result.idle
                self._writer_busy += result.busy
                if result.error is not None:
                    self._fail(result.index, result.error)
                    return
                self._slots.release()
                self._writes += 1
                if result.index in self._map.zero:
                    self._zero_written += 1
                self._chunks_done += 1
                self._bytes_done += self._map.length(result.index)
                try:
                    self._progressed()
                except Exception as exc:
                    self._fail(result.index, exc)
                    return

    def _progressed(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.statistics())

    def _fail(self, index: int, exc: Exception) -> None:
        """Keep the first failure and cancel the rest of the transfer."""
        if self._error is None:
            self._error = DiskRestoreError(index, exc)
            assert self._scope is not None
            self._scope.cancel()


@attrs.frozen
class _Written:
    """The writer's report of one write: ``idle`` is how long it waited for
    the chunk, ``busy`` how long the write took (real seconds)."""

    index: int
    idle: float
    busy: float
    error: Exception | None = None


def _take_all(written: queue.SimpleQueue[_Written | None]) -> list[_Written | None]:
    """Wait for at least one report, then take every report already there."""
    results = [written.get()]
    while results[-1] is not None:
        try:
            results.append(written.get_nowait())
        except queue.Empty:
            break
    return results


async def restore_image(
    source: ChunkSource,
    target: RestoreTarget,
    *,
    concurrency: int | None = None,
    max_buffered: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> RestoreReport:
    """Restore ``source``'s image into ``target`` and flush it.

    ``concurrency`` (fetches at once) and ``max_buffered`` (chunks held at
    once) default to the environment (``JOBCTL_FETCH_CONCURRENCY``,
    ``JOBCTL_RESTORE_MAX_BUFFERED``), else 16 and twice the concurrency.
    See :class:`RestorePipeline` for the guarantees.
    """
    pipeline = RestorePipeline(
        source,
        target,
        concurrency=concurrency,
        max_buffered=max_buffered,
        on_progress=on_progress,
    )
    return await pipeline.run()
