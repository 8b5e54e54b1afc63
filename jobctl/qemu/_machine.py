"""Machines (running QEMUs, real or simulated) and the hosts that run them.

A :class:`Machine` is one QEMU and its QMP connection. A :class:`Host` starts
machines; real QEMU processes (:func:`~jobctl.qemu.open_qemu_host`) and
simulated ones (:func:`jobctl.testing.open_simulated_host`) look the same to
the job flows: both are a :class:`~jobctl.qemu.QemuHost`, over a different
backend. A host owns its machines: leaving its ``async with`` stops
every machine still running, so no QEMU outlives the block that started it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Final, Protocol, final

import anyio
import attrs

from jobctl.qemu._images import FORMATS, check_file, check_image
from jobctl.qmp import QMPClient

__all__ = ["DiskImage", "Host", "Machine", "MachineSpec"]

#: Options of QEMU's command line that the host manages itself, which
#: :attr:`MachineSpec.extra_args` may not carry, and why.
_REFUSED_ARGS: Final = {
    "-qmp": "the host makes the QMP monitors (ask for MachineSpec.extra_monitors)",
    "-qmp-pretty": "the host makes the QMP monitors (ask for MachineSpec.extra_monitors)",
    "-monitor": "the host makes the monitors (ask for MachineSpec.extra_monitors)",
    "-mon": "the host makes the monitors (ask for MachineSpec.extra_monitors)",
    "-incoming": "incoming migrations are the flows' (migrate, restore)",
    "-S": "the host decides whether a machine starts paused",
    "-preconfig": "the host decides whether a machine starts paused",
    "-daemonize": "the host watches its QEMU process",
    "-m": "use MachineSpec.ram_mib",
    "-machine": "the host sets the machine type, its accelerator and its memory backend",
    "-M": "the host sets the machine type, its accelerator and its memory backend",
    "-accel": "the host sets the machine type, its accelerator and its memory backend",
    "-kernel": "use MachineSpec.kernel",
    "-initrd": "use MachineSpec.initrd",
    "-append": "use MachineSpec.cmdline",
}


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (type(value) is int and value >= 1):
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _optional_positive(
    _: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and not (type(value) is int and value >= 1):
        raise ValueError(f"{attribute.name} must be a positive integer or None, not {value!r}")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (type(value) is int and value >= 0):
        raise ValueError(f"{attribute.name} must be an integer >= 0, not {value!r}")


def _fspath(value: str | os.PathLike[str]) -> str:
    """A path given as a string or a path object, as a string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value


