"""Hosts, machines, VMs, start/destroy and domstats."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from jobctl import AsyncJob, Domain, JobTimeoutError
from jobctl.qemu import (
    VM,
    DiskImage,
    FlowError,
    MachineError,
    MachineSpec,
    MachineStartError,
    destroy,
    domstats,
    open_qemu_host,
    start,
)
from jobctl.qmp import QMPClosedError

from ._support import cluster

pytestmark = pytest.mark.anyio


async def test_start_domstats_destroy() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None and machine.host == "a" and not machine.incoming
        stats = await domstats(vm.domain)
        assert (stats.state, stats.running, stats.partial, stats.migration) == (
            "running",
            True,
            False,
            None,
        )
        assert [b.node for b in stats.block] == ["disk0"]
        assert stats.block[0].device.endswith("disk0-dev/virtio-backend")
        with pytest.raises(FlowError, match="already runs"):
            await start(vm, MachineSpec())
        await destroy(vm)
        assert machine.stopped and machine.exit_status == -9  # killed, as destroy does
        assert vm.machine is None and c.a.machines == ()
        assert (await domstats(vm.domain)).state == "shutoff"
        await destroy(vm)  # nothing to do
    c.trace.check()


async def test_leaving_the_host_stops_its_machines() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None and c.a.machines == (machine,)
    assert machine.stopped


async def test_a_machine_that_dies_closes_its_monitor() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None
        c.a.backend.qemu(machine).kill()
        await machine.wait_stopped()
        assert machine.exit_status == -9
        with pytest.raises(QMPClosedError):
            await domstats(vm.domain)
        vm.detach()


async def test_nowait_domstats_never_waits() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        assert not (await domstats(vm.domain, nowait=True)).partial
        holding, release = anyio.Event(), anyio.Event()

        async def hold() -> None:
            async with vm.domain.async_job(AsyncJob.BACKUP, owner="holder"):  # no section
                holding.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await holding.wait()
            stats = await domstats(vm.domain, nowait=True)
            assert stats.partial and stats.state is None and not stats.block
            with pytest.raises(JobTimeoutError, match="holder"):
                await domstats(vm.domain, timeout=0.5)
            release.set()
        assert not (await domstats(vm.domain, nowait=True)).partial
        await destroy(vm)


async def test_vm_attach_rules() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None
        other = VM(Domain("vm9@a"), c.a)
        second = await c.a.start_machine("vm1@a", machine.spec)
        with pytest.raises(FlowError, match="already runs"):
            vm.attach(second)
        await second.stop()
        with pytest.raises(FlowError, match="not running"):
            other.attach(second)
        assert vm.detach() is machine and vm.domain.monitor is None
        vm.attach(machine)
        assert vm.domain.monitor is machine.qmp
        await destroy(vm)
    with pytest.raises(TypeError, match="Domain"):
        VM(cast(Any, "vm1"), c.a)


async def test_bad_specs_and_disks() -> None:
    with pytest.raises(ValueError, match="ram_mib"):
        MachineSpec(ram_mib=0)
    with pytest.raises(ValueError, match="extra_monitors"):
        MachineSpec(extra_monitors=-1)
    with pytest.raises(ValueError, match="size_mib"):
        DiskImage("/x.qcow2", 0)
    async with cluster() as c:
        with pytest.raises(ValueError, match="1 MiB"):
            await c.a.create_disk("d", 0)
        assert (await c.a.create_disk("d", 8)).size_mib == 8


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_a_qemu_that_does_not_start(anyio_backend: Any) -> None:
    # "false" exits at once: no QEMU needed to see the start-up fail.
    async with open_qemu_host("a", binary="false", start_timeout=5) as host:
        with pytest.raises(MachineStartError, match="did not start"):
            await host.start_machine("vm1", MachineSpec(random_ram=False))
        assert host.machines == ()
    with pytest.raises(MachineError, match="not installed"):
        async with open_qemu_host("a", binary="no-such-qemu-here"):
            pass
    await anyio.lowlevel.checkpoint()
