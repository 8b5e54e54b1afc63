"""jobctl.testing.open_host_pair: two distinct hosts that migrate to each
other, on the simulator (one shared simulated network, whose detector sees
both hosts' machines) and on real QEMU (one storage directory for both)."""

from __future__ import annotations

import pytest

from jobctl import Domain
from jobctl.qemu import VM, MachineSpec, MigrationOptions, destroy, migrate, start
from jobctl.testing import open_host_pair
from tests._requires import require_qemu

pytestmark = pytest.mark.anyio
OPTIONS = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05)


async def test_two_simulated_hosts_share_one_network() -> None:
    async with open_host_pair(("left", "right")) as pair:
        assert (pair.a.name, pair.b.name) == ("left", "right")
        assert pair.hosts == (pair.a, pair.b) and pair.a is not pair.b
        assert pair.simulator is not None
        here, there = VM(Domain("vm1"), pair.a), VM(Domain("vm1"), pair.b)
        await start(here, MachineSpec(ram_mib=64))
        await migrate(here, there, OPTIONS)
        assert here.machine is None and there.machine is not None
        # The destination's QEMU runs in the shared simulator too.
        assert len(pair.simulator.vms) == 1, pair.simulator.vms
        await destroy(there)


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_two_real_qemu_hosts_share_one_storage(anyio_backend: str) -> None:
    require_qemu()
    async with open_host_pair(qemu=True) as pair:
        assert pair.simulator is None and pair.a is not pair.b
        disk = await pair.a.create_disk("vm1", 16)
        storage = {host.backend.storage for host in pair.hosts}  # type: ignore[attr-defined]
        assert len(storage) == 1 and disk.path.startswith(str(storage.pop()))
