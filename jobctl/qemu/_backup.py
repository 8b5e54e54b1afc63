"""Backup as a BACKUP async job: ``blockdev-backup`` and QEMU's job lifecycle.

==============  ===============================================================
phase           what happens
==============  ===============================================================
``begin``       add the target node (``blockdev-add``) when asked to
``perform``     ``blockdev-backup`` (auto-finalize and auto-dismiss off); wait for
                the job to be ``pending`` in interruptible sections, polling
                ``query-jobs`` for progress; abort runs ``job-cancel``
``finalize``    ``job-finalize``, then ``job-dismiss`` once ``concluded``
``finish``      remove the target node the flow added
==============  ===============================================================

The job's private data holds the QEMU job's id and the QMP socket: what
:class:`~jobctl.qemu.QemuRecovery` reads after a crash.

Every phase is persisted, and QEMU's events awaited, in interruptible
sections: the domain is closed to queries only while the flow uses the
monitor (:attr:`BackupResult.closed`).

On failure, cancellation or DESTROY the QEMU job is cancelled and dismissed
and the added node removed, within ``cleanup_timeout``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any, Final, final

import anyio
import attrs

from jobctl._core._domain import ActiveAsyncJob, MonitorSession
from jobctl._core._errors import JobAbortedError
from jobctl._core._kinds import AsyncJob
from jobctl._core._monitor import Monitor
from jobctl.qemu._deadline import BoundedSession
from jobctl.qemu._errors import BackupError
from jobctl.qemu._machine import DiskImage
from jobctl.qemu._recovery import PROCESS, QMP, process_record
from jobctl.qemu._vm import VM
from jobctl.qemu._wait import ClosedTime, GateClock, wait_in_sections
from jobctl.qmp import EventSubscription, QMPError, QMPEvent

__all__ = ["BackupResult", "BackupTarget", "backup", "qcow2_target"]

_log: Final = logging.getLogger("jobctl.qemu")
_ids = itertools.count(1)
#: Job states after which the copy is over (pending: copied, waiting for finalize).
_OVER: Final = frozenset({"pending", "concluded", "null"})
_SETTLE_PAUSE: Final = 0.01


@final
@attrs.frozen
class BackupTarget:
    """Where a backup goes: block node ``node_name``. With ``blockdev`` (the
    arguments of ``blockdev-add``), the flow adds the node first and removes
    it at the end; without, the node must exist."""

    node_name: str
    blockdev: Mapping[str, Any] | None = None


def qcow2_target(node_name: str, image: DiskImage) -> BackupTarget:
    """A target node that the flow adds (``blockdev-add``, real QEMU) for a
    qcow2 image as large as the disk (see :meth:`Host.create_disk`)."""
    return BackupTarget(
        node_name,
        {
            "driver": "qcow2",
            "node-name": node_name,
            "file": {"driver": "file", "filename": image.path},
        },
    )


@final
@attrs.frozen
class BackupResult:
    """A completed backup."""

    domain: str
    job_id: str
    device: str
    target: str
    #: Bytes copied (QEMU's ``current-progress``).
    copied: int
    duration: float
    #: How long the domain was closed to queries;
    #: ``closed.outside_monitor`` is the time outside monitor commands.
    closed: ClosedTime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/JSON.md); durations in seconds."""
        return {
            "domain": self.domain,
            "job_id": self.job_id,
            "device": self.device,
            "target": self.target,
            "copied": self.copied,
            "duration": self.duration,
            "closed": self.closed.to_json(),
        }


