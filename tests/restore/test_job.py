"""restore_disk: a restore as a domain's RESTORE async job."""

from __future__ import annotations

import anyio
import pytest

from jobctl import AsyncJob, Domain, Job, JobAbortedError, TraceEvent, TraceHub, TraceKind
from jobctl.restore import (
    DiskRestoreError,
    MemoryTarget,
    RestoreConfigError,
    RestoreReport,
    SimulatedChunkStore,
    restore_disk,
)

from ._support import GatedSource, make_image

pytestmark = pytest.mark.anyio

CHUNK = 64


def traced() -> tuple[Domain, list[TraceEvent]]:
    hub = TraceHub()
    events: list[TraceEvent] = []
    hub.subscribe(events.append)
    return Domain("vm1", trace=hub), events


class Outcome:
    """Runs restore_disk and keeps what it returned or raised."""

    def __init__(self) -> None:
        self.report: RestoreReport | None = None
        self.error: BaseException | None = None

    async def restore(self, *args: object, **kwargs: object) -> None:
        try:
            self.report = await restore_disk(*args, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            self.error = exc


async def test_restore_runs_as_an_async_job_that_lets_queries_in() -> None:
    dom, events = traced()
    image = make_image(8, CHUNK, {1})
    source = GatedSource(image, CHUNK, {1})
    target = MemoryTarget(len(image))
    outcome = Outcome()
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome.restore, dom, source, target)
        await anyio.wait_all_tasks_blocked()
        info = dom.info().async_job
        assert info is not None
        assert (info.kind, info.owner, info.phase) == (AsyncJob.RESTORE, "restore", "transfer")
        assert info.interruptible
        assert dict(info.progress) == {
            "chunks_done": 1,  # the zero chunk, skipped on a fresh target
            "chunks_total": 8,
            "bytes_done": CHUNK,
            "bytes_total": len(image),
        }
        async with dom.job(Job.QUERY, owner="stats", nowait=True):
            assert source.in_flight == 7
        source.gate.set()
    assert outcome.error is None
    assert outcome.report is not None
    assert outcome.report.chunks == 8
    assert bytes(target.data) == image

    phases = [e.detail["phase"] for e in events if e.kind is TraceKind.ASYNC_PHASE]
    assert phases == ["transfer", "flush"]
    progress = [e.detail["progress"] for e in events if e.kind is TraceKind.ASYNC_PROGRESS]
    assert progress[-1]["chunks_done"] == 8
    assert progress[-1]["bytes_done"] == len(image)
    done = dom.info().completed_async_job
    assert done is not None
    assert done.outcome == "ok"


async def test_progress_is_published_at_most_once_per_hundredth() -> None:
    dom, events = traced()
    image = make_image(250, 16, set())
    await restore_disk(dom, SimulatedChunkStore(image, 16), MemoryTarget(len(image)))
    done = [
        e.detail["progress"]["chunks_done"] for e in events if e.kind is TraceKind.ASYNC_PROGRESS
    ]
    # steps of 3 chunks (250 / 100, rounded up), then the last one
    assert done == [*range(0, 250, 3), 250]


async def test_abort_cancels_the_restore() -> None:
    dom, _ = traced()
    image = make_image(40, CHUNK, set())
    source = GatedSource(image, CHUNK, set())
    target = MemoryTarget(len(image))
    outcome = Outcome()
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome.restore, dom, source, target)
        await anyio.wait_all_tasks_blocked()
        await dom.abort("operator")
    assert isinstance(outcome.error, JobAbortedError)
    assert outcome.error.reason == "aborted"
    assert source.in_flight == 0
    assert source.cancelled == 16
    assert target.statistics().writes == 0
    assert target.statistics().flushes == 0
    info = dom.info()
    assert info.async_job is None
    assert info.completed_async_job is not None
    assert info.completed_async_job.outcome == "aborted"


async def test_destroy_preempts_the_restore() -> None:
    dom, _ = traced()
    image = make_image(10, CHUNK, set())
    source = GatedSource(image, CHUNK, set())
    outcome = Outcome()
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome.restore, dom, source, MemoryTarget(len(image)))
        await anyio.wait_all_tasks_blocked()
        # DESTROY is allowed in the section: it begins at once and cancels
        # the restore, which unwinds beside it
        async with dom.job(Job.DESTROY, owner="shutdown"):
            pass
    assert isinstance(outcome.error, JobAbortedError)
    assert outcome.error.reason == "destroyed"
    assert source.in_flight == 0
    assert source.cancelled == 10


async def test_failing_chunk_fails_the_job() -> None:
    dom, _ = traced()

    class Broken:
        chunk_map = SimulatedChunkStore(make_image(4, CHUNK, set()), CHUNK).chunk_map

        async def fetch(self, index: int) -> bytes:
            await anyio.lowlevel.checkpoint()
            raise ConnectionResetError(f"lost chunk {index}")

    with pytest.raises(DiskRestoreError, match="ConnectionResetError: lost chunk"):
        await restore_disk(dom, Broken(), MemoryTarget(4 * CHUNK), concurrency=1)
    done = dom.info().completed_async_job
    assert done is not None
    assert done.outcome == "error"


async def test_bad_settings_fail_before_the_job_begins() -> None:
    dom, events = traced()
    source = SimulatedChunkStore(make_image(2, CHUNK, set()), CHUNK)
    with pytest.raises(RestoreConfigError, match="max_buffered must be at least 1, got 0"):
        await restore_disk(dom, source, MemoryTarget(2 * CHUNK), max_buffered=0)
    assert events == []
    assert dom.info().idle
