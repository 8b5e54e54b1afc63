"""Simulated QEMU (:mod:`simulators.qemu`): machines that run in this process.

Each machine is a :class:`simulators.qemu.SimulatedQemu` in a task of its
host's task group, reached through an in-memory stream, so flows run in
virtual time under trio's ``MockClock``. Hosts that share one
:class:`simulators.qemu.SimulatedHost` (the simulated network, with its
concurrency detector) can migrate between each other.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Final, final

import anyio
import anyio.abc
import attrs

from jobctl._core._errors import MonitorError
from jobctl._groups import unwrap_single
from jobctl.qemu._errors import MachineError, MachineStartError
from jobctl.qemu._machine import DiskImage, Machine, MachineSpec
from jobctl.qmp import open_qmp_stream
from simulators.qemu import (
    BackupModel,
    Disk,
    FaultPlan,
    MigrationModel,
    SimulatedHost,
    SimulatedQemu,
)

__all__ = ["FaultPolicy", "SimulatedQemuHost", "open_simulated_host"]

#: Which faults a new machine suffers: called with the machine's name and
#: whether it is incoming; None for none.
FaultPolicy = Callable[[str, bool], FaultPlan | None]

_MiB: Final = 1 << 20


@final
class SimulatedQemuHost:
    """A host of simulated machines; get one from :func:`open_simulated_host`."""

    def __init__(
        self,
        name: str,
        sim: SimulatedHost,
        workdir: Path,
        task_group: anyio.abc.TaskGroup,
        *,
        migration: MigrationModel,
        backup: BackupModel,
        command_latency: float,
        faults: FaultPolicy | None,
        stop_timeout: float,
    ) -> None:
        self._name = name
        #: The simulated network these machines live in.
        self.sim = sim
        self.workdir = workdir
        self._task_group = task_group
        self.migration_model = migration
        self.backup_model = backup
        self.command_latency = command_latency
        #: Which faults new machines suffer (tests change it between steps).
        self.faults = faults
        self._stop_timeout = stop_timeout
        self._ids = itertools.count(1)
        self._machines: dict[Machine, SimulatedQemu] = {}
        self._sockets: dict[str, list[Path]] = {}
        self._closing = False

    @property
    def name(self) -> str:
        return self._name

    def incoming_uri(self, name: str) -> str:
        # Unique per incoming machine: the simulated network keys listeners by
        # URI. The socket file is removed when the machine stops.
        path = self.workdir / f"{name}.{next(self._ids)}.migrate"
        self._sockets.setdefault(name, []).append(path)
        return f"unix:{path}"

    @property
    def machines(self) -> tuple[Machine, ...]:
        """The machines running now."""
        return tuple(self._machines)

    def qemu(self, machine: Machine) -> SimulatedQemu:
        """The simulated QEMU behind ``machine`` (to inject faults, kill it...)."""
        try:
            return self._machines[machine]
        except KeyError:
            raise LookupError(f"{machine!r} is not running on host {self._name!r}") from None

    async def create_disk(self, name: str, size_mib: int) -> DiskImage:
        if size_mib < 1:
            raise ValueError(f"a disk needs at least 1 MiB, not {size_mib!r}")
        await anyio.lowlevel.checkpoint()
        return DiskImage(str(self.workdir / f"{name}.qcow2"), size_mib)

    async def start_machine(
        self, name: str, spec: MachineSpec, *, incoming: bool = False
    ) -> Machine:
        if self._closing:
            raise MachineError(f"host {self._name!r} is shutting down")
        machine: Machine = await self._task_group.start(self._serve, name, spec, incoming)
        return machine

    def _disks(self, spec: MachineSpec) -> list[Disk]:
        disks = []
        if spec.disk is not None:
            disks.append(
                Disk(
                    spec.disk_node,
                    spec.disk.size_mib * _MiB,
                    spec.disk.path,
                    device=f"{spec.disk_node}-dev",
                )
            )
        if spec.backup_disk is not None:
            disks.append(
                Disk(spec.backup_node, spec.backup_disk.size_mib * _MiB, spec.backup_disk.path)
            )
        return disks

    async def _serve(
        self,
        name: str,
        spec: MachineSpec,
        incoming: bool,
        *,
        task_status: anyio.abc.TaskStatus[Machine],
    ) -> None:
        qemu = SimulatedQemu(
            f"{name}.{next(self._ids)}",
            host=self.sim,
            migration=attrs.evolve(self.migration_model, ram_size=spec.ram_mib * _MiB),
            backup=self.backup_model,
            disks=self._disks(spec),
            incoming="defer" if incoming else None,
            start_paused=incoming,
            faults=None if self.faults is None else self.faults(name, incoming),
            # Every command takes a little time, as on a real QEMU.
            command_latency=self.command_latency,
        )
        machine: Machine | None = None
        failure: BaseException | None = None
        try:
            async with qemu:
                try:
                    stream = await qemu.add_monitor().connect_memory()
                    async with open_qmp_stream(stream, timeout=self._stop_timeout) as qmp:
                        machine = Machine(
                            name, self._name, spec, qmp, incoming=incoming, kill=qemu.kill
                        )
                        self._machines[machine] = qemu
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(_watch_exit, qemu, machine)
                            task_status.started(machine)
                            await machine._stop.wait()
                            await self._quit(qemu, machine)
                            tg.cancel_scope.cancel()
                except Exception as exc:
                    # One machine's failure is its own: it stops, and its
                    # host's other machines run on.
                    if machine is None:
                        failure = exc
                    else:
                        logging.getLogger("jobctl.qemu").warning(
                            "machine %r on host %r failed and is stopped: %r", name, self._name, exc
                        )
        finally:
            for path in self._sockets.pop(name, ()):
                path.unlink(missing_ok=True)
            if machine is not None:
                machine.exit_status = qemu.exit_status
                self._machines.pop(machine, None)
                machine._gone.set()
        if failure is not None:
            raise MachineStartError(
                f"simulated QEMU for machine {name!r} on host {self._name!r} did not start: "
                f"{failure}"
            ) from failure

    async def _quit(self, qemu: SimulatedQemu, machine: Machine) -> None:
        if qemu.exit_status is not None:
            return
        if machine.qmp.closed:  # nobody can ask it to quit
            qemu.kill()
            return
        with anyio.move_on_after(self._stop_timeout):
            with suppress(MonitorError):
                await machine.qmp.execute("quit")
            await qemu.wait_exited()
        qemu.kill()


async def _watch_exit(qemu: SimulatedQemu, machine: Machine) -> None:
    await qemu.wait_exited()
    machine._stop.set()


@asynccontextmanager
async def open_simulated_host(
    name: str = "host",
    *,
    sim: SimulatedHost | None = None,
    migration: MigrationModel | None = None,
    backup: BackupModel | None = None,
    command_latency: float = 0.0002,
    faults: FaultPolicy | None = None,
    stop_timeout: float = 5.0,
) -> AsyncIterator[SimulatedQemuHost]:
    """A host that runs simulated QEMU machines.

    Give two hosts the same ``sim`` (a :class:`simulators.qemu.SimulatedHost`
    with ``network=True``, the default when None) to migrate between them
    and to save to files. ``migration`` and ``backup`` are the simulator's
    timing models (a machine's RAM size comes from its spec). Every command
    takes ``command_latency`` seconds, as on a real QEMU (0: none; then a
    client that loops on commands never lets virtual time advance).
    ``faults`` picks each new machine's :class:`simulators.qemu.FaultPlan`.
    Leaving the block stops every machine.
    """
    if not command_latency >= 0:
        raise ValueError(f"command_latency must be >= 0, not {command_latency!r}")
    workdir = Path(tempfile.mkdtemp(prefix=f"jobctl-sim-{name}-"))
    try:
        async with unwrap_single(), anyio.create_task_group() as tg:
            host = SimulatedQemuHost(
                name,
                SimulatedHost(network=True) if sim is None else sim,
                workdir,
                tg,
                migration=migration or MigrationModel(),
                backup=backup or BackupModel(),
                command_latency=command_latency,
                faults=faults,
                stop_timeout=stop_timeout,
            )
            try:
                yield host
            finally:
                host._closing = True
                for machine in host.machines:
                    machine._stop.set()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
