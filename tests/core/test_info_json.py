"""``Domain.info()`` for serving: its times on the wall clock beside the
loop's, and the last completed async job there for every reader."""

from __future__ import annotations

import datetime
import time

import anyio
import pytest
import sniffio

import jobctl
from jobctl import AsyncJob, Stamp

pytestmark = pytest.mark.anyio


async def test_times_convert_to_the_wall_clock_through_the_snapshot() -> None:
    # Virtual time on trio: the job began 100 loop seconds before the snapshot,
    # however little wall-clock time passed; the conversion follows the loop.
    pause = 100.0 if sniffio.current_async_library() == "trio" else 0.05
    dom = jobctl.Domain("vm1")
    async with dom.async_job(AsyncJob.BACKUP):
        await anyio.sleep(pause)
        before = time.time()
        info = dom.info()
        after = time.time()
    taken = info.taken
    assert before <= taken.wall <= after
    assert taken.monotonic == pytest.approx(anyio.current_time(), abs=1.0)
    assert info.async_job is not None
    started = info.to_json()["async_job"]["started"]
    assert started["monotonic"] == info.async_job.started
    assert started["wall"] == pytest.approx(taken.wall - pause, abs=0.04)
    assert started["wall"] == taken.wall - (taken.monotonic - info.async_job.started)
    utc = datetime.datetime.fromisoformat(started["utc"])
    assert utc == datetime.datetime.fromtimestamp(started["wall"], datetime.UTC)
    assert info.to_json()["taken"] == Stamp(taken.monotonic, taken.wall).to_json()


async def test_the_last_completed_job_stays_until_the_next_completes() -> None:
    dom = jobctl.Domain("vm1")
    async with dom.async_job(AsyncJob.SAVE, owner="first"):
        pass
    readers: list[jobctl.AsyncJobInfo | None] = []

    async def read() -> None:
        readers.append(dom.info().completed_async_job)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(read)
    assert len(readers) == 3 and all(
        r is not None and r.owner == "first" and r.outcome == "ok" for r in readers
    )
    async with dom.async_job(AsyncJob.BACKUP, owner="second"):
        during = dom.info()
        assert during.completed_async_job is not None
        assert during.completed_async_job.owner == "first"
        assert during.async_job is not None and during.async_job.owner == "second"
    after = dom.info().completed_async_job
    assert after is not None and after.owner == "second"
    assert dom.info().to_json()["completed_async_job"]["owner"] == "second"
