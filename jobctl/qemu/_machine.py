"""Machines (running QEMUs, real or simulated) and the hosts that run them.

A :class:`Machine` is one QEMU and its QMP connection. A :class:`Host` starts
machines; real QEMU processes (:func:`~jobctl.qemu.open_qemu_host`) and
simulated ones (:func:`jobctl.testing.open_simulated_host`) look the same to
the job flows: both are a :class:`~jobctl.qemu.QemuHost`, over a different
backend. A host owns its machines: leaving its ``async with`` stops
every machine still running, so no QEMU outlives the block that started it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, final

import anyio
import attrs

from jobctl.qmp import QMPClient

__all__ = ["DiskImage", "Host", "Machine", "MachineSpec"]


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


@final
@attrs.frozen
class DiskImage:
    """A qcow2 image on the hosts' shared storage (see :meth:`Host.create_disk`)."""

    path: str
    size_mib: int = attrs.field(validator=_positive)


@final
@attrs.frozen
class MachineSpec:
    """What a machine looks like; a migration starts its destination with the
    source's spec.

    ``ram_mib`` of RAM; with ``random_ram`` a real QEMU's RAM is a file of
    random bytes, so that a migration moves real data (RAM of zeros migrates
    in milliseconds). ``disk`` is the guest's disk, attached as block node
    ``disk_node`` (shared storage: both ends of a migration open the same
    image). ``backup_disk`` is attached as a bare node ``backup_node``, for
    backups to write to (see :func:`~jobctl.qemu.backup`).
    """

    ram_mib: int = attrs.field(default=64, validator=_positive)
    random_ram: bool = True
    disk: DiskImage | None = None
    disk_node: str = "disk0"
    backup_disk: DiskImage | None = None
    backup_node: str = "backup0"
    #: More QMP monitors beside the one the machine's client uses (real QEMU
    #: only), for outside clients: their socket paths are in
    #: :attr:`Machine.extra_monitors`.
    extra_monitors: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@final
class Machine:
    """A running QEMU and its QMP client.

    ``qmp`` is a :class:`jobctl.Monitor`: give it to a domain, which then
    runs every command through its jobs. It is usable until the machine
    stops. ``incoming`` machines were started waiting for a migration
    (paused until told to continue). ``qmp_path`` is the unix socket of the
    monitor ``qmp`` talks to (None when it is not a socket, as for simulated
    machines): a manager that restarts reaches the machine there once ``qmp``
    is closed (see :class:`~jobctl.qemu.QemuRecovery`). ``kill`` is how its
    host kills the process at once (see :meth:`kill`).
    """

    __slots__ = (
        "_gone",
        "_kill",
        "_stop",
        "exit_status",
        "extra_monitors",
        "host",
        "incoming",
        "name",
        "pid",
        "qmp",
        "qmp_path",
        "spec",
    )

    def __init__(
        self,
        name: str,
        host: str,
        spec: MachineSpec,
        qmp: QMPClient,
        *,
        incoming: bool,
        pid: int | None = None,
        extra_monitors: tuple[str, ...] = (),
        qmp_path: str | None = None,
        kill: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.spec = spec
        self.qmp = qmp
        self.incoming = incoming
        self.pid = pid
        self.qmp_path = qmp_path
        #: Socket paths of the machine's other QMP monitors (see
        #: :attr:`MachineSpec.extra_monitors`).
        self.extra_monitors = extra_monitors
        #: The QEMU's exit status once it exited (``None`` while it runs;
        #: negative: killed by that signal).
        self.exit_status: int | None = None
        self._kill = kill
        self._stop = anyio.Event()
        self._gone = anyio.Event()

    @property
    def stopped(self) -> bool:
        """Whether the machine is gone (stopped, or exited on its own)."""
        return self._gone.is_set()

    async def stop(self) -> None:
        """Stop the machine and return once it is gone.

        QEMU is asked to quit, then terminated, then killed, each after a
        bounded wait; its files are removed. Idempotent. If the caller is
        cancelled, the machine still stops (its host finishes the job).
        """
        self._stop.set()
        await self._gone.wait()

    def kill(self) -> None:
        """Kill the machine's process now, without asking it anything, and
        return at once; :meth:`wait_stopped` returns once it is gone (reaped).

        A real QEMU gets SIGKILL, which ends even a stopped (SIGSTOP) or hung
        process; a simulated one dies as on :meth:`SimulatedQemu.kill
        <simulators.qemu.SimulatedQemu.kill>`. Either way its QMP connection
        closes, so every command in flight fails with
        :class:`jobctl.qmp.QMPClosedError`. Nothing is awaited, so a caller
        can kill and then begin a job with no task switch between the two.
        A machine whose host gave no way to kill it is asked to stop
        (:meth:`stop`). Does nothing once the machine is gone.
        """
        if self._gone.is_set():
            return
        if self._kill is None:
            self._stop.set()
        else:
            self._kill()

    async def wait_stopped(self) -> None:
        """Wait until the machine is gone, without asking it to stop."""
        await self._gone.wait()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"<Machine {self.name!r} on {self.host!r} ({state})>"


class Host(Protocol):
    """Where machines run. Both real and simulated hosts implement this."""

    @property
    def name(self) -> str:
        """The host's name (it shows in machine and domain names)."""
        ...

    def incoming_uri(self, name: str) -> str:
        """The URI machine ``name``'s incoming migration listens on
        (``migrate-incoming``). It may end in port 0: QEMU then picks the
        port, and ``query-migrate`` tells which."""
        ...

    async def create_disk(self, name: str, size_mib: int) -> DiskImage:
        """Create an empty qcow2 image on the host's storage (for
        :attr:`MachineSpec.disk` or a backup target)."""
        ...

    async def start_machine(
        self, name: str, spec: MachineSpec, *, incoming: bool = False
    ) -> Machine:
        """Start a machine (paused, waiting for a migration, when ``incoming``)
        and connect to its QMP monitor. Raises :class:`MachineStartError`."""
        ...
