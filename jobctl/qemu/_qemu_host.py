"""Real QEMU: ``qemu-system-x86_64`` processes (TCG, no display, QMP on a unix socket).

:class:`ProcessBackend` is the :class:`~jobctl.qemu.MachineBackend` of
:func:`open_qemu_host`. It binds a machine's QMP sockets itself and hands
QEMU the listening descriptors, so connecting never races QEMU's start-up.
A machine that is stopped and still runs after ``quit`` gets SIGTERM, then
SIGKILL, each after a bounded wait; its socket and RAM files are removed
whatever happened. Leaving :func:`open_qemu_host` stops every machine still
running and removes the host's working directory.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Final, final

import anyio
import anyio.abc
import anyio.to_thread

from jobctl._groups import unwrap_single
from jobctl.qemu._errors import MachineError, MachineStartError
from jobctl.qemu._host import QemuHost, open_host
from jobctl.qemu._machine import DiskImage, MachineSpec
from jobctl.qmp import QMPClient, open_qmp_unix

__all__ = ["ProcessBackend", "open_qemu_host"]

#: How much of a QEMU's standard error is kept for error messages.
_STDERR_TAIL: Final = 4096
_CHUNK: Final = 4 << 20
#: What a machine's name may bring into its file names.
_SAFE: Final = re.compile(r"[^A-Za-z0-9@._-]")
#: Free space a RAM file must leave on its file system.
_SPACE_MARGIN: Final = 256 << 20


def _write_random(file: BinaryIO, count: int) -> None:
    file.write(os.urandom(count))


async def _fill_random(path: Path, size: int) -> None:
    """Write ``size`` random bytes to the new file ``path``, a chunk at a
    time (cancellable between chunks)."""
    with path.open("xb") as file:
        remaining = size
        while remaining:
            count = min(_CHUNK, remaining)
            await anyio.to_thread.run_sync(_write_random, file, count)
            remaining -= count


def _check_space(directory: Path, needed: int) -> None:
    """Refuse a RAM file that would not fit (with a margin) on its file system."""
    free = shutil.disk_usage(directory).free
    if needed + _SPACE_MARGIN > free:
        raise MachineStartError(
            f"a RAM file of {needed >> 20} MiB does not fit in {directory} ({free >> 20} MiB free)"
        )


@final
class _Tail:
    """The last bytes of a stream."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    async def drain(self, stream: anyio.abc.ByteReceiveStream | None) -> None:
        if stream is None:
            return
        try:
            async for chunk in stream:
                self.data += chunk
                del self.data[:-_STDERR_TAIL]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def text(self) -> str:
        return self.data.decode(errors="replace").strip()


@final
class _QemuProcess:
    """One ``qemu-system-x86_64`` process of a :class:`ProcessBackend`
    (a :class:`~jobctl.qemu.RunningQemu`)."""

    __slots__ = ("_backend", "_name", "_process", "_sockets", "tail")

    def __init__(
        self, backend: ProcessBackend, name: str, process: anyio.abc.Process, sockets: list[Path]
    ) -> None:
        self._backend = backend
        self._name = name
        self._process = process
        self._sockets = sockets
        #: The end of its standard error.
        self.tail = _Tail()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def qmp_path(self) -> str:
        return str(self._sockets[0])

    @property
    def extra_monitors(self) -> tuple[str, ...]:
        return tuple(str(path) for path in self._sockets[1:])

    @property
    def exit_status(self) -> int | None:
        return self._process.returncode

    def open_qmp(self) -> AbstractAsyncContextManager[QMPClient]:
        return open_qmp_unix(self._sockets[0], timeout=self._backend.start_timeout)

    def kill(self) -> None:
        """SIGKILL, which ends even a stopped (SIGSTOP) process, unless the
        process is already gone. The host's task then sees it exit and the
        backend reaps it."""
        if self._process.returncode is None:
            with suppress(ProcessLookupError):
                self._process.kill()

    async def wait_exited(self) -> int:
        return await self._process.wait()

    def start_failure(self, failure: Exception) -> MachineStartError:
        why = self.tail.text() or f"{type(failure).__name__}: {failure}"
        return MachineStartError(
            f"{self._backend.binary} for machine {self._name!r} on host "
            f"{self._backend.host!r} did not start (exit status {self.exit_status}): {why}"
        )


