"""QemuBlockJobs: QEMU's block jobs as a task backend, on the simulated QEMU."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import Domain, Job
from jobctl.journal import (
    CommandState,
    EndContext,
    TaskSpec,
    TaskState,
    follow_command,
    open_journal,
    recover,
)
from jobctl.qemu import (
    QemuBlockJobs,
)
from jobctl.qmp import QMPClient, open_qmp_stream
from jobctl_simulators.qemu import BackupModel, Disk, SimulatedQemu

pytestmark = pytest.mark.anyio

MiB = 1 << 20
#: 8 MiB at 64 MiB/s: an eighth of a second per backup.
MODEL = BackupModel(throughput=64 * MiB)


@asynccontextmanager
async def simulated_domain(name: str = "vm1") -> AsyncIterator[Domain]:
    disks = [Disk("disk0", 8 * MiB, device="vd0"), Disk("backup0", 8 * MiB), Disk("backup1", MiB)]
    async with SimulatedQemu(name, backup=MODEL, disks=disks) as qemu:
        stream = await qemu.add_monitor().connect_memory()
        async with open_qmp_stream(stream) as qmp:
            yield Domain(name, monitor=qmp)


async def qmp(dom: Domain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    async with dom.job(Job.MODIFY, owner="test") as job, job.monitor() as mon:
        return await mon.execute(command, arguments)


def backup(job_id: str, sync: str = "full", target: str = "backup0") -> dict[str, Any]:
    return {
        "job-id": job_id,
        "device": "disk0",
        "target": target,
        "sync": sync,
        "auto-dismiss": False,
    }


async def ended(ctx: EndContext) -> None:
    pass


async def test_a_backup_job_is_followed_then_dismissed(tmp_path: Path, tick: float) -> None:
    async with simulated_domain() as dom, open_journal(tmp_path / "j.db") as journal:
        command = await journal.begin_command(
            "backup_vm", [TaskSpec("disk0", "qemu:vm1", backend_id="bk-disk0")]
        )
        await qmp(dom, "blockdev-backup", backup("bk-disk0"))
        await journal.update_task(command.tasks[0].id, TaskState.RUNNING)
        backends = {"qemu:vm1": QemuBlockJobs(dom)}
        final = await follow_command(journal, command.id, backends, poll_interval=tick / 4)
        (task,) = final.tasks
        assert task.state is TaskState.SUCCEEDED
        assert task.result == {"type": "backup", "progress": 8 * MiB, "total": 8 * MiB}
        assert await qmp(dom, "query-jobs") == []


async def test_a_cancelled_job_fails_its_task_with_qemus_error(tmp_path: Path) -> None:
    async with simulated_domain() as dom, open_journal(tmp_path / "j.db") as journal:
        command = await journal.begin_command(
            "backup_vm", [TaskSpec("disk0", "qemu:vm1", backend_id="bk-none")]
        )
        await qmp(dom, "blockdev-backup", backup("bk-none", sync="none"))
        await journal.update_task(command.tasks[0].id, TaskState.RUNNING)
        backend = QemuBlockJobs(dom)
        (status,) = (await backend.query(["bk-none", "unknown"])).values()
        assert status.state.value == "running"
        await qmp(dom, "job-cancel", {"id": "bk-none"})
        final = await follow_command(journal, command.id, {"qemu:vm1": backend})
        assert final.tasks[0].state is TaskState.FAILED
        assert "backup job" in (final.tasks[0].error or "")
        # Releasing again, or an id QEMU never had, is not an error.
        await backend.release(["bk-none", "never-was"])
        ended_command = await journal.end_command(command.id, ended)
        assert ended_command.state is CommandState.FAILED


async def test_recovery_adopts_concludes_and_fails_per_qemu(tmp_path: Path, tick: float) -> None:
    path = tmp_path / "j.db"
    specs = [
        TaskSpec("running", "qemu:vm1", backend_id="bk-run"),
        TaskSpec("finished", "qemu:vm1", backend_id="bk-done"),
        TaskSpec("never-started", "qemu:vm1", backend_id="bk-never"),
    ]
    async with simulated_domain() as dom:
        async with open_journal(path) as journal:
            command = await journal.begin_command("backup_vm", specs)
            running, finished, never = command.tasks
            await qmp(dom, "blockdev-backup", backup("bk-run", sync="none"))
            await journal.update_task(running.id, TaskState.RUNNING)
            client = dom.monitor
            assert isinstance(client, QMPClient)
            with client.subscribe("JOB_STATUS_CHANGE") as events:
                await qmp(dom, "blockdev-backup", backup("bk-done", sync="top", target="backup1"))
                await journal.update_task(finished.id, TaskState.RUNNING)
                # The manager dies here, before it started bk-never; bk-done ends.
                async for event in events:
                    if event.data == {"id": "bk-done", "status": "concluded"}:
                        break
        async with open_journal(path) as journal:
            async with anyio.create_task_group() as tg:
                report = await tg.start(
                    partial(
                        recover,
                        journal,
                        backends={"qemu:vm1": QemuBlockJobs(dom)},
                        end_actions={"backup_vm": ended},
                        poll_interval=tick / 4,
                    )
                )
                assert (report.adopted, report.concluded, report.failed) == (
                    (running.id,),
                    (finished.id,),
                    (never.id,),
                )
                assert [j["id"] for j in await qmp(dom, "query-jobs")] == ["bk-run"]
                await qmp(dom, "job-cancel", {"id": "bk-run"})
            final = await journal.command(command.id)
        assert [t.state for t in final.tasks] == [
            TaskState.FAILED,
            TaskState.SUCCEEDED,
            TaskState.FAILED,
        ]
        assert final.state is CommandState.FAILED
        assert await qmp(dom, "query-jobs") == []
