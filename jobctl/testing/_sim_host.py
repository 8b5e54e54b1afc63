"""Simulated QEMU (:mod:`jobctl_simulators.qemu`): machines that run in this process.

:class:`SimulatedBackend` is the :class:`~jobctl.qemu.MachineBackend` of
:func:`open_simulated_host`: each machine is a
:class:`jobctl_simulators.qemu.SimulatedQemu`, reached through an in-memory
stream, so flows run in virtual time under trio's ``MockClock``. Hosts that
share one :class:`jobctl_simulators.qemu.SimulatedHost` (the simulated network,
with its concurrency detector) can migrate between each other.

It takes the specs a real host takes and refuses the same ones, with the
same errors (the host checks them, whatever its backend): its disks are real
files (empty qcow2 or sparse raw images, overlays with their backing file),
its extra QMP monitors are real unix sockets. What it cannot do it records:
it boots no kernel and runs no extra QEMU arguments, and :attr:`SimulatedBackend.launches`
says what it was asked.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._groups import unwrap_single
from jobctl.qemu._errors import MachineStartError
from jobctl.qemu._host import QemuHost, open_host
from jobctl.qemu._images import write_empty_qcow2
from jobctl.qemu._machine import DiskImage, Machine, MachineSpec
from jobctl.qmp import QMPClient, open_qmp_stream
from jobctl_simulators.qemu import (
    BackupModel,
    Disk,
    FaultPlan,
    MigrationModel,
    SimulatedHost,
    SimulatedQemu,
    SimulatorError,
)

__all__ = ["FaultPolicy", "SimulatedBackend", "open_simulated_host"]

#: Which faults a new machine suffers: called with the machine's name and
#: whether it is incoming; None for none.
FaultPolicy = Callable[[str, bool], FaultPlan | None]

_MiB: Final = 1 << 20
#: How many launches a :class:`SimulatedBackend` remembers.
LAUNCHES_KEPT: Final = 256

#: Numbers the simulated QEMUs of every backend in this process: the hosts
#: that share a simulated network register their QEMUs in it by name, so
#: one VM name on two hosts (a migration's two ends) must give two names,
#: as two real QEMU processes are two processes whatever the VM is called.
_QEMU_IDS: Final = itertools.count(1)


@final
class _SimulatedProcess:
    """One :class:`~jobctl_simulators.qemu.SimulatedQemu` of a :class:`SimulatedBackend`
    (a :class:`~jobctl.qemu.RunningQemu`)."""

    __slots__ = ("_backend", "_name", "extra_monitors", "qemu")

    pid = None
    qmp_path = None

    def __init__(
        self,
        backend: SimulatedBackend,
        name: str,
        qemu: SimulatedQemu,
        extra_monitors: tuple[str, ...],
    ) -> None:
        self._backend = backend
        self._name = name
        self.qemu = qemu
        #: The unix sockets its extra monitors serve on.
        self.extra_monitors = extra_monitors

    @property
    def exit_status(self) -> int | None:
        return self.qemu.exit_status

    @asynccontextmanager
    async def open_qmp(self) -> AsyncIterator[QMPClient]:
        stream = await self.qemu.add_monitor().connect_memory()
        async with open_qmp_stream(stream, timeout=self._backend.connect_timeout) as qmp:
            self._backend._qemus[qmp] = self.qemu
            try:
                yield qmp
            finally:
                del self._backend._qemus[qmp]

    def kill(self) -> None:
        self.qemu.kill()

    async def wait_exited(self) -> int:
        return await self.qemu.wait_exited()

    def start_failure(self, failure: Exception) -> MachineStartError:
        return MachineStartError(
            f"simulated QEMU for machine {self._name!r} on host {self._backend.host!r} "
            f"did not start: {failure}"
        )


@final
class SimulatedBackend:
    """Runs each machine as a :class:`jobctl_simulators.qemu.SimulatedQemu`; a
    :class:`~jobctl.qemu.MachineBackend`, made by :func:`open_simulated_host`.

    Its models and :attr:`faults` apply to the machines started after a
    change (tests change them between steps).
    """

    def __init__(
        self,
        host: str,
        sim: SimulatedHost,
        workdir: Path,
        *,
        migration: MigrationModel,
        backup: BackupModel,
        command_latency: float,
        faults: FaultPolicy | None,
        connect_timeout: float,
    ) -> None:
        #: The name of the host it runs machines for (in error messages).
        self.host = host
        #: The simulated network these machines live in.
        self.sim = sim
        #: Where the incoming migrations' sockets go.
        self.workdir = workdir
        self.migration_model = migration
        self.backup_model = backup
        self.command_latency = command_latency
        #: Which faults new machines suffer.
        self.faults = faults
        #: How long a machine's QMP greeting may take.
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._qemus: dict[QMPClient, SimulatedQemu] = {}
        self._sockets: dict[str, list[Path]] = {}
        #: The QEMUs it started, oldest first (the last :data:`LAUNCHES_KEPT`):
        #: (machine name, spec, incoming). The spec is what a real host would
        #: have run (kernel, initrd, command line and extra arguments
        #: included; see :meth:`jobctl.qemu.ProcessBackend.command_line`).
        self.launches: deque[tuple[str, MachineSpec, bool]] = deque(maxlen=LAUNCHES_KEPT)

    def qemu(self, machine: Machine) -> SimulatedQemu:
        """The simulated QEMU behind ``machine`` (to inject faults, kill it...)."""
        try:
            return self._qemus[machine.qmp]
        except KeyError:
            raise LookupError(f"{machine!r} is not running on host {self.host!r}") from None

    def incoming_uri(self, name: str) -> str:
        """A ``unix:`` URI in :attr:`workdir`, new on every call (the
        simulated network keys listeners by URI, so two incoming machines
        never collide); its socket file is removed when the machine stops."""
        path = self.workdir / f"{name}.{next(_QEMU_IDS)}.migrate"
        self._sockets.setdefault(name, []).append(path)
        return f"unix:{path}"

    async def create_disk(
        self, name: str, size_mib: int | None, *, format: str, backing: DiskImage | None
    ) -> DiskImage:
        """A real image file in the backend's working directory: an empty
        qcow2 one (as ``qemu-img create`` writes it, over ``backing`` if
        given) or a sparse raw one."""
        await anyio.lowlevel.checkpoint()
        path = self.workdir / f"{name}.{format}"
        if size_mib is not None:
            size = size_mib * _MiB
        else:
            assert backing is not None  # the host refuses neither
            size = backing.check("the backing image")
        # A few hundred bytes (the rest is sparse): no thread needed.
        _write_image(path, format, size, backing)
        return DiskImage(str(path), size_mib, format=format)

    @asynccontextmanager
    async def launch(
        self, name: str, spec: MachineSpec, *, incoming: bool
    ) -> AsyncIterator[_SimulatedProcess]:
        """Start a :class:`~jobctl_simulators.qemu.SimulatedQemu` for machine
        ``name`` (``-incoming defer``, paused, when ``incoming``) with the
        backend's current models, latency and faults, its extra monitors on
        unix sockets in :attr:`workdir`, and record it in :attr:`launches`.

        Raises :class:`MachineStartError` if the simulator refuses to start
        it or a monitor socket cannot be served. Leaving the block kills the
        simulated QEMU if it still runs and removes its socket files, even
        when cancelled.
        """
        stem = f"{name}.{next(_QEMU_IDS)}"
        qemu = SimulatedQemu(
            stem,
            host=self.sim,
            migration=attrs.evolve(self.migration_model, ram_size=spec.ram_mib * _MiB),
            backup=self.backup_model,
            disks=_disks(spec),
            incoming="defer" if incoming else None,
            start_paused=incoming,
            faults=None if self.faults is None else self.faults(name, incoming),
            # Every command takes a little time, as on a real QEMU.
            command_latency=self.command_latency,
        )
        monitors = [self.workdir / f"{stem}.qmp{n}" for n in range(1, spec.extra_monitors + 1)]
        started = False
        try:
            # Leaving it kills the QEMU if it still runs.
            async with unwrap_single(), qemu:
                started = True
                for path in monitors:
                    try:
                        await qemu.add_monitor().serve_unix(path)
                    except OSError as exc:  # as a real host's bind would fail
                        raise MachineStartError(
                            f"simulated QEMU for machine {name!r} on host {self.host!r}: "
                            f"cannot serve a monitor on {str(path)!r}: {exc}"
                        ) from exc
                self.launches.append((name, spec, incoming))
                yield _SimulatedProcess(self, name, qemu, tuple(map(str, monitors)))
        except (ValueError, LookupError, SimulatorError) as exc:
            if started:
                raise
            # The simulator refused to start it (its network, say): the
            # error a real host raises for a QEMU that does not start.
            raise MachineStartError(
                f"simulated QEMU for machine {name!r} on host {self.host!r} did not start: {exc}"
            ) from exc
        finally:
            for path in (*self._sockets.pop(name, ()), *monitors):
                path.unlink(missing_ok=True)


def _write_image(path: Path, image_format: str, size: int, backing: DiskImage | None) -> None:
    if image_format == "raw":
        with path.open("wb") as file:
            file.truncate(size)
    elif backing is None:
        write_empty_qcow2(str(path), size)
    else:
        base = os.path.abspath(backing.path)
        write_empty_qcow2(str(path), size, backing=base, backing_format=backing.format)


def _disks(spec: MachineSpec) -> list[Disk]:
    disks = []
    if spec.disk is not None:
        disks.append(_disk(spec.disk, spec.disk_node, device=f"{spec.disk_node}-dev"))
    if spec.backup_disk is not None:
        disks.append(_disk(spec.backup_disk, spec.backup_node, device=None))
    return disks


def _disk(image: DiskImage, node: str, *, device: str | None) -> Disk:
    """The simulated block node of ``image``, as large as the image says
    (its file's header, when :attr:`DiskImage.size_mib` is None)."""
    size = image.check() if image.size_mib is None else image.size_mib * _MiB
    # The simulator has no empty disk; QEMU takes one (an empty raw file).
    return Disk(node, max(size, 1), image.path, format=image.format, device=device)


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
) -> AsyncIterator[QemuHost[SimulatedBackend]]:
    """A host that runs simulated QEMU machines.

    Give two hosts the same ``sim`` (a :class:`jobctl_simulators.qemu.SimulatedHost`
    with ``network=True``, the default when None) to migrate between them
    and to save to files. ``migration`` and ``backup`` are the simulator's
    timing models (a machine's RAM size comes from its spec). Every command
    takes ``command_latency`` seconds, as on a real QEMU (0: none; then a
    client that loops on commands never lets virtual time advance).
    ``faults`` picks each new machine's :class:`jobctl_simulators.qemu.FaultPlan`.
    ``stop_timeout`` bounds a machine's QMP greeting and its ``quit``.
    The host's :attr:`~jobctl.qemu.QemuHost.backend` holds these settings.
    Leaving the block stops every machine.
    """
    if not command_latency >= 0:
        raise ValueError(f"command_latency must be >= 0, not {command_latency!r}")
    workdir = Path(tempfile.mkdtemp(prefix=f"jobctl-sim-{name}-"))
    try:
        backend = SimulatedBackend(
            name,
            SimulatedHost(network=True) if sim is None else sim,
            workdir,
            migration=migration or MigrationModel(),
            backup=backup or BackupModel(),
            command_latency=command_latency,
            faults=faults,
            connect_timeout=stop_timeout,
        )
        async with open_host(name, backend, stop_timeout=stop_timeout) as host:
            yield host
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
