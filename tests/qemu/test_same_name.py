"""One VM name on two hosts: a migration's two ends are called alike, as
libvirt calls them. It works on the simulated hosts as on real QEMU, and
what the simulated path refuses comes as the real path's typed errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio.testing

from jobctl import Domain
from jobctl.qemu import (
    VM,
    Host,
    MachineSpec,
    MigrationError,
    MigrationOptions,
    destroy,
    domstats,
    migrate,
    open_qemu_host,
    start,
)
from jobctl.testing import open_simulated_host
from jobctl_simulators.qemu import SimulatedHost, SimulatedQemu
from tests._requires import require_qemu

pytestmark = pytest.mark.anyio

OPTIONS = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05)


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {})


async def migrate_there_and_back(a: Host, b: Host, spec: MachineSpec) -> None:
    """``vm1`` starts on a, migrates to b and back, each host's VM of the
    same name; queries on the side it runs on see it running."""
    here, there = VM(Domain("vm1"), a), VM(Domain("vm1"), b)
    await start(here, spec)
    result = await migrate(here, there, OPTIONS)
    assert (result.source, result.destination) == ("vm1", "vm1")
    assert result.progress.status == "completed"
    assert here.machine is None and there.machine is not None
    assert (await domstats(there.domain)).state == "running"
    await migrate(there, here, OPTIONS)
    assert here.machine is not None and there.machine is None
    assert (await domstats(here.domain)).state == "running"
    await destroy(here)
    assert here.domain.info().idle and there.domain.info().idle


async def test_one_name_on_two_simulated_hosts_migrates() -> None:
    sim = SimulatedHost(network=True)
    async with open_simulated_host("a", sim=sim) as a, open_simulated_host("b", sim=sim) as b:
        disk = await a.create_disk("vm1", 64)
        await migrate_there_and_back(a, b, MachineSpec(ram_mib=64, disk=disk))
        assert a.machines == () and b.machines == () and not sim.vms


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_one_name_on_two_real_qemu_hosts_migrates(tmp_path: Path) -> None:
    require_qemu()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        open_qemu_host("a", storage=tmp_path / "a") as a,
        open_qemu_host("b", storage=tmp_path / "b") as b,
    ):
        await migrate_there_and_back(a, b, MachineSpec(ram_mib=64))
        assert a.machines == () and b.machines == ()


async def test_a_destination_the_simulator_refuses_is_a_migration_error() -> None:
    """A simulated QEMU that cannot start (its network already has a QEMU of
    that name: here one started behind the hosts' back) fails the migration
    with the real path's MigrationError, the VM running on at the source."""
    sim = SimulatedHost(network=True)
    async with open_simulated_host("a", sim=sim) as a, open_simulated_host("b", sim=sim) as b:
        here, there = VM(Domain("vm1"), a), VM(Domain("vm1"), b)
        await start(here, MachineSpec(ram_mib=64, disk=await a.create_disk("vm1", 64)))
        (started,) = sim.vms
        stem, number = started.rsplit(".", 1)
        # The next simulated QEMU of this process gets the next number.
        async with SimulatedQemu(f"{stem}.{int(number) + 1}", host=sim):
            with pytest.raises(MigrationError, match="did not start") as caught:
                await migrate(here, there, OPTIONS)
        assert caught.value.side == "destination"
        assert here.machine is not None and there.machine is None and b.machines == ()
        assert (await domstats(here.domain)).state == "running"
        await destroy(here)
