"""Two simulated hosts on one network, in the test's clock, with the
invariant checker subscribed to their trace and a strict detector."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from jobctl import Domain, TraceHub
from jobctl.qemu import VM, MachineSpec, MigrationOptions, QemuHost, start
from jobctl.testing import (
    REAL_TIME_INSTANT,
    FaultPolicy,
    InvariantChecker,
    SimulatedBackend,
    TraceRecorder,
    open_simulated_host,
)
from jobctl_simulators.qemu import ConcurrencyDetector, MigrationModel, SimulatedHost

#: Every command takes this long (5 ms).
LATENCY = 0.005
OPTIONS = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05)
#: 64 MiB at 256 MiB/s: a quarter of a second, several polls.
MODEL = MigrationModel(link_speed=float(256 << 20))


@attrs.define
class Hosts:
    a: QemuHost[SimulatedBackend]
    b: QemuHost[SimulatedBackend]
    hub: TraceHub
    recorder: TraceRecorder
    checker: InvariantChecker
    detector: ConcurrencyDetector

    async def started(self, name: str = "vm1") -> tuple[VM, VM]:
        here = VM(Domain(f"{name}@a", trace=self.hub), self.a)
        there = VM(Domain(f"{name}@b", trace=self.hub), self.b)
        disk = await self.a.create_disk(name, 64)
        backup_disk = await self.a.create_disk(f"{name}-backup", 64)
        await start(here, MachineSpec(ram_mib=64, disk=disk, backup_disk=backup_disk))
        return here, there

    def check(self) -> None:
        self.checker.finish()
        self.checker.check()
        assert self.detector.violation_count == 0, self.detector.violations()


@asynccontextmanager
async def hosts(
    *,
    latency: float = LATENCY,
    real_time: bool = False,
    faults_a: FaultPolicy | None = None,
    migration: MigrationModel = MODEL,
) -> AsyncIterator[Hosts]:
    """Hosts a and b whose commands take ``latency``; the checker is
    subscribed to the trace (with the real-time tolerance if ``real_time``),
    the detector is strict; ``faults_a`` for host a's machines."""
    detector = ConcurrencyDetector(strict=True)
    sim = SimulatedHost(detector=detector, network=True)
    hub = TraceHub()
    checker = InvariantChecker(instant=REAL_TIME_INSTANT) if real_time else InvariantChecker()
    with TraceRecorder(hub) as recorder, hub.subscribe(checker.feed):
        async with (
            open_simulated_host(
                "a", sim=sim, migration=migration, command_latency=latency, faults=faults_a
            ) as a,
            open_simulated_host("b", sim=sim, migration=migration, command_latency=latency) as b,
        ):
            yield Hosts(a, b, hub, recorder, checker, detector)
