"""A VM's observed state in the scrape: what jobctl.qemu last learnt of its
QEMU, and how old each observation is (simulated QEMU, virtual time)."""

from __future__ import annotations

import anyio
import pytest

from jobctl import Domain, TraceHub
from jobctl.qemu import VM, MachineSpec, MigrationOptions, domstats, migrate, start
from jobctl.testing import open_simulated_host
from jobctl_simulators.qemu import MigrationModel, SimulatedHost

from ._support import value
from .test_collector import exported

pytestmark = pytest.mark.anyio

#: 64 MiB at 1 GiB/s: a migration of about a tenth of a second.
FAST = MigrationModel(link_speed=float(1 << 30))


async def test_a_vm_exports_its_observed_state_and_each_age() -> None:
    hub = TraceHub()
    sim = SimulatedHost(network=True)
    async with (
        open_simulated_host("a", sim=sim, migration=FAST) as a,
        open_simulated_host("b", sim=sim, migration=FAST) as b,
    ):
        here, there = VM(Domain("vm1@a", trace=hub), a), VM(Domain("vm1@b", trace=hub), b)
        with exported(hub) as (registry, metrics):
            metrics.add(here)
            metrics.add(there)
            src, dst = {"domain": "vm1@a"}, {"domain": "vm1@b"}
            # Nothing observed yet: no sample, rather than a made-up zero.
            assert value(registry, "jobctl_vm_running", **src) is None
            assert (
                value(registry, "jobctl_vm_observation_age_seconds", **src, observation="run")
                is None
            )

            disk = await a.create_disk("vm1", 64)
            await start(here, MachineSpec(ram_mib=64, disk=disk))
            await domstats(here)
            assert value(registry, "jobctl_vm_status_info", **src, status="running") == 1
            assert value(registry, "jobctl_vm_running", **src) == 1
            await anyio.sleep(5)
            for observation in ("run", "block"):
                age = value(
                    registry, "jobctl_vm_observation_age_seconds", **src, observation=observation
                )
                assert age == pytest.approx(5, abs=0.01), observation
            # The guest's disk, as query-blockstats counted it.
            reads = [
                s.labels["device"]
                for family in registry.collect()
                if family.name == "jobctl_vm_block_read_bytes"
                for s in family.samples
                if s.labels["domain"] == "vm1@a"
            ]
            assert reads, "no block device observed"

            async with anyio.create_task_group() as tg:
                tg.start_soon(migrate, here, there, MigrationOptions(poll_interval=0.05))
                await anyio.sleep(0.05)
                # Mid-way: each side's async job is in a phase its flow named.
                for side in (src, dst):
                    phase = value(registry, "jobctl_vm_job_phase_seconds", **side)
                    ran = value(registry, "jobctl_async_job_seconds", **side)
                    assert phase is not None and ran is not None, side
                    assert 0 <= phase <= ran <= 0.05 + 1e-9, side
            # The source's QEMU is gone; the destination runs the guest, and
            # its migration's figures came from the flow's own query-migrate.
            assert value(registry, "jobctl_vm_status_info", **src, status="shutoff") == 1
            assert value(registry, "jobctl_vm_running", **src) == 0
            assert value(registry, "jobctl_vm_migration_info", **src, status="completed") == 1
            total = value(registry, "jobctl_vm_migration_total_bytes", **src)
            assert total == 64 << 20
            assert value(registry, "jobctl_vm_migration_transferred_bytes", **src) == total
            assert value(registry, "jobctl_vm_migration_remaining_bytes", **src) == 0
            assert value(registry, "jobctl_vm_running", **dst) == 1
            # Just observed: its age is the last command's latency at most.
            for observation in ("run", "migration"):
                age = value(
                    registry, "jobctl_vm_observation_age_seconds", **dst, observation=observation
                )
                assert age == pytest.approx(0, abs=0.01), observation
