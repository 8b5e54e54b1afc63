"""Restore as a RESTORE async job: a saved state migrated back into a new QEMU.

==============  ===============================================================
phase           what happens
==============  ===============================================================
``prepare``     start a paused QEMU waiting for a migration on a private unix
                socket (``migrate-incoming``)
``perform``     stream the file into that socket; wait for QEMU's end of the
                migration in interruptible sections
``finish``      ``cont`` (unless ``paused``)
==============  ===============================================================

The new QEMU starts and greets, every phase is persisted and QEMU's events
are awaited in interruptible sections: the domain is closed to queries only
while the flow uses the monitor (:attr:`RestoreResult.closed`). The job lets
QUERY jobs into its sections, not ABORT: a restore is not aborted, it is
destroyed.

On failure, cancellation or DESTROY the new QEMU is stopped and the VM stays
off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Final, final

import anyio
import attrs

from jobctl._core._errors import JobTimeoutError
from jobctl._core._kinds import AsyncJob, Job
from jobctl._groups import unwrap_single
from jobctl.qemu._deadline import Deadline
from jobctl.qemu._errors import FlowError, RestoreError
from jobctl.qemu._machine import Machine, MachineSpec
from jobctl.qemu._migration import EVENTS_ON
from jobctl.qemu._vm import VM
from jobctl.qemu._wait import ClosedTime, GateClock, migration_ended, wait_in_sections
from jobctl.qmp import QMPError

__all__ = ["RestoreResult", "restore"]

_CHUNK: Final = 1 << 20


@final
@attrs.frozen
class RestoreResult:
    """A completed restore."""

    domain: str
    path: str
    #: Bytes streamed from the file.
    size: int
    running: bool
    duration: float
    #: How long the domain was closed to queries;
    #: ``closed.outside_monitor`` is the time outside monitor commands.
    closed: ClosedTime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/JSON.md); durations in seconds."""
        return {
            "domain": self.domain,
            "path": self.path,
            "size": self.size,
            "running": self.running,
            "duration": self.duration,
            "closed": self.closed.to_json(),
        }


@final
class _Feeder:
    """Streams a file into QEMU's incoming socket."""

    def __init__(self, path: str, socket_path: str) -> None:
        self.path = path
        self.socket_path = socket_path
        self.sent = 0
        #: Why streaming stopped early, if it did (QEMU closed the socket...).
        self.error: Exception | None = None

    async def run(self) -> None:
        try:
            async with (
                await anyio.open_file(self.path, "rb") as file,
                await anyio.connect_unix(self.socket_path) as stream,
            ):
                while chunk := await file.read(_CHUNK):
                    await stream.send(chunk)
                    self.sent += len(chunk)
        except (OSError, anyio.BrokenResourceError) as exc:
            self.error = exc


async def restore(
    vm: VM,
    spec: MachineSpec,
    path: str,
    *,
    paused: bool = False,
    owner: str = "restore",
    timeout: float = 60.0,
) -> RestoreResult:
    """Start the VM on its host from the state :func:`save` wrote to ``path``.

    It runs afterwards unless ``paused``. Raises :class:`FlowError` if the
    VM already runs there, :class:`RestoreError` if the restore failed (the
    new QEMU is stopped then), and :class:`jobctl.JobAbortedError` when
    pre-empted by DESTROY. ``timeout`` bounds loading the state and
    resuming the VM, from ``migrate-incoming`` to ``cont``: QEMU's answers
    and the wait for the end of the migration; past it the restore fails
    with :class:`RestoreError`, which names what QEMU did not do in time.
    """
    if not await anyio.Path(path).is_file():
        raise RestoreError(f"cannot restore {vm.name!r}: no saved state at {path!r}")
    async with vm.domain.async_job(AsyncJob.RESTORE, allowed={Job.QUERY}, owner=owner) as ajob:
        started = anyio.current_time()
        clock = GateClock(ajob, vm.observer, flow="restore")
        if vm.machine is not None and not vm.machine.stopped:
            raise FlowError(f"cannot restore {vm.name!r}: it already runs on {vm.host.name!r}")
        ajob.private["path"] = path
        # Queries get in while the QEMU starts: "shutoff", then "inmigrate".
        async with clock.section():
            await clock.phase("prepare")
            try:
                machine = await vm.host.start_machine(vm.name, spec, incoming=True)
            except FlowError as exc:
                raise RestoreError(f"cannot restore {vm.name!r}: {exc}") from exc
            vm.attach(machine)
        directory = tempfile.mkdtemp(prefix="jobctl-restore-")
        try:
            feeder = _Feeder(path, os.path.join(directory, "restore.sock"))
            limit = Deadline(vm.name, timeout, flow="restore")
            try:
                await _load(clock, machine, feeder, limit)
                await clock.phase("finish")
                if not paused:
                    async with clock.monitor(limit) as mon:
                        await mon.execute("cont")
            except JobTimeoutError as exc:  # before TimeoutError: it is one
                raise RestoreError(f"cannot restore {vm.name!r} from {path!r}: {exc}") from exc
            except TimeoutError:
                raise RestoreError(
                    f"cannot restore {vm.name!r}: QEMU did not load {path!r} within {timeout:g} s"
                ) from None
            closed = clock.closed()
        except QMPError as exc:
            with anyio.CancelScope(shield=True):
                vm.detach()
                await machine.stop()
            raise RestoreError(f"cannot restore {vm.name!r} from {path!r}: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                vm.detach()
                await machine.stop()
            raise
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return RestoreResult(
        vm.name, path, feeder.sent, not paused, anyio.current_time() - started, closed
    )


async def _load(clock: GateClock, machine: Machine, feeder: _Feeder, limit: Deadline) -> None:
    with machine.qmp.subscribe("MIGRATION") as events:
        async with clock.monitor(limit) as mon:
            await mon.execute("migrate-set-capabilities", EVENTS_ON)
            await mon.execute("migrate-incoming", {"uri": f"unix:{feeder.socket_path}"})
        await clock.phase("perform")
        async with unwrap_single(), anyio.create_task_group() as tg:
            tg.start_soon(feeder.run)
            try:
                status, _ = await wait_in_sections(
                    clock, events, migration_ended, timeout=limit.remaining()
                )
            finally:
                tg.cancel_scope.cancel()
    if status != "completed":
        why = f": {feeder.error}" if feeder.error is not None else ""
        raise RestoreError(f"restoring from {feeder.path!r}: the migration {status}{why}")
