"""SAVE and RESTORE on the simulator. The saved state travels through a real
unix socket, so these run in real time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import JobAbortedError, TraceKind
from jobctl.qemu import (
    FlowError,
    MachineSpec,
    RestoreError,
    SaveError,
    destroy,
    domstats,
    restore,
    save,
)
from jobctl_simulators.qemu import ErrorReply, FaultPlan, FaultRule

from ._support import cluster

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Real time on both: the saved state goes through a real socket."""
    return (request.param, {})


async def test_save_stops_the_vm_and_restore_brings_it_back(tmp_path: Path) -> None:
    path = str(tmp_path / "vm1.save")
    async with cluster() as c:
        vm, _ = await c.started()
        assert vm.machine is not None
        spec = vm.machine.spec
        saved = await save(vm, path)
        assert saved.size > 0 and not saved.running and saved.progress.status == "completed"
        assert vm.machine is None and (await domstats(vm.domain)).state == "shutoff"
        restored = await restore(vm, spec, path)
        assert restored.size == saved.size and restored.running
        assert (await domstats(vm.domain)).state == "running"
        await destroy(vm)
    phases = [e.detail["phase"] for e in c.trace.of(TraceKind.ASYNC_PHASE)]
    assert phases[1:] == ["begin", "perform", "finish", "prepare", "perform", "finish"]
    c.trace.check()
    assert c.violations == 0


async def test_save_can_keep_the_vm_running(tmp_path: Path) -> None:
    # No disk: the simulator lets a source whose disks went nowhere resume.
    async with cluster() as c:
        vm, _ = await c.started(disk=False)
        result = await save(vm, str(tmp_path / "vm1.save"), keep_running=True)
        assert result.running and (await domstats(vm.domain)).state == "running"
        await destroy(vm)
    c.trace.check()


async def test_abort_during_save_resumes_the_vm(tmp_path: Path) -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        assert vm.machine is not None
        with vm.machine.qmp.subscribe("MIGRATION") as events:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    with pytest.raises(JobAbortedError):
                        await save(vm, str(tmp_path / "vm1.save"))

                tg.start_soon(run)
                while (await events.receive()).data["status"] != "active":
                    pass
                await vm.domain.abort("not now")
        assert (await domstats(vm.domain)).state == "running"
        assert not (tmp_path / "vm1.save").exists()  # no partial save is left
        assert vm.domain.info().idle
        await destroy(vm)
    c.trace.check()


async def test_a_failed_save_leaves_the_vm_running(tmp_path: Path) -> None:
    refuse = FaultPlan((FaultRule(ErrorReply("disk full"), "migrate"),))
    async with cluster(faults_a=lambda name, incoming: refuse) as c:
        vm, _ = await c.started()
        with pytest.raises(SaveError, match="disk full"):
            await save(vm, str(tmp_path / "vm1.save"))
        assert (await domstats(vm.domain)).state == "running"
        await destroy(vm)
    c.trace.check()


async def test_restore_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.save"
    garbage.write_bytes(b"this is not a saved VM\n")
    async with cluster() as c:
        vm, _ = await c.started()
        spec = MachineSpec(ram_mib=64)
        with pytest.raises(FlowError, match="already runs"):
            await restore(vm, spec, str(garbage))
        await destroy(vm)
        with pytest.raises(RestoreError, match="no saved state"):
            await restore(vm, spec, str(tmp_path / "missing.save"))
        # QEMU fails such a stream at once; the simulator waits for more.
        with pytest.raises(RestoreError, match=r"failed|did not load"):
            await restore(vm, spec, str(garbage), timeout=1)
        assert vm.machine is None and c.a.machines == ()
        assert vm.domain.info().idle
    c.trace.check()
