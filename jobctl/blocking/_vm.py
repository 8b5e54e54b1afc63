"""The QEMU flows for plain threads: one VM, its flows as calls and futures."""

from __future__ import annotations

from concurrent.futures import Future
from typing import final

from jobctl.qemu import (
    VM,
    BackupResult,
    BackupTarget,
    DomainStats,
    Machine,
    MachineSpec,
    MigrationOptions,
    MigrationResult,
    ObservedState,
    RestoreResult,
    SaveResult,
    backup,
    destroy,
    domstats,
    migrate,
    restore,
    save,
    start,
)

from ._domain import BlockingDomain
from ._loop import EventLoopThread

__all__ = ["BlockingVM"]


@final
class BlockingVM:
    """A :class:`jobctl.qemu.VM` and its flows, for plain threads.

    Each flow of :mod:`jobctl.qemu` is here twice: ``vm.migrate(dst)``
    blocks until the flow has ended and returns its result (or raises its
    error, unchanged); ``vm.migrate_soon(dst)`` returns a
    :class:`concurrent.futures.Future` at once. Cancelling the future
    cancels the flow in the loop, as cancelling its task would: the flow
    cleans up and the domain ends idle (no job, the gate open). To abort a
    flow cooperatively from another thread, call :meth:`abort` (or
    ``vm.domain.abort``): the flow raises :class:`jobctl.JobAbortedError`.

    Thread-safety: every method may be called from any thread but the
    loop's, by many threads at once; all run in the loop, so the flows keep
    their guarantees between threads. The wrapped ``VM`` belongs to the
    loop: :meth:`observed` reads its state in the loop thread.
    """

    __slots__ = ("_domain", "_loop", "_vm")

    def __init__(self, loop: EventLoopThread, vm: VM) -> None:
        self._loop = loop
        self._vm = vm
        self._domain = BlockingDomain(loop, vm.domain)

    @property
    def vm(self) -> VM:
        """The wrapped VM (use it only inside the loop)."""
        return self._vm

    @property
    def domain(self) -> BlockingDomain:
        """The VM's domain, for regular jobs, :meth:`~BlockingDomain.info`, aborts."""
        return self._domain

    @property
    def name(self) -> str:
        """The VM's name (immutable, so safe from any thread)."""
        return self._vm.name

    def observed(self) -> ObservedState:
        """:attr:`jobctl.qemu.VM.observed`, read in the loop thread."""
        return self._loop.run_sync(lambda: self._vm.observed)

    # -- start / destroy -------------------------------------------------------

    def start(self, spec: MachineSpec, *, owner: str = "start") -> Machine:
        """:func:`jobctl.qemu.start`, blocking."""
        return self._loop.call(self._start, spec, owner)

    def start_soon(self, spec: MachineSpec, *, owner: str = "start") -> Future[Machine]:
        """:func:`jobctl.qemu.start` as a future."""
        return self._loop.submit(self._start, spec, owner)

    async def _start(self, spec: MachineSpec, owner: str) -> Machine:
        return await start(self._vm, spec, owner=owner)

    def destroy(self, *, owner: str = "destroy", timeout: float | None = None) -> None:
        """:func:`jobctl.qemu.destroy`, blocking: kills QEMU, then ends the
        VM's jobs (a flow running in another thread fails or is pre-empted)."""
        self._loop.call(self._destroy, owner, timeout)

    def destroy_soon(self, *, owner: str = "destroy", timeout: float | None = None) -> Future[None]:
        """:func:`jobctl.qemu.destroy` as a future."""
        return self._loop.submit(self._destroy, owner, timeout)

    async def _destroy(self, owner: str, timeout: float | None) -> None:
        await destroy(self._vm, owner=owner, timeout=timeout)

    def abort(self, reason: str = "aborted", *, timeout: float | None = None) -> None:
        """Abort the VM's running flow (:meth:`jobctl.Domain.abort`), blocking
        until the abort is delivered."""
        self._domain.abort(reason, timeout=timeout)

    # -- migrate ---------------------------------------------------------------

    def migrate(
        self,
        destination: BlockingVM,
        options: MigrationOptions | None = None,
        *,
        owner: str = "migrate",
    ) -> MigrationResult:
        """:func:`jobctl.qemu.migrate` to ``destination``, blocking."""
        return self._loop.call(self._migrate, destination, options, owner)

    def migrate_soon(
        self,
        destination: BlockingVM,
        options: MigrationOptions | None = None,
        *,
        owner: str = "migrate",
    ) -> Future[MigrationResult]:
        """:func:`jobctl.qemu.migrate` as a future; cancel it to cancel the migration."""
        return self._loop.submit(self._migrate, destination, options, owner)

    async def _migrate(
        self, destination: BlockingVM, options: MigrationOptions | None, owner: str
    ) -> MigrationResult:
        return await migrate(self._vm, destination._vm, options, owner=owner)

    # -- domstats --------------------------------------------------------------

    def domstats(
        self,
        *,
        nowait: bool = False,
        timeout: float | None = None,
        owner: str = "domstats",
        max_age: float | None = None,
    ) -> DomainStats:
        """:func:`jobctl.qemu.domstats` of this VM (a QUERY job), blocking."""
        return self._loop.call(self._domstats, nowait, timeout, owner, max_age)

    def domstats_soon(
        self,
        *,
        nowait: bool = False,
        timeout: float | None = None,
        owner: str = "domstats",
        max_age: float | None = None,
    ) -> Future[DomainStats]:
        """:func:`jobctl.qemu.domstats` as a future."""
        return self._loop.submit(self._domstats, nowait, timeout, owner, max_age)

    async def _domstats(
        self, nowait: bool, timeout: float | None, owner: str, max_age: float | None
    ) -> DomainStats:
        return await domstats(
            self._vm, nowait=nowait, timeout=timeout, owner=owner, max_age=max_age
        )

    # -- backup / save / restore ---------------------------------------------

    def backup(self, target: BackupTarget, *, owner: str = "backup") -> BackupResult:
        """:func:`jobctl.qemu.backup` to ``target``, blocking."""
        return self._loop.call(self._backup, target, owner)

    def backup_soon(self, target: BackupTarget, *, owner: str = "backup") -> Future[BackupResult]:
        """:func:`jobctl.qemu.backup` as a future; cancel it to cancel the backup."""
        return self._loop.submit(self._backup, target, owner)

    async def _backup(self, target: BackupTarget, owner: str) -> BackupResult:
        return await backup(self._vm, target, owner=owner)

    def save(self, path: str, *, keep_running: bool = False, owner: str = "save") -> SaveResult:
        """:func:`jobctl.qemu.save` to ``path``, blocking."""
        return self._loop.call(self._save, path, keep_running, owner)

    def save_soon(
        self, path: str, *, keep_running: bool = False, owner: str = "save"
    ) -> Future[SaveResult]:
        """:func:`jobctl.qemu.save` as a future."""
        return self._loop.submit(self._save, path, keep_running, owner)

    async def _save(self, path: str, keep_running: bool, owner: str) -> SaveResult:
        return await save(self._vm, path, keep_running=keep_running, owner=owner)

    def restore(
        self, spec: MachineSpec, path: str, *, paused: bool = False, owner: str = "restore"
    ) -> RestoreResult:
        """:func:`jobctl.qemu.restore` from ``path``, blocking."""
        return self._loop.call(self._restore, spec, path, paused, owner)

    def restore_soon(
        self, spec: MachineSpec, path: str, *, paused: bool = False, owner: str = "restore"
    ) -> Future[RestoreResult]:
        """:func:`jobctl.qemu.restore` as a future."""
        return self._loop.submit(self._restore, spec, path, paused, owner)

    async def _restore(
        self, spec: MachineSpec, path: str, paused: bool, owner: str
    ) -> RestoreResult:
        return await restore(self._vm, spec, path, paused=paused, owner=owner)

    def __repr__(self) -> str:
        return f"<jobctl.blocking.BlockingVM {self._vm.name!r}>"
