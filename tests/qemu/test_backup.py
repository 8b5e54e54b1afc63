"""BACKUP: blockdev-backup through QEMU's job lifecycle, on the simulator."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from jobctl import Job, JobAbortedError, TraceKind
from jobctl.qemu import (
    VM,
    BackupError,
    BackupTarget,
    NotRunningError,
    backup,
    destroy,
    domstats,
)
from jobctl_simulators.qemu import BackupModel, ErrorReply, FaultPlan, FaultRule

from ._support import cluster

pytestmark = pytest.mark.anyio

TARGET = BackupTarget("backup0")
MiB = 1 << 20


async def jobs(vm: VM) -> Any:
    async with vm.domain.job(Job.QUERY) as job, job.monitor() as mon:
        return await mon.execute("query-jobs")


async def test_a_backup_copies_the_disk_and_dismisses_its_job() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        result = await backup(vm, TARGET, job_id="nightly", poll_interval=0.01)
        assert (result.job_id, result.device, result.target) == ("nightly", "disk0", "backup0")
        assert result.copied == 64 * MiB
        assert await jobs(vm) == []
        phases = [e.detail["phase"] for e in c.trace.of(TraceKind.ASYNC_PHASE, domain="vm1@a")]
        assert phases[1:] == ["begin", "perform", "finalize", "finish"]
        commands = [e.detail["command"] for e in c.trace.of(TraceKind.COMMAND_SENT)]
        assert commands.index("blockdev-backup") < commands.index("job-finalize")
        assert commands.index("job-finalize") < commands.index("job-dismiss")
        assert vm.domain.info().idle
        await destroy(vm)
    c.trace.check()
    assert c.violations == 0


async def test_domstats_runs_during_a_backup() -> None:
    slow = BackupModel(throughput=float(512 * MiB))
    async with cluster() as c:
        c.a.backend.backup_model = slow
        vm, _ = await c.started()
        seen: list[str | None] = []
        done = anyio.Event()

        async def loop() -> None:
            while not done.is_set():
                seen.append((await domstats(vm.domain)).state)

        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            await backup(vm, TARGET, poll_interval=0.05)
            done.set()
        assert seen.count("running") > 10
        progress = c.trace.of(TraceKind.ASYNC_PROGRESS, domain="vm1@a")
        assert any(0 < e.detail["progress"].get("copied", 0) < 64 * MiB for e in progress)
        await destroy(vm)
    c.trace.check()
    assert c.violations == 0


async def test_abort_cancels_and_dismisses_the_job() -> None:
    async with cluster() as c:
        c.a.backend.backup_model = BackupModel(throughput=float(16 * MiB))
        vm, _ = await c.started()
        assert vm.machine is not None
        with vm.machine.qmp.subscribe("JOB_STATUS_CHANGE") as events:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    with pytest.raises(JobAbortedError):
                        await backup(vm, TARGET)

                tg.start_soon(run)
                while (await events.receive()).data["status"] != "running":
                    pass
                await vm.domain.abort("enough")
        assert await jobs(vm) == []
        assert (await domstats(vm.domain)).state == "running"
        assert vm.domain.info().idle
        await destroy(vm)
    c.trace.check()


async def test_a_refused_backup_fails_cleanly() -> None:
    refuse = FaultPlan((FaultRule(ErrorReply("no space"), "blockdev-backup"),))
    async with cluster(faults_a=lambda name, incoming: refuse) as c:
        vm, _ = await c.started()
        with pytest.raises(BackupError, match="no space"):
            await backup(vm, TARGET)
        assert await jobs(vm) == []
        assert vm.domain.info().idle
        await destroy(vm)
    c.trace.check()


async def test_a_missing_target_node_fails_and_a_stopped_vm_cannot_back_up() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        with pytest.raises(BackupError, match="nowhere"):
            await backup(vm, BackupTarget("nowhere"))
        with pytest.raises(ValueError, match="speed"):
            await backup(vm, TARGET, speed=-1)
        await destroy(vm)
        with pytest.raises(NotRunningError):
            await backup(vm, TARGET)
    c.trace.check()
