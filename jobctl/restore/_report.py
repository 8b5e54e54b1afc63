"""What a restore tells about itself: live statistics and the final report."""

from __future__ import annotations

import math
from typing import Literal, final

import attrs

__all__ = ["Bound", "RestoreReport", "RestoreStatistics"]

#: Which stage limited a restore: fetching chunks or writing them.
Bound = Literal["fetch", "write"]


@final
@attrs.frozen
class RestoreStatistics:
    """A restore's progress at one moment.

    A chunk is done once it is written, or at the start if it is a zero
    chunk the target may skip. ``chunks_held`` is how many chunks are between
    the start of their fetch and the end of their write (at most the
    restore's ``max_buffered``).
    """

    chunks_total: int
    chunks_done: int
    bytes_total: int
    bytes_done: int
    fetches_in_flight: int
    chunks_held: int


@final
@attrs.frozen
class RestoreReport:
    """What a restore did and where its time went, in seconds: of the event
    loop's clock for fetches, flush and wall time; real seconds measured in
    the writer's thread for ``writer_busy`` and ``writer_idle`` (the same
    clock but for a virtual one such as trio's ``MockClock``).

    - ``chunks``/``bytes``: how much of the image is done (all of it after a
      successful restore).
    - ``fetched_chunks``: chunks read from the source; ``zero_chunks``: chunks
      known to be zero, never fetched; ``zero_chunks_written``: those of them
      written anyway because the target cannot skip them.
    - ``fetch_p50``/``fetch_p99``: fetch latency percentiles (nearest rank;
      0.0 when nothing was fetched).
    - ``writer_busy``: time spent in the target's writes; ``writer_idle``: time
      the writer waited for a chunk; ``flush_time``: time of the final flush.
    - ``wall_time``: the whole restore, flush included.
    - ``bound``: the stage that limited the run: ``"fetch"`` if the fetches,
      at the restore's concurrency, needed more time than the writer spent
      writing; else ``"write"``. ``None`` if the restore neither fetched nor
      wrote anything.
    """

    chunks: int
    bytes: int
    fetched_chunks: int
    zero_chunks: int
    zero_chunks_written: int
    fetch_p50: float
    fetch_p99: float
    writer_busy: float
    writer_idle: float
    flush_time: float
    wall_time: float
    bound: Bound | None
    concurrency: int
    max_buffered: int

    @property
    def throughput(self) -> float:
        """Bytes restored per second of wall time (``inf`` for a zero wall time)."""
        return self.bytes / self.wall_time if self.wall_time > 0 else math.inf


def limiting_stage(
    *, fetch_total: float, fetches: int, parallel: int, writes: int, writer_busy: float
) -> Bound | None:
    """Which stage limited a run.

    The fetch stage needs at least ``fetch_total / parallel`` seconds (the sum
    of all fetch latencies spread over the fetches that can run at once),
    the write stage needs ``writer_busy`` seconds; the one that needs more is
    the bound. Ties go to ``"fetch"``; with nothing fetched it is ``"write"``
    if anything was written, else ``None``.
    """
    if fetches == 0:
        return "write" if writes else None
    fetch_time = fetch_total / max(1, min(parallel, fetches))
    return "write" if writer_busy > fetch_time else "fetch"
