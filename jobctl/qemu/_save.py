"""Save as a SAVE async job: the VM's state migrated to a file.

==============  ===============================================================
phase           what happens
==============  ===============================================================
``begin``       MIGRATION events on; pause the VM (``stop``) so that the file
                holds one consistent state
``perform``     ``migrate`` to a private socket whose other end writes the
                file (:mod:`jobctl.qemu._sink`); wait for the end in
                interruptible sections, polling ``query-migrate``; abort runs
                ``migrate_cancel``
``finish``      keep the VM running (``cont``), or stop its QEMU as libvirt's
                save does
==============  ===============================================================

``begin`` is persisted once ``was_running`` is known, before the VM is
paused, with the file's path, the QMP socket and ``keep_running``: what
:class:`~jobctl.qemu.QemuRecovery` reads after a crash.

Every phase is persisted, the file's end waited for and QEMU's events
awaited in interruptible sections: the domain is closed to
queries only while the flow uses the monitor (:attr:`SaveResult.closed`).

On failure, cancellation or DESTROY the migration is cancelled and the VM
resumed if it ran, within ``cleanup_timeout``.
"""

from __future__ import annotations

import logging
from typing import Any, Final, final

import anyio
import attrs

from jobctl._core._domain import ActiveAsyncJob
from jobctl._core._kinds import AsyncJob
from jobctl.qemu._deadline import BoundedSession
from jobctl.qemu._errors import SaveError
from jobctl.qemu._machine import Machine
from jobctl.qemu._migration import (
    EVENTS_ON,
    UNLIMITED_BANDWIDTH,
    cancel_migration,
    final_progress,
)
from jobctl.qemu._progress import TERMINAL_STATUSES, MigrationProgress
from jobctl.qemu._recovery import PROCESS, QMP, process_record
from jobctl.qemu._sink import SaveSink, open_save_sink
from jobctl.qemu._vm import VM
from jobctl.qemu._wait import ClosedTime, GateClock, migration_ended, wait_in_sections
from jobctl.qmp import QMPClosedError, QMPError

__all__ = ["SaveResult", "save"]

_log: Final = logging.getLogger("jobctl.qemu")
_SETTLE_PAUSE: Final = 0.01


@final
@attrs.frozen
class SaveResult:
    """A completed save."""

    domain: str
    path: str
    progress: MigrationProgress
    #: Bytes written to the file.
    size: int
    #: Whether the VM runs on (``keep_running``) or its QEMU was stopped.
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
            "progress": self.progress.to_json(),
            "size": self.size,
            "running": self.running,
            "duration": self.duration,
            "closed": self.closed.to_json(),
        }


async def save(
    vm: VM,
    path: str,
    *,
    keep_running: bool = False,
    bandwidth: int | None = None,
    owner: str = "save",
    poll_interval: float = 0.5,
    cleanup_timeout: float = 10.0,
) -> SaveResult:
    """Save the VM's state to ``path``.

    Then stop its QEMU (the VM is saved, not running), or with
    ``keep_running`` resume it if it ran. ``bandwidth`` limits the writing
    (bytes per second; None: no limit). Raises :class:`NotRunningError`,
    :class:`SaveError` if the save failed, and
    :class:`jobctl.JobAbortedError` when aborted or pre-empted by DESTROY;
    after a failure the VM runs as it did before.
    """
    async with vm.domain.async_job(AsyncJob.SAVE, owner=owner) as ajob:
        started = anyio.current_time()
        clock = GateClock(ajob, vm.observer, flow="save")
        machine = vm.running_machine()
        ajob.private.update(
            {
                "path": path,
                QMP: machine.qmp_path,
                PROCESS: process_record(machine.pid),
                "keep_running": keep_running,
            }
        )
        was_running: bool | None = None
        try:
            async with clock.monitor() as mon:
                status = await mon.execute("query-status")
            was_running = bool(status.get("running"))
            # Persisted before the VM stops: recovery resumes it if it ran.
            ajob.private["was_running"] = was_running
            await clock.phase("begin")
            async with clock.monitor() as mon:
                await mon.execute("migrate-set-capabilities", EVENTS_ON)
                limit = UNLIMITED_BANDWIDTH if bandwidth is None else bandwidth
                await mon.execute("migrate-set-parameters", {"max-bandwidth": limit})
                if was_running:
                    await mon.execute("stop")
            await clock.phase("perform")

            async with open_save_sink(path) as sink:
                try:
                    progress = await _write(clock, machine, sink, poll_interval, cleanup_timeout)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await sink.discard()
                    raise
            running = bool(keep_running and was_running)
            if running:
                await clock.phase("finish")
                async with clock.monitor() as mon:
                    await mon.execute("cont")
            else:
                vm.detach()
                async with clock.section():
                    await clock.phase("finish")
                    await machine.stop()
            closed = clock.closed()
        except QMPError as exc:
            with anyio.CancelScope(shield=True):
                await _resume(ajob, vm, was_running, cleanup_timeout)
            raise SaveError(f"saving {vm.name!r} to {path!r} failed: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _resume(ajob, vm, was_running, cleanup_timeout)
            raise
    return SaveResult(
        vm.name, path, progress, sink.written, running, anyio.current_time() - started, closed
    )


async def _write(
    clock: GateClock,
    machine: Machine,
    sink: SaveSink,
    poll_interval: float,
    cleanup_timeout: float,
) -> MigrationProgress:
    """Migrate the VM's state into ``sink``; wait until it is all written."""
    ajob = clock.ajob

    async def poll(mon: BoundedSession) -> str | None:
        progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
        ajob.set_progress(progress.as_dict())
        return progress.status if progress.status in TERMINAL_STATUSES else None

    with machine.qmp.subscribe("MIGRATION") as events:
        async with clock.monitor() as mon:
            await mon.execute("migrate", {"uri": sink.uri})
        ajob.set_abort_hook(cancel_migration)
        try:
            outcome, aborted = await wait_in_sections(
                clock, events, migration_ended, poll=poll, interval=poll_interval
            )
        finally:
            ajob.set_abort_hook(None)
    progress = await final_progress(clock, outcome)
    what = f"saving {ajob.domain.name!r} to {sink.path!r}"
    if outcome != "completed":
        if aborted is not None:
            raise aborted
        raise SaveError(f"{what} {outcome}: {progress.error or 'QEMU gave no reason'}")
    # QEMU closes the stream once it completed: the file is whole then.
    async with clock.section():
        with anyio.move_on_after(cleanup_timeout):
            await sink.wait()
    if sink.error is not None or not sink.done:
        why = "the stream did not end" if sink.error is None else str(sink.error)
        raise SaveError(f"{what} failed: {why}")
    return progress


async def _resume(ajob: ActiveAsyncJob, vm: VM, was_running: bool | None, timeout: float) -> None:
    """Stop a migration still under way and resume the VM if it ran."""
    machine = vm.machine
    if machine is None or machine.stopped or ajob.preempted:
        return  # with DESTROY, QEMU is being killed: nothing to resume
    with anyio.move_on_after(timeout):
        try:
            async with ajob.monitor() as mon:
                progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
                if progress.active and progress.status != "cancelling":
                    await mon.execute("migrate_cancel")
                while progress.active:
                    await anyio.sleep(_SETTLE_PAUSE)
                    progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
                if was_running:
                    status = await mon.execute("query-status")
                    if not status.get("running"):
                        await mon.execute("cont")
        except QMPClosedError:
            vm.detach()
            await machine.stop()
        except QMPError as exc:
            _log.warning("save of %s: could not resume the VM: %s", vm.name, exc)
