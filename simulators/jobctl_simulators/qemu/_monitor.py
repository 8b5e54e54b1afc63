"""A QMP monitor (one ``-qmp`` option): one client at a time.

Like QEMU's socket chardev, a monitor accepts connections but serves one
client at a time: a second client connects and then waits, without even the
greeting, until the first one leaves. Clients come from real unix/TCP
listeners or from :meth:`QmpMonitor.connect_memory` (no socket).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, final

import anyio
from anyio.abc import ByteStream, Listener, TaskStatus

from ._errors import SimulatorError
from ._memory import MemoryByteStream, memory_stream_pair
from ._session import Connections, QmpSession, SessionVm

__all__ = ["MonitorVm", "QmpMonitor"]


class MonitorVm(SessionVm, Protocol):
    """What a monitor needs of its VM besides what its sessions do: the
    name, whether the process runs, and its tasks.
    (:class:`~jobctl_simulators.qemu.SimulatedQemu` is one.)"""

    @property
    def name(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None: ...

    async def start_task(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None: ...


async def _close(stream: ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()


def _remove_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


@final
class QmpMonitor:
    """One monitor of a :class:`~jobctl_simulators.qemu.SimulatedQemu`.

    Get it with ``vm.add_monitor()``. Every way in leads to the same
    one-client-at-a-time queue (FIFO).
    """

    def __init__(self, vm: MonitorVm, name: str, connections: Connections) -> None:
        self.vm = vm
        self.name = name
        self._vm_connections = connections
        self._lock = anyio.Lock()
        self._connections = 0
        #: Addresses this monitor listens on (``unix:PATH``, ``tcp:HOST:PORT``).
        self.addresses: list[str] = []

    @property
    def connections(self) -> int:
        """How many clients were served (or are being served) so far."""
        return self._connections

    async def connect_memory(self) -> MemoryByteStream:
        """A new client connection without a socket; returns the client's end.

        The greeting arrives once the monitor is free. Close the stream to
        leave; if the VM exits, the stream reaches EOF.
        """
        if not self.vm.alive:
            raise ConnectionRefusedError(f"simulated VM {self.vm.name!r} is not running")
        client, server = memory_stream_pair()
        try:
            await self.vm.start_task(self.serve, server)
        except BaseException:
            await _close(client)
            await _close(server)
            raise
        return client

    async def serve_unix(self, path: str | os.PathLike[str]) -> str:
        """Listen on a unix socket (replacing a stale socket file, as QEMU
        does) until the VM exits; return ``unix:PATH``."""
        path = os.fspath(path)
        _remove_stale_socket(path)
        listener = await anyio.create_unix_listener(path)
        address = f"unix:{path}"
        self.vm.spawn(self._accept, listener, path)
        self.addresses.append(address)
        return address

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on TCP until the VM exits; return the bound (host, port)."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
        bound = (str(sockname[0]), int(sockname[1]))
        self.vm.spawn(self._accept, listener, None)
        self.addresses.append(f"tcp:{bound[0]}:{bound[1]}")
        return bound

    async def _accept(self, listener: Listener[Any], unix_path: str | None) -> None:
        async def handle(stream: ByteStream) -> None:
            try:
                await self.vm.start_task(self.serve, stream)
            except SimulatorError:  # the VM is exiting: refuse
                await _close(stream)
            except BaseException:
                await _close(stream)
                raise

        try:
            async with listener:
                await listener.serve(handle)
        finally:
            if unix_path is not None:
                _remove_stale_socket(unix_path)

    async def serve(
        self, stream: ByteStream, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve one client stream when the monitor is free; close it after."""
        try:
            task_status.started()
            async with self._lock:
                self._connections += 1
                label = f"{self.vm.name}/{self.name}#{self._connections}"
                await QmpSession(self.vm, self._vm_connections, stream, label).run()
        finally:
            await _close(stream)