@final
class _JobState:
    """What the flow knows about its QEMU job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.created = False
        self.status = "undefined"
        self.error: str | None = None
        self.copied = 0
        self.total = 0

    def update(self, entry: Mapping[str, Any]) -> None:
        self.status = str(entry.get("status", self.status))
        error = entry.get("error")
        self.error = error if isinstance(error, str) else self.error
        current, total = entry.get("current-progress"), entry.get("total-progress")
        self.copied = current if type(current) is int else self.copied
        self.total = total if type(total) is int else self.total

    def progress(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, "copied": self.copied, "total": self.total}
        if self.total:
            data["percent"] = round(100.0 * self.copied / self.total, 1)
        return data


async def _query_job(mon: Monitor, state: _JobState) -> None:
    for entry in await mon.execute("query-jobs"):
        if isinstance(entry, Mapping) and entry.get("id") == state.job_id:
            state.update(entry)
            return
    state.status = "null"


async def backup(
    vm: VM,
    target: BackupTarget,
    *,
    device: str | None = None,
    speed: int = 0,
    job_id: str | None = None,
    owner: str = "backup",
    poll_interval: float = 0.5,
    cleanup_timeout: float = 10.0,
) -> BackupResult:
    """Back up the VM's disk (``device``: a node name, by default the
    machine's disk node) to ``target`` with a full copy, at most ``speed``
    bytes per second (0: no limit).

    Raises :class:`NotRunningError` if the VM does not run here,
    :class:`BackupError` if the backup failed, and
    :class:`jobctl.JobAbortedError` when aborted (``Domain.abort``) or
    pre-empted by DESTROY, after cancelling QEMU's job.
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0, not {speed!r}")
    state = _JobState(job_id or f"jobctl-backup-{next(_ids)}")
    async with vm.domain.async_job(AsyncJob.BACKUP, owner=owner) as ajob:
        started = anyio.current_time()
        clock = GateClock(ajob, vm.observer, flow="backup")
        machine = vm.running_machine()
        source = device or machine.spec.disk_node
        ajob.private.update(job_id=state.job_id, device=source, target=target.node_name)
        ajob.private[QMP] = machine.qmp_path
        ajob.private[PROCESS] = process_record(machine.pid)
        added = False
        try:
            await clock.phase("begin")
            if target.blockdev is not None:
                async with clock.monitor() as mon:
                    await mon.execute("blockdev-add", target.blockdev)
                added = True
            await clock.phase("perform")
            with machine.qmp.subscribe(
                "JOB_STATUS_CHANGE", filter=lambda data: data.get("id") == state.job_id
            ) as events:
                async with clock.monitor() as mon:
                    await mon.execute(
                        "blockdev-backup",
                        {
                            "job-id": state.job_id,
                            "device": source,
                            "target": target.node_name,
                            "sync": "full",
                            "speed": speed,
                            "auto-finalize": False,
                            "auto-dismiss": False,
                        },
                    )
                state.created = True
                aborted = await _wait_copied(clock, state, events, poll_interval)
            # The copy is over: no abort may come to cancel it any more.
            clock.deny_abort()
            await clock.phase("finalize")
            async with clock.monitor() as mon:
                if state.status == "pending":
                    await mon.execute("job-finalize", {"id": state.job_id})
                await _query_job(mon, state)
                if state.status == "concluded":
                    await mon.execute("job-dismiss", {"id": state.job_id})
                    state.created = False
            ajob.set_progress(state.progress())
            if aborted is not None:
                raise aborted
            if state.error is not None:
                raise BackupError(
                    f"backup of {vm.name!r} ({source} to {target.node_name}) failed: {state.error}"
                )
            await clock.phase("finish")
            if added:
                async with clock.monitor() as mon:
                    await mon.execute("blockdev-del", {"node-name": target.node_name})
                added = False
            closed = clock.closed()
        except QMPError as exc:
            with anyio.CancelScope(shield=True):
                await _clean_up(ajob, state, target, added, cleanup_timeout)
            raise BackupError(f"backup of {vm.name!r} failed: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _clean_up(ajob, state, target, added, cleanup_timeout)
            raise
    return BackupResult(
        vm.name,
        state.job_id,
        source,
        target.node_name,
        state.copied,
        anyio.current_time() - started,
        closed,
    )


async def _wait_copied(
    clock: GateClock,
    state: _JobState,
    events: EventSubscription,
    poll_interval: float,
) -> JobAbortedError | None:
    """Wait until the copy is over; set the abort hook meanwhile."""
    ajob = clock.ajob

    def over(event: QMPEvent) -> str | None:
        status = event.data.get("status")
        if isinstance(status, str):
            state.status = status
        return state.status if state.status in _OVER else None

    async def poll(mon: BoundedSession) -> str | None:
        await _query_job(mon, state)
        ajob.set_progress(state.progress())
        return state.status if state.status in _OVER else None

    async def cancel(mon: MonitorSession) -> None:
        await mon.execute("job-cancel", {"id": state.job_id})

    ajob.set_abort_hook(cancel)
    try:
        _, aborted = await wait_in_sections(clock, events, over, poll=poll, interval=poll_interval)
    finally:
        ajob.set_abort_hook(None)
    return aborted


async def _clean_up(
    ajob: ActiveAsyncJob,
    state: _JobState,
    target: BackupTarget,
    added: bool,
    timeout: float,
) -> None:
    """Cancel and dismiss QEMU's job, remove the added node; best effort.
    Nothing after a DESTROY: QEMU is being killed, and its job with it."""
    if ajob.preempted:
        return
    with anyio.move_on_after(timeout):
        try:
            async with ajob.monitor() as mon:
                if state.created:
                    await _query_job(mon, state)
                    if state.status not in ("concluded", "null", "aborting"):
                        await mon.execute("job-cancel", {"id": state.job_id})
                    while state.status not in ("concluded", "null"):
                        await anyio.sleep(_SETTLE_PAUSE)
                        await _query_job(mon, state)
                    if state.status == "concluded":
                        await mon.execute("job-dismiss", {"id": state.job_id})
                if added:
                    await mon.execute("blockdev-del", {"node-name": target.node_name})
        except QMPError as exc:
            _log.warning("backup %s: cleaning up failed: %s", state.job_id, exc)
