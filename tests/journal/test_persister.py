"""Async job persistence through a real Domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobctl import AsyncJob, Domain, Job
from jobctl.journal import (
    open_journal,
)

pytestmark = pytest.mark.anyio


async def test_every_phase_change_is_persisted_and_the_end_clears_it(tmp_path: Path) -> None:
    async with open_journal(tmp_path / "j.db") as journal:
        dom = Domain("vm1", persister=journal.persister)
        async with dom.async_job(
            AsyncJob.MIGRATION_OUT, owner="migrate", allowed={Job.QUERY, Job.ABORT}
        ) as ajob:
            (begun,) = await journal.async_jobs()
            assert (begun.domain, begun.kind, begun.phase, begun.owner) == (
                "vm1",
                AsyncJob.MIGRATION_OUT,
                "begin",
                "migrate",
            )
            assert begun.allowed == frozenset({Job.QUERY, Job.ABORT, Job.DESTROY})
            assert begun.job_id == ajob.id
            assert begun.session == journal.session
            ajob.private["uri"] = "tcp:dst:49152"
            ajob.private["disks"] = ["vda", "vdb"]
            await ajob.set_phase("perform")
            (performing,) = await journal.async_jobs()
            assert performing.phase == "perform"
            assert performing.private == {"uri": "tcp:dst:49152", "disks": ["vda", "vdb"]}
            ajob.private["uri"] = "changed, not yet persisted"
            (still,) = await journal.async_jobs()
            assert still.private["uri"] == "tcp:dst:49152"
        assert await journal.async_jobs() == ()


async def test_one_record_per_domain(tmp_path: Path) -> None:
    async with open_journal(tmp_path / "j.db") as journal:
        doms = [Domain(f"vm{i}", persister=journal.persister) for i in range(3)]
        async with doms[0].async_job(AsyncJob.BACKUP), doms[2].async_job(AsyncJob.SAVE) as save:
            await save.set_phase("writing")
            records = await journal.async_jobs()
            assert [(r.domain, r.kind, r.phase) for r in records] == [
                ("vm0", AsyncJob.BACKUP, "begin"),
                ("vm2", AsyncJob.SAVE, "writing"),
            ]
        assert await journal.async_jobs() == ()


async def test_private_data_must_be_json(tmp_path: Path) -> None:
    async with open_journal(tmp_path / "j.db") as journal:
        dom = Domain("vm1", persister=journal.persister)
        with pytest.raises(TypeError, match="private data of the async job on 'vm1'"):
            async with dom.async_job(AsyncJob.DUMP) as ajob:
                ajob.private["fd"] = object()
                await ajob.set_phase("dumping")
        assert await journal.async_jobs() == ()
        assert dom.info().async_job is None
