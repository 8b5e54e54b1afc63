"""A restore of a VM's disk as the domain's RESTORE async job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobctl._core._domain import Domain
from jobctl._core._kinds import AsyncJob, Job

from ._chunks import ChunkSource
from ._pipeline import RestorePipeline
from ._report import RestoreReport, RestoreStatistics
from ._target import RestoreTarget

__all__ = ["restore_disk"]


def _progress(stats: RestoreStatistics) -> dict[str, Any]:
    return {
        "chunks_done": stats.chunks_done,
        "chunks_total": stats.chunks_total,
        "bytes_done": stats.bytes_done,
        "bytes_total": stats.bytes_total,
    }


async def restore_disk(
    domain: Domain,
    source: ChunkSource,
    target: RestoreTarget,
    *,
    concurrency: int | None = None,
    max_buffered: int | None = None,
    owner: str = "restore",
    allowed: Iterable[Job] | None = None,
    timeout: float | None = None,
) -> RestoreReport:
    """Restore ``source``'s image into ``target`` as ``domain``'s RESTORE
    async job, and return the pipeline's report.

    Phases: ``"transfer"`` (fetch and write every chunk), then ``"flush"``
    (make the writes durable). Both run inside interruptible sections, so the
    ``allowed`` regular jobs (default QUERY, DESTROY, ABORT) get through, and
    ``domain.abort()`` cancels the restore: this raises
    :class:`jobctl.JobAbortedError` once every fetch has stopped and no write
    is in progress. The job's progress (``chunks_done``, ``chunks_total``,
    ``bytes_done``, ``bytes_total``) is published at the start, then each
    time another hundredth of the chunks is done, and at the end.

    The settings are checked before the job begins; ``timeout`` bounds the
    wait for the domain. A failing chunk raises :class:`DiskRestoreError`.
    """
    last_published: int | None = None

    def publish(stats: RestoreStatistics) -> None:
        nonlocal last_published
        step = max(1, -(-stats.chunks_total // 100))
        done = stats.chunks_done
        if (
            last_published is None
            or done - last_published >= step
            or (done == stats.chunks_total and done != last_published)
        ):
            last_published = done
            ajob.set_progress(_progress(stats))

    pipeline = RestorePipeline(
        source,
        target,
        concurrency=concurrency,
        max_buffered=max_buffered,
        on_progress=publish,
    )
    async with domain.async_job(
        AsyncJob.RESTORE, allowed=allowed, owner=owner, timeout=timeout
    ) as ajob:
        await ajob.set_phase("transfer")
        async with ajob.interruptible():
            await pipeline.transfer()
        await ajob.set_phase("flush")
        async with ajob.interruptible():
            await pipeline.flush()
    return pipeline.report()
