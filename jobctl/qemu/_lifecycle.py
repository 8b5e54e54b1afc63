"""Starting and destroying a VM on a host."""

from __future__ import annotations

import math

import anyio

from jobctl._core._kinds import AsyncJob, Job
from jobctl.qemu._deadline import Deadline
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


async def destroy(vm: VM, *, owner: str = "destroy", timeout: float | None = None) -> None:
    """Kill the VM's QEMU, then end its jobs, as libvirt's destroy does.

    First the QEMU process is killed (SIGKILL for a real QEMU, which ends a
    stopped or hung one too; :meth:`Machine.kill`), with no task switch
    before the DESTROY job is requested: its QMP connection closes, so a
    regular job stuck in a monitor command fails with
    :class:`jobctl.qmp.QMPClosedError` at once, and a running async job
    (migration, backup, save, restore) is pre-empted by the DESTROY job and
    ends with :class:`jobctl.JobAbortedError` (``reason="destroyed"``)
    after its clean-up. Then, as a DESTROY job, the machine is detached and
    reaped: when this returns, the process is gone and the domain holds no
    job of its own. A QEMU that does not answer cannot hold destroy up.

    ``timeout`` bounds the whole call (None: the domain's ``wait_timeout``):
    the wait for the DESTROY job and for the process to be gone; past it
    :class:`jobctl.JobTimeoutError` says which. The kill is not undone
    then: the host reaps the process all the same. If the VM does not run
    here, nothing is killed and it returns once the DESTROY job could begin.
    With :attr:`VM.fence`, the lease is checked first: a manager that lost
    it kills nothing and gets :class:`jobctl.cluster.LeaseLostError`.
    """
    dom = vm.domain
    limit = Deadline(dom.name, dom.wait_timeout if timeout is None else timeout, flow="destroy")
    if vm.fence is not None and vm.machine is not None:
        # A manager that lost the domain's lease kills nothing: the QEMU is
        # another manager's now (raises jobctl.cluster.LeaseLostError).
        await vm.fence.check(dom.name)
    killed = vm.machine
    if killed is not None:
        # Synchronous: the pre-emption below comes before any task sees the
        # monitor close, so the async job ends as destroyed, not as failed.
        killed.kill()
    async with dom.job(Job.DESTROY, owner=owner, timeout=limit.remaining()):
        machine = vm.detach()
        if machine is not None and machine is not killed:
            machine.kill()  # attached while the DESTROY job waited
        for dying in dict.fromkeys(m for m in (killed, machine) if m is not None):
            left = limit.remaining()
            with anyio.move_on_after(math.inf if left is None else left):
                await dying.wait_stopped()
            if not dying.stopped:
                raise limit.error(f"{dying!r} (pid {dying.pid}) was not gone")