@final
class ProcessBackend:
    """Runs each machine as a ``qemu-system-x86_64`` process (TCG, no
    display); a :class:`~jobctl.qemu.MachineBackend`, made by
    :func:`open_qemu_host`."""

    def __init__(
        self,
        host: str,
        binary: str,
        storage: Path,
        workdir: Path,
        *,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        #: The name of the host it runs machines for (in error messages).
        self.host = host
        #: The QEMU program's path.
        self.binary = binary
        #: Where disk images go.
        self.storage = storage
        #: Where machine sockets and RAM files go.
        self.workdir = workdir
        #: How long a machine's QMP greeting may take.
        self.start_timeout = start_timeout
        #: How long each step of ending a process (SIGTERM, then SIGKILL) may take.
        self.stop_timeout = stop_timeout
        self._ids = itertools.count(1)

    def incoming_uri(self, name: str) -> str:
        """``tcp:127.0.0.1:0`` for every machine: QEMU picks a free port,
        and ``query-migrate``'s ``socket-address`` tells which."""
        return "tcp:127.0.0.1:0"

    async def create_disk(
        self, name: str, size_mib: int | None, *, format: str, backing: DiskImage | None
    ) -> DiskImage:
        """``qemu-img create``, with the backing file's absolute path."""
        path = self.storage / f"{name}.{format}"
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise MachineError("qemu-img is not installed (apt-get install qemu-utils)")
        argv = _qemu_img_create(qemu_img, path, format, size_mib, backing)
        try:
            await anyio.run_process(argv, stdin=subprocess.DEVNULL)
        except subprocess.CalledProcessError as exc:
            why = exc.stderr.decode(errors="replace").strip()
            raise MachineError(f"qemu-img could not create {path}: {why}") from None
        return DiskImage(str(path), size_mib, format=format)

    @asynccontextmanager
    async def launch(
        self, name: str, spec: MachineSpec, *, incoming: bool
    ) -> AsyncIterator[_QemuProcess]:
        """Start ``qemu-system-x86_64`` for machine ``name`` (``-S -incoming
        defer`` when ``incoming``) with its QMP sockets and RAM file in
        :attr:`workdir`, named uniquely per launch.

        Raises :class:`MachineStartError` if the process cannot be spawned.
        Leaving the block ends the process if it still runs (SIGTERM, then
        SIGKILL if it has not exited within :attr:`stop_timeout`), reaps it
        and removes its sockets and RAM file, even when cancelled.
        """
        stem = f"{_SAFE.sub('_', name)}.{next(self._ids)}"
        ram = self.workdir / f"{stem}.ram"
        sockets = [self.workdir / f"{stem}.qmp{n}" for n in range(spec.extra_monitors + 1)]
        process: anyio.abc.Process | None = None
        try:
            if spec.random_ram:
                _check_space(self.workdir, spec.ram_mib << 20)
                if not incoming:
                    await _fill_random(ram, spec.ram_mib << 20)
            try:
                process = await self._spawn(spec, incoming, ram, sockets)
            except OSError as exc:
                raise MachineStartError(
                    f"cannot start {self.binary} for machine {name!r} on host {self.host!r}: {exc}"
                ) from exc
            qemu = _QemuProcess(self, name, process, sockets)
            async with unwrap_single(), anyio.create_task_group() as tg:
                tg.start_soon(qemu.tail.drain, process.stderr)
                try:
                    yield qemu
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._end(process)
        finally:
            with anyio.CancelScope(shield=True):
                if process is not None:
                    await self._reap(process)
                for path in (ram, *sockets):
                    path.unlink(missing_ok=True)

    def command_line(
        self,
        spec: MachineSpec,
        *,
        incoming: bool = False,
        monitor_fds: Sequence[int] | None = None,
        ram: str | os.PathLike[str] | None = None,
    ) -> list[str]:
        """The command line of a QEMU for ``spec``: what a machine's start
        runs, given the listening descriptors of its QMP sockets
        (``monitor_fds``: one for the machine's client, then one per extra
        monitor; by default 3, 4, ...) and its RAM file (``ram``; by default
        ``machine.ram`` in the host's working directory). Pure: it starts
        nothing and checks no file.

        In order: the fixed part (``-nodefaults``, no display, TCG on
        ``q35``), the RAM, the disks (``-blockdev``: a ``file`` node under a
        ``qcow2`` or ``raw`` one; a qcow2 image's backing chain is opened by
        QEMU from its header), ``-kernel`` / ``-initrd`` / ``-append``, the
        QMP monitors, ``-S -incoming defer`` when ``incoming``, then
        :attr:`MachineSpec.extra_args` as given.
        """
        count = spec.extra_monitors + 1
        fds = list(range(3, 3 + count)) if monitor_fds is None else list(monitor_fds)
        if len(fds) != count:
            raise ValueError(f"the spec has {count} QMP monitors, not {len(fds)}")
        path = self.workdir / "machine.ram" if ram is None else Path(ram)
        return self._argv(spec, fds[0], path, incoming, fds[1:])

    def _argv(
        self, spec: MachineSpec, qmp_fd: int, ram: Path, incoming: bool, extra: list[int]
    ) -> list[str]:
        machine = "q35,accel=tcg"
        argv = [self.binary, "-nodefaults", "-no-user-config", "-display", "none"]
        argv += ["-m", f"{spec.ram_mib}M"]
        if spec.random_ram:
            backend = {
                "qom-type": "memory-backend-file",
                "id": "ram",
                "size": spec.ram_mib << 20,
                "mem-path": str(ram),
                "share": True,
            }
            argv += ["-object", json.dumps(backend)]
            machine += ",memory-backend=ram"
        argv += ["-machine", machine]
        if spec.disk is not None:
            argv += _blockdev(spec.disk, spec.disk_node)
            argv += ["-device", f"virtio-blk-pci,drive={spec.disk_node},id={spec.disk_node}-dev"]
        if spec.backup_disk is not None:
            argv += _blockdev(spec.backup_disk, spec.backup_node)
        if spec.kernel is not None:
            argv += ["-kernel", spec.kernel]
        if spec.initrd is not None:
            argv += ["-initrd", spec.initrd]
        if spec.cmdline is not None:
            argv += ["-append", spec.cmdline]
        for index, fd in enumerate([qmp_fd, *extra]):
            argv += ["-chardev", f"socket,id=qmp{index},fd={fd},server=on,wait=off"]
            argv += ["-mon", f"chardev=qmp{index},mode=control"]
        if incoming:
            argv += ["-S", "-incoming", "defer"]
        argv += spec.extra_args
        return argv

    async def _spawn(
        self, spec: MachineSpec, incoming: bool, ram: Path, sockets: list[Path]
    ) -> anyio.abc.Process:
        listeners: list[socket.socket] = []
        try:
            for path in sockets:
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(listener)
                listener.bind(str(path))
                listener.listen(1)
            fds = [listener.fileno() for listener in listeners]
            argv = self._argv(spec, fds[0], ram, incoming, fds[1:])
            return await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=fds,
            )
        finally:
            # QEMU holds its own copies; ours must not keep the sockets alive.
            for listener in listeners:
                listener.close()

    async def _end(self, process: anyio.abc.Process) -> None:
        """Make sure the process is gone: SIGTERM, then SIGKILL."""
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(self.stop_timeout):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    async def _reap(self, process: anyio.abc.Process) -> None:
        """End the process and close its pipes."""
        await self._end(process)
        await process.aclose()


