from __future__ import annotations

import anyio
import pytest

import jobctl
from jobctl import AsyncJob, Job
from jobctl.testing import ScriptedMonitor

from ._support import Recorder

pytestmark = pytest.mark.anyio


async def test_query_during_interruptible_migration() -> None:
    rec = Recorder()
    mon = ScriptedMonitor(latency=0.001)
    dom = jobctl.Domain("vm1", monitor=mon, trace=rec.hub)
    results: list[object] = []

    async def stats() -> None:
        async with dom.job(Job.QUERY, owner="stats") as job, job.monitor() as m:
            results.append(await m.execute("query-status"))

    async with anyio.create_task_group() as tg:
        async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="migrate") as ajob:
            await ajob.set_phase("perform")
            async with ajob.monitor() as m:
                await m.execute("migrate")
            tg.start_soon(stats)
            await anyio.wait_all_tasks_blocked()
            assert dom.info().waiters  # waits for the section
            async with ajob.interruptible():
                await anyio.sleep(0.01)
            assert results
            async with ajob.monitor() as m:
                await m.execute("query-migrate")
    assert mon.statistics().max_in_flight == 1
    assert dom.info().idle
    assert "barrier.start" not in rec.kinds()
    assert rec.kinds().count("gate.open") == 1