def _optional_fspath(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else _fspath(value)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {value!r}")
    if "\0" in value:
        raise ValueError(f"{name} must not contain a NUL character: {value!r}")
    return value


def _path(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _text(attribute.name, value):
        raise ValueError(f"{attribute.name} must not be empty")


def _optional_path(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not _text(attribute.name, value):
        raise ValueError(f"{attribute.name} must not be empty")


def _optional_text(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        _text(attribute.name, value)


def _format(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in FORMATS:
        known = " or ".join(repr(name) for name in FORMATS)
        raise ValueError(f"{attribute.name} must be {known}, not {value!r}")


def _args(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise TypeError(f"extra_args must be a sequence of strings, not one string: {value!r}")
    return tuple(value)


def _extra_args(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for arg in value:
        _text("each of extra_args", arg)
        option = arg[1:] if arg.startswith("--") else arg
        why = _REFUSED_ARGS.get(option)
        if why is not None:
            raise ValueError(f"extra_args may not hold {arg!r}: {why}")


@final
@attrs.frozen
class DiskImage:
    """A disk image on the hosts' shared storage: the file at ``path`` (a
    string or a path object), in ``format`` ``"qcow2"`` (which may have a
    backing file, as ``qemu-img create -f qcow2 -b base -F raw overlay``
    makes) or ``"raw"``.

    ``size_mib`` is its virtual size when known (what
    :meth:`Host.create_disk` made); a simulated host reads it from the file
    when it is None. Nothing is checked on disk here: a host checks the
    file when a machine starts (:meth:`check`).
    """

    path: str = attrs.field(converter=_fspath, validator=_path)
    size_mib: int | None = attrs.field(default=None, validator=_optional_positive)
    format: str = attrs.field(default="qcow2", kw_only=True, validator=_format)

    def check(self, what: str = "disk") -> int:
        """Check the image as a host does before it starts a QEMU on it, and
        return its virtual size in bytes.

        The file must be a regular file this process can read and write; a
        qcow2 image must have a qcow2 header, and every file of its backing
        chain (relative names: from the image's directory) must be there and
        readable. Reads the images' headers only. Raises
        :class:`~jobctl.qemu.MachineSpecError` (its message starts with ``what``).
        """
        return check_image(self.path, self.format, what)


@final
@attrs.frozen
class MachineSpec:
    """What a machine looks like; a migration starts its destination with the
    source's spec.

    ``ram_mib`` of RAM; with ``random_ram`` a real QEMU's RAM is a file of
    random bytes, so that a migration moves real data (RAM of zeros migrates
    in milliseconds). ``disk`` is the guest's disk, attached as block node
    ``disk_node`` on a virtio disk (shared storage: both ends of a migration
    open the same image; a qcow2 image's backing chain comes with it).
    ``backup_disk`` is attached as a bare node ``backup_node``, for backups to
    write to (see :func:`~jobctl.qemu.backup`).

    ``kernel``, ``initrd`` and ``cmdline`` boot a Linux kernel directly
    (QEMU's ``-kernel``, ``-initrd`` and ``-append``); ``initrd`` and
    ``cmdline`` need ``kernel``.

    ``extra_monitors`` more QMP monitors beside the one the machine's client
    uses, for outside clients (a tool, a second process): their unix socket
    paths are in :attr:`Machine.extra_monitors`, on real and simulated hosts.

    ``extra_args`` is the escape hatch: arguments appended, as given, to a
    real QEMU's command line (``("-smp", "2", "-device", "virtio-rng-pci")``;
    see :meth:`~jobctl.qemu.ProcessBackend.command_line`). What the host
    manages itself is refused when the spec is made (``-qmp``, ``-monitor``,
    ``-mon``, ``-incoming``, ``-S``, ``-daemonize``, ``-m``, ``-machine``,
    ``-accel``, ``-kernel``...); anything else that clashes
    (an id the host uses: ``qmp0``, ``ram``, ``disk0``) QEMU itself refuses,
    and the start fails with :class:`~jobctl.qemu.MachineStartError` with
    QEMU's message. A simulated host keeps them, and runs no kernel.

    Values of the wrong type or out of range raise :class:`TypeError` or
    :class:`ValueError` here; files are checked by the host when a machine
    starts (:meth:`check_files`), before any QEMU starts.
    """

    ram_mib: int = attrs.field(default=64, validator=_positive)
    random_ram: bool = True
    disk: DiskImage | None = None
    disk_node: str = "disk0"
    backup_disk: DiskImage | None = None
    backup_node: str = "backup0"
    extra_monitors: int = attrs.field(default=0, validator=_count)
    kernel: str | None = attrs.field(
        default=None, converter=_optional_fspath, validator=_optional_path
    )
    initrd: str | None = attrs.field(
        default=None, converter=_optional_fspath, validator=_optional_path
    )
    cmdline: str | None = attrs.field(default=None, validator=_optional_text)
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=_args, validator=_extra_args)

    def __attrs_post_init__(self) -> None:
        for name, image in (("disk", self.disk), ("backup_disk", self.backup_disk)):
            if image is not None and not isinstance(image, DiskImage):
                raise TypeError(f"{name} must be a DiskImage, not {image!r}")
        if self.kernel is None:
            for name, option in (("initrd", "-initrd"), ("cmdline", "-append")):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs a kernel (QEMU's {option} needs -kernel)")

    def check_files(self) -> None:
        """Check every file the spec names, as a host does before it starts
        a QEMU: the disks (see :meth:`DiskImage.check`), the kernel and the
        initrd (regular files this process can read). Raises
        :class:`~jobctl.qemu.MachineSpecError` naming the field and the file."""
        for name, image in (("disk", self.disk), ("backup_disk", self.backup_disk)):
            if image is not None:
                image.check(f"MachineSpec.{name}")
        for name, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if path is not None:
                check_file(path, f"MachineSpec.{name}")


@final
class Machine:
    """A running QEMU and its QMP client.

    ``qmp`` is a :class:`jobctl.Monitor`: give it to a domain, which then
    runs every command through its jobs. It is usable until the machine
    stops. ``incoming`` machines were started waiting for a migration
    (paused until told to continue). ``qmp_path`` is the unix socket of the
    monitor ``qmp`` talks to (None when it is not a socket, as for simulated
    machines): a manager that restarts reaches the machine there once ``qmp``
    is closed (see :class:`~jobctl.qemu.QemuRecovery`). :attr:`extra_monitors`
    are the unix sockets of its other QMP monitors (as many as
    :attr:`MachineSpec.extra_monitors` asked), where a client of its own (in
    this process or another) can attach while ``qmp`` is in use; they are
    gone once the machine stops. ``kill`` is how its host kills the process
    at once (see :meth:`kill`).
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
        <jobctl_simulators.qemu.SimulatedQemu.kill>`. Either way its QMP connection
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

    async def create_disk(
        self,
        name: str,
        size_mib: int | None = None,
        *,
        format: str = "qcow2",
        backing: DiskImage | None = None,
    ) -> DiskImage:
        """Create an image named ``name`` on the host's storage (for
        :attr:`MachineSpec.disk` or a backup target), replacing a file of that
        name: an empty one of ``size_mib`` MiB in ``format`` (``"qcow2"`` or
        ``"raw"``), or a qcow2 overlay over ``backing`` (``qemu-img create -f
        qcow2 -b backing -F its-format``; as large as ``backing`` unless
        ``size_mib`` says). Raises :class:`ValueError` for a bad combination
        (no size and no backing, a raw overlay), :class:`MachineSpecError`
        if ``backing`` is not a usable image (see :meth:`DiskImage.check`)."""
        ...

    async def start_machine(
        self, name: str, spec: MachineSpec, *, incoming: bool = False
    ) -> Machine:
        """Start a machine (paused, waiting for a migration, when ``incoming``)
        and connect to its QMP monitor. Raises :class:`MachineSpecError`
        before any QEMU starts if a file of ``spec`` is not usable (see
        :meth:`MachineSpec.check_files`), :class:`MachineStartError` if the
        QEMU did not come up."""
        ...