def _qemu_img_create(
    qemu_img: str, path: Path, image_format: str, size_mib: int | None, backing: DiskImage | None
) -> list[str]:
    argv = [qemu_img, "create", "-q", "-f", image_format]
    if backing is not None:
        # Absolute: qemu-img takes a relative name from the overlay's directory.
        argv += ["-b", os.path.abspath(backing.path), "-F", backing.format]
    argv.append(str(path))
    if size_mib is not None:
        argv.append(f"{size_mib}M")
    return argv


def _blockdev(disk: DiskImage, node: str) -> list[str]:
    """A format node ``node`` (qcow2 or raw) over a file node, in
    ``-blockdev``'s JSON syntax."""
    protocol = {"driver": "file", "filename": disk.path, "node-name": f"{node}-file"}
    image = {"driver": disk.format, "file": f"{node}-file", "node-name": node}
    return ["-blockdev", json.dumps(protocol), "-blockdev", json.dumps(image)]


@asynccontextmanager
async def open_qemu_host(
    name: str = "host",
    *,
    storage: str | os.PathLike[str] | None = None,
    binary: str = "qemu-system-x86_64",
    start_timeout: float = 10.0,
    stop_timeout: float = 5.0,
) -> AsyncIterator[QemuHost[ProcessBackend]]:
    """A host that runs real QEMU machines.

    ``storage`` is where disk images go (share it between two hosts to
    migrate between them); by default a temporary directory of this host.
    Machine sockets and RAM files live in a temporary working directory.
    ``start_timeout`` bounds a machine's start-up (its QMP greeting),
    ``stop_timeout`` each step of stopping it. Leaving the block stops every
    machine and removes the temporary directories.

    Raises :class:`MachineError` at once if ``binary`` is not installed.
    """
    path = shutil.which(binary)
    if path is None:
        raise MachineError(f"{binary} is not installed (apt-get install qemu-system-x86)")
    workdir = Path(tempfile.mkdtemp(prefix=f"jobctl-{name}-"))
    try:
        shared = workdir if storage is None else Path(storage)
        backend = ProcessBackend(
            name,
            path,
            shared,
            workdir,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        async with open_host(name, backend, stop_timeout=stop_timeout) as host:
            yield host
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
