"""Two simulated hosts that share a simulated network, and a VM on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from jobctl import Domain
from jobctl.qemu import (
    VM,
    MachineSpec,
    QemuHost,
    start,
)
from jobctl.testing import (
    FaultPolicy,
    SimulatedBackend,
    TraceRecorder,
    open_simulated_host,
)
from jobctl_simulators.qemu import ConcurrencyDetector, MigrationModel, SimulatedHost

#: Migrations of 64 MiB at 1 GiB/s: about a tenth of a second.
FAST = MigrationModel(link_speed=float(1 << 30))


@attrs.define
class Cluster:
    a: QemuHost[SimulatedBackend]
    b: QemuHost[SimulatedBackend]
    sim: SimulatedHost
    trace: TraceRecorder

    def vms(self, name: str = "vm1") -> tuple[VM, VM]:
        """The VM as host a and host b see it."""
        return (
            VM(Domain(f"{name}@a", trace=self.trace.hub), self.a),
            VM(Domain(f"{name}@b", trace=self.trace.hub), self.b),
        )

    async def started(self, name: str = "vm1", *, disk: bool = True) -> tuple[VM, VM]:
        """The VM, running on host a, with a 64 MiB disk unless ``disk`` is False."""
        here, there = self.vms(name)
        image = await self.a.create_disk(name, 64) if disk else None
        backup = await self.a.create_disk(f"{name}-backup", 64) if disk else None
        await start(here, MachineSpec(ram_mib=64, disk=image, backup_disk=backup))
        return here, there

    @property
    def violations(self) -> int:
        return self.sim.detector.violation_count


@asynccontextmanager
async def cluster(
    *,
    faults_a: FaultPolicy | None = None,
    faults_b: FaultPolicy | None = None,
    migration: MigrationModel = FAST,
) -> AsyncIterator[Cluster]:
    """Hosts a and b on one simulated network whose detector is strict: a
    second command in flight on any monitor crashes that QEMU."""
    sim = SimulatedHost(detector=ConcurrencyDetector(strict=True), network=True)
    with TraceRecorder() as trace:
        async with (
            open_simulated_host("a", sim=sim, migration=migration, faults=faults_a) as a,
            open_simulated_host("b", sim=sim, migration=migration, faults=faults_b) as b,
        ):
            yield Cluster(a, b, sim, trace)
