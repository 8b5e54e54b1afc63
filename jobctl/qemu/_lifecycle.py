"""Starting and destroying a VM on a host."""

from __future__ import annotations

from jobctl._kinds import AsyncJob, Job
from jobctl.qemu._errors import FlowError
from jobctl.qemu._machine import Machine, MachineSpec
from jobctl.qemu._vm import VM

__all__ = ["destroy", "start"]


async def start(vm: VM, spec: MachineSpec, *, owner: str = "start") -> Machine:
    """Start the VM on its host, as a START async job, and attach its QEMU.

    Raises :class:`FlowError` if the VM already runs there, and
    :class:`MachineStartError` if QEMU did not start.
    """
    async with vm.domain.async_job(AsyncJob.START, owner=owner) as ajob:
        if vm.machine is not None and not vm.machine.stopped:
            raise FlowError(f"VM {vm.name!r} already runs on host {vm.host.name!r}")
        await ajob.set_phase("launch")
        machine = await vm.host.start_machine(vm.name, spec)
        vm.attach(machine)
    return machine


async def destroy(vm: VM, *, owner: str = "destroy") -> None:
    """Stop the VM's QEMU at once, as a DESTROY job: it pre-empts a running
    async job, which cleans up first. Does nothing if the VM does not run."""
    async with vm.domain.job(Job.DESTROY, owner=owner):
        machine = vm.detach()
        if machine is not None:
            await machine.stop()
