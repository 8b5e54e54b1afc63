"""A VM given a fence (``VM(..., fence=ownership)``): every machine attached
to it is reached through a FencedMonitor, so once the lease is lost its jobs'
commands are refused before they reach QEMU, on the machine a migration
attaches too. The fence here is a plain object keeping to MonitorFence (the
real Ownership on PostgreSQL is tested in tests/cluster)."""

from __future__ import annotations

import anyio.lowlevel
import pytest

from jobctl import Domain
from jobctl.cluster import FencedMonitor, LeaseLostError
from jobctl.journal import FencingToken
from jobctl.qemu import VM, MachineSpec, MigrationOptions, destroy, domstats, migrate, start
from jobctl.testing import open_host_pair

pytestmark = pytest.mark.anyio


class Lease:
    """A fence whose lease is held until :meth:`lose`."""

    def __init__(self, token: FencingToken) -> None:
        self.token = token
        self.lost = False
        self.checks = 0

    async def check(self, domain: str) -> FencingToken:
        await anyio.lowlevel.checkpoint()
        self.checks += 1
        if self.lost:
            raise LeaseLostError(
                f"mgr-a lost {domain!r}: mgr-b owns it at epoch 2",
                domain=domain,
                epoch=1,
                owner="mgr-b",
                current_epoch=2,
            )
        return self.token

    def lose(self) -> None:
        self.lost = True


def _token() -> FencingToken:
    return FencingToken(domain="vm1", owner="mgr-a", epoch=1)


async def test_a_lost_lease_refuses_the_vms_commands_before_qemu() -> None:
    lease = Lease(_token())
    async with open_host_pair() as pair:
        a, b = pair.hosts
        here = VM(Domain("vm1"), a, fence=lease)
        there = VM(Domain("vm1"), b, fence=lease)
        await start(here, MachineSpec(ram_mib=64))
        assert isinstance(here.domain.monitor, FencedMonitor)
        await domstats(here)
        await migrate(here, there, MigrationOptions(bandwidth=1 << 30, poll_interval=0.05))
        # The machine the migration attached on b is fenced as well.
        assert isinstance(there.domain.monitor, FencedMonitor)
        await domstats(there)
        checked = lease.checks
        assert checked > 0
        machine = there.machine
        assert machine is not None
        sent = machine.qmp.statistics().commands_sent
        lease.lose()
        with pytest.raises(LeaseLostError, match="mgr-b owns it") as info:
            await domstats(there)
        assert info.value.owner == "mgr-b" and info.value.current_epoch == 2
        assert machine.qmp.statistics().commands_sent == sent  # nothing reached QEMU
        # Nor does it kill the QEMU, which is another manager's now.
        with pytest.raises(LeaseLostError):
            await destroy(there)
        assert not machine.stopped and there.machine is machine
        there.fence = None  # the test's own clean-up
        await destroy(there)
        assert machine.stopped


async def test_without_a_fence_the_monitor_is_the_qmp_client() -> None:
    async with open_host_pair() as pair:
        vm = VM(Domain("vm1"), pair.a)
        machine = await start(vm, MachineSpec(ram_mib=64))
        assert vm.domain.monitor is machine.qmp
        await destroy(vm)
