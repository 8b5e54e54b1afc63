"""One host of QEMU machines, over a backend that starts them (real or simulated).

A :class:`QemuHost` does what every host does: it checks a machine's spec
and files (and a new disk's) before any QEMU starts, so every backend refuses
the same specs with the same errors; it names and keeps its machines, runs
each in a task of its own task group, connects to the
machine's QMP monitor, watches it exit and stops it (``quit``, then the
backend ends it). One machine's failure is its own: the machine is stopped
and logged, and the host's other machines run on. Leaving
:func:`open_host` stops every machine still running.

What differs between real QEMU processes (:func:`~jobctl.qemu.open_qemu_host`)
and simulated ones (:func:`jobctl.testing.open_simulated_host`) is the
:class:`MachineBackend`: how a machine's QEMU is started and ended (a
:class:`RunningQemu`), and how a disk is created.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Final, Generic, Protocol, TypeVar, final

import anyio
import anyio.abc

from jobctl._groups import unwrap_single
from jobctl.qemu._errors import MachineError, MachineStartError
from jobctl.qemu._images import FORMATS
from jobctl.qemu._machine import DiskImage, Machine, MachineSpec
from jobctl.qmp import QMPClient, QMPError

__all__ = ["MachineBackend", "QemuHost", "RunningQemu", "open_host"]

_log = logging.getLogger("jobctl.qemu")
_MiB: Final = 1 << 20


class RunningQemu(Protocol):
    """One QEMU a :class:`MachineBackend` started for a machine: what its
    host needs to reach it, watch it and kill it."""

    @property
    def pid(self) -> int | None:
        """Its process id (:attr:`Machine.pid`); None if it is no process."""
        ...

    @property
    def qmp_path(self) -> str | None:
        """The unix socket :meth:`open_qmp` connects to (:attr:`Machine.qmp_path`);
        None if it is no socket."""
        ...

    @property
    def extra_monitors(self) -> tuple[str, ...]:
        """Socket paths of its other QMP monitors (:attr:`Machine.extra_monitors`)."""
        ...

    @property
    def exit_status(self) -> int | None:
        """None while it runs; then its exit status (negative: killed by that signal)."""
        ...

    def open_qmp(self) -> AbstractAsyncContextManager[QMPClient]:
        """A QMP client on its monitor, greeted and negotiated (within the
        backend's start-up timeout). Leaving the block closes the client."""
        ...

    def kill(self) -> None:
        """End it at once without asking it anything (SIGKILL), and return
        without waiting. Does nothing once it is gone."""
        ...

    async def wait_exited(self) -> object:
        """Return once it is gone."""
        ...

    def start_failure(self, failure: Exception) -> MachineStartError:
        """The error to raise when :meth:`open_qmp` failed with ``failure``;
        asked once the QEMU is gone, so it can tell its exit status and last words."""
        ...


class MachineBackend(Protocol):
    """What a :class:`QemuHost`'s machines run on: real processes or simulated QEMU."""

    def incoming_uri(self, name: str) -> str:
        """See :meth:`Host.incoming_uri`."""
        ...

    async def create_disk(
        self, name: str, size_mib: int | None, *, format: str, backing: DiskImage | None
    ) -> DiskImage:
        """Create image ``name``: an empty one of ``size_mib`` (at least 1)
        MiB in ``format``, or a qcow2 overlay over ``backing`` (as large as
        ``backing`` when ``size_mib`` is None). The host checked the values
        and ``backing``'s file (:meth:`DiskImage.check`)."""
        ...

    def launch(
        self, name: str, spec: MachineSpec, *, incoming: bool
    ) -> AbstractAsyncContextManager[RunningQemu]:
        """Start the QEMU of machine ``name`` (paused, waiting for a
        migration, when ``incoming``).

        The host checked the spec's files (:meth:`MachineSpec.check_files`)
        just before. Raises :class:`MachineStartError` if it cannot be started. Leaving
        the block makes sure the QEMU is gone (it is ended if it still runs,
        in bounded time) and removes its files, even when cancelled.
        """
        ...


B = TypeVar("B", bound=MachineBackend)


@final
class QemuHost(Generic[B]):
    """A :class:`Host` whose machines run on :attr:`backend`; get one from
    :func:`~jobctl.qemu.open_qemu_host` (real QEMU) or
    :func:`jobctl.testing.open_simulated_host` (simulated).

    Each machine runs in a task of the host's task group until it is stopped
    or exits. A machine that fails (its QMP connection breaks, its QEMU
    dies) is stopped and logged; the host and its other machines go on.
    """

    def __init__(
        self, name: str, backend: B, task_group: anyio.abc.TaskGroup, *, stop_timeout: float
    ) -> None:
        self._name = name
        #: What the machines run on (the simulated backend's models and
        #: faults can be changed between steps of a test).
        self.backend = backend
        self._task_group = task_group
        self._stop_timeout = stop_timeout
        self._machines: set[Machine] = set()
        self._closing = False

    @property
    def name(self) -> str:
        """The host's name (it shows in machine and domain names and in the
        host's errors).
        """
        return self._name

    def incoming_uri(self, name: str) -> str:
        """The URI machine ``name``'s incoming migration listens on, as its
        :attr:`backend` picks it (see :meth:`Host.incoming_uri`).
        """
        return self.backend.incoming_uri(name)

    @property
    def machines(self) -> tuple[Machine, ...]:
        """The machines running now."""
        return tuple(self._machines)

    async def create_disk(
        self,
        name: str,
        size_mib: int | None = None,
        *,
        format: str = "qcow2",
        backing: DiskImage | None = None,
    ) -> DiskImage:
        """Create an image named ``name`` on the host's storage, replacing a
        file of that name: an empty one of ``size_mib`` MiB in ``format``, or
        a qcow2 overlay over ``backing`` (as large as it unless ``size_mib``
        says).

        Every host checks the same way before its backend runs: ``ValueError``
        for a bad combination (no size and no backing, a raw overlay, a size
        under 1 MiB, an unknown format), :class:`MachineSpecError` if
        ``backing`` is not a usable image (see :meth:`DiskImage.check`).
        """
        if size_mib is not None and not (type(size_mib) is int and size_mib >= 1):
            raise ValueError(f"a disk needs at least 1 MiB, not {size_mib!r}")
        if format not in FORMATS:
            known = " or ".join(repr(name) for name in FORMATS)
            raise ValueError(f"a disk's format is {known}, not {format!r}")
        if backing is not None:
            if not isinstance(backing, DiskImage):
                raise TypeError(f"backing must be a DiskImage, not {backing!r}")
            if format != "qcow2":
                raise ValueError(f"only a qcow2 image has a backing file, not a {format} one")
            size = backing.check("the backing image")
            if size_mib is None and size % _MiB == 0:
                size_mib = size // _MiB
        elif size_mib is None:
            raise ValueError("a disk needs a size (size_mib) or a backing image")
        return await self.backend.create_disk(name, size_mib, format=format, backing=backing)

    async def start_machine(
        self, name: str, spec: MachineSpec, *, incoming: bool = False
    ) -> Machine:
        """Start a machine in a task of the host's task group (paused, waiting
        for a migration, when ``incoming``) and return it once its QMP monitor
        is connected.

        Raises :class:`MachineSpecError` before any QEMU starts if a file of
        ``spec`` is not usable (:meth:`MachineSpec.check_files`),
        :class:`MachineStartError` if the QEMU did not come up, and
        :class:`MachineError` once the host is shutting down.
        """
        if self._closing:
            raise MachineError(f"host {self._name!r} is shutting down")
        # Here, not in the backends: every host refuses the same specs the
        # same way, before any QEMU starts. Header reads only: quick enough
        # for the event loop (and no thread for a virtual clock to jump over).
        spec.check_files()
        machine: Machine = await self._task_group.start(self._serve, name, spec, incoming)
        return machine

    def _stop_all(self) -> None:
        self._closing = True
        for machine in self.machines:
            machine._stop.set()

    # -- one machine's life ------------------------------------------------------

    async def _serve(
        self,
        name: str,
        spec: MachineSpec,
        incoming: bool,
        *,
        task_status: anyio.abc.TaskStatus[Machine],
    ) -> None:
        machine: Machine | None = None
        failure: Exception | None = None
        qemu: RunningQemu | None = None
        try:
            async with self.backend.launch(name, spec, incoming=incoming) as qemu:
                try:
                    async with qemu.open_qmp() as qmp:
                        machine = Machine(
                            name,
                            self._name,
                            spec,
                            qmp,
                            incoming=incoming,
                            pid=qemu.pid,
                            extra_monitors=qemu.extra_monitors,
                            qmp_path=qemu.qmp_path,
                            kill=qemu.kill,
                        )
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(_watch_exit, qemu, machine)
                            self._machines.add(machine)
                            task_status.started(machine)
                            await machine._stop.wait()
                            await self._quit(qemu, qmp)
                            tg.cancel_scope.cancel()
                except Exception as exc:
                    # One machine's failure is its own: it stops, and its
                    # host's other machines run on.
                    if machine is None:
                        failure = exc
                    else:
                        _log.warning(
                            "machine %r on host %r failed and is stopped: %r", name, self._name, exc
                        )
        finally:
            if machine is not None:
                assert qemu is not None
                machine.exit_status = qemu.exit_status
                self._machines.discard(machine)
                machine._gone.set()
        if failure is not None:
            assert qemu is not None
            raise qemu.start_failure(failure) from failure

    async def _quit(self, qemu: RunningQemu, qmp: QMPClient) -> None:
        """Ask the QEMU to quit and wait for it, within the stop timeout
        (the backend ends it if it is still there)."""
        if qemu.exit_status is not None or qmp.closed:  # gone, or nobody can ask it
            return
        with anyio.move_on_after(self._stop_timeout):
            with suppress(QMPError):
                await qmp.execute("quit")
            await qemu.wait_exited()


async def _watch_exit(qemu: RunningQemu, machine: Machine) -> None:
    await qemu.wait_exited()
    machine.exit_status = qemu.exit_status
    machine._stop.set()


@asynccontextmanager
async def open_host(name: str, backend: B, *, stop_timeout: float) -> AsyncIterator[QemuHost[B]]:
    """A host named ``name`` whose machines run on ``backend``.

    Stopping a machine asks its QEMU to ``quit`` and waits ``stop_timeout``
    seconds before the backend ends it. Leaving the block stops every machine
    still running and returns once all are gone.
    """
    async with unwrap_single(), anyio.create_task_group() as tg:
        host = QemuHost(name, backend, tg, stop_timeout=stop_timeout)
        try:
            yield host
        finally:
            host._stop_all()
