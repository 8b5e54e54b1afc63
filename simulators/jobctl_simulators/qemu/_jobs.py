"""Block jobs: the backup job's life, as QEMU 7.2 lives it.

States and events (``JOB_STATUS_CHANGE`` unless named)::

    blockdev-backup   created, running, paused, running      (before the return;
                      the paused/running pair is QEMU's drain at job start)
    copy done         waiting, pending,
                      then BLOCK_JOB_PENDING                 (auto-finalize false)
                      or   BLOCK_JOB_COMPLETED, concluded    (auto-finalize true)
    job-finalize      BLOCK_JOB_COMPLETED, concluded         (pending only)
    job-cancel        aborting, BLOCK_JOB_CANCELLED, concluded
    job-dismiss       null                                   (concluded only)

and ``null`` right after ``concluded`` when auto-dismiss is true. A verb in the
wrong state fails with "Job 'ID' in state 'S' cannot accept command verb 'V'".

Copying runs on the event loop's clock: a step of at least ``chunk`` bytes
shows in the progress at once, then the job pauses so that the average rate
is the job's ``speed`` (or the model's ``throughput`` when the speed is 0),
like QEMU's rate limiter. A ``full`` backup copies the disk's size, ``top``
nothing (no backing chain is modelled), ``none`` runs until cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

import anyio
import attrs

from ._block import BlockNodes, Disk
from ._errors import DEVICE_NOT_ACTIVE, CommandErrorReply
from ._ids import id_wellformed

__all__ = ["BackupModel", "BlockJob", "BlockJobs"]

GiB: Final = 1 << 30
MiB: Final = 1 << 20

# QEMU's JobVerbTable: the states each verb is allowed in.
_VERBS: Final = {
    "cancel": frozenset({"created", "running", "paused", "ready", "standby", "waiting", "pending"}),
    "finalize": frozenset({"pending"}),
    "dismiss": frozenset({"concluded"}),
}


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@final
@attrs.frozen
class BackupModel:
    """How fast simulated block jobs copy: ``throughput`` bytes/s when the
    job has no ``speed`` limit, in steps of at least ``chunk`` bytes."""

    throughput: float = attrs.field(default=float(GiB), validator=_positive)
    chunk: int = attrs.field(default=MiB, validator=_positive)
    #: The longest pause between two progress updates.
    tick: float = attrs.field(default=0.1, validator=_positive)


@final
class BlockJob:
    """One backup job (mutable; read it through ``query-jobs``)."""

    def __init__(
        self,
        jobs: BlockJobs,
        job_id: str,
        *,
        source: str,
        target: str,
        length: int,
        speed: int,
        sync: str,
        auto_finalize: bool,
        auto_dismiss: bool,
    ) -> None:
        self._jobs = jobs
        self.id = job_id
        self.type = "backup"
        self.source = source
        self.target = target
        self.length = length
        self.offset = 0
        self.speed = speed
        self.sync = sync
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.status = "undefined"
        self.error: str | None = None
        self._cancelled = False
        self._copy_scope: anyio.CancelScope | None = None

    # -- state machine -------------------------------------------------------

    def _transition(self, status: str) -> None:
        self.status = status
        self._jobs.emit("JOB_STATUS_CHANGE", {"status": status, "id": self.id})

    def _check_verb(self, verb: str) -> None:
        if self.status not in _VERBS[verb]:
            raise CommandErrorReply(
                f"Job '{self.id}' in state '{self.status}' cannot accept command verb '{verb}'"
            )

    def _block_job_data(self) -> dict[str, Any]:
        return {
            "device": self.id,
            "len": self.length,
            "offset": self.offset,
            "speed": self.speed,
            "type": self.type,
        }

    def _conclude(self) -> None:
        self._transition("concluded")
        if self.auto_dismiss:
            self._dismissed()

    def _dismissed(self) -> None:
        self._transition("null")
        self._jobs._remove(self)

    def cancel(self) -> None:
        """``job-cancel``."""
        self._check_verb("cancel")
        self._cancelled = True
        if self._copy_scope is not None:
            self._copy_scope.cancel()
        self._transition("aborting")
        self.error = "Operation canceled"
        self._jobs.emit("BLOCK_JOB_CANCELLED", self._block_job_data())
        self._conclude()

    def finalize(self) -> None:
        """``job-finalize``."""
        self._check_verb("finalize")
        self._finalized()

    def _finalized(self) -> None:
        self._jobs.emit("BLOCK_JOB_COMPLETED", self._block_job_data())
        self._conclude()

    def dismiss(self) -> None:
        """``job-dismiss``."""
        self._check_verb("dismiss")
        self._dismissed()

    def _copied(self) -> None:
        self._transition("waiting")
        self._transition("pending")
        if self.auto_finalize:
            self._finalized()
        else:
            self._jobs.emit("BLOCK_JOB_PENDING", {"type": self.type, "id": self.id})

    async def run(self, model: BackupModel) -> None:
        """Copy, then complete (the job's coroutine)."""
        if self._cancelled:
            return
        with anyio.CancelScope() as self._copy_scope:
            if self.sync == "none":
                await anyio.sleep_forever()  # copy-before-write only, until cancelled
            while self.offset < self.length:
                rate = self.speed or model.throughput
                step = max(model.chunk, int(rate * model.tick) // model.chunk * model.chunk)
                step = min(step, self.length - self.offset)
                self.offset += step
                await anyio.sleep(step / rate)
        self._copy_scope = None
        if not self._cancelled:
            self._copied()

    # -- replies -------------------------------------------------------------

    def query_jobs(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "current-progress": self.offset,
            "status": self.status,
            "total-progress": self.length,
            "type": self.type,
            "id": self.id,
        }
        if self.error is not None:
            entry["error"] = self.error
        return entry

    def query_block_jobs(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "auto-finalize": self.auto_finalize,
            "io-status": "ok",
            "device": self.id,
            "auto-dismiss": self.auto_dismiss,
            "busy": False,
            "len": self.length,
            "offset": self.offset,
            "status": self.status,
            "paused": False,
            "speed": self.speed,
            "ready": False,
            "type": self.type,
        }
        if self.error is not None:
            entry["error"] = self.error
        return entry


Emit = Callable[[str, dict[str, Any] | None], None]
Spawn = Callable[[BlockJob], None]


@final
class BlockJobs:
    """A VM's block nodes and block jobs."""

    def __init__(self, nodes: BlockNodes, model: BackupModel, emit: Emit, spawn: Spawn) -> None:
        self.nodes = nodes
        self.model = model
        self.emit = emit
        self._spawn = spawn
        self.jobs: dict[str, BlockJob] = {}
        self._anonymous_targets = 0

    @property
    def disks(self) -> dict[str, Disk]:
        """The VM's format nodes by name."""
        return self.nodes.disks

    def _remove(self, job: BlockJob) -> None:
        del self.jobs[job.id]

    def _node(self, name: str) -> Disk:
        disk = self.disks.get(name)
        if disk is None:
            raise CommandErrorReply(f"Cannot find device='{name}' nor node-name='{name}'")
        return disk

    def _busy_target(self, target: str) -> None:
        for job in self.jobs.values():
            if job.target == target and job.status not in ("concluded", "null"):
                raise CommandErrorReply(
                    f"Node '{target}' is busy: block device is in use by block job: {job.type}"
                )

    def blockdev_del(self, node_name: str) -> None:
        """``blockdev-del``: not a node attached to a device nor one a job uses."""
        self.nodes.removable(node_name)
        for job in self.jobs.values():
            if node_name in (job.source, job.target) and job.status not in ("concluded", "null"):
                raise CommandErrorReply(
                    f"Node '{node_name}' is busy: block device is in use by block job: {job.type}"
                )
        self.nodes.remove(node_name)

    def backup(self, arguments: dict[str, Any], *, drive: bool) -> None:
        """``blockdev-backup`` (``drive=False``) or ``drive-backup``."""
        source = self._node(arguments["device"])
        if drive:
            self._anonymous_targets += 1
            target = f"#backup-target-{self._anonymous_targets}:{arguments['target']}"
        else:
            target = self._node(arguments["target"]).node_name
        sync = arguments["sync"]
        if sync in ("bitmap", "incremental") and "bitmap" not in arguments:
            raise CommandErrorReply(f"must provide a valid bitmap name for '{sync}' sync mode")
        if "bitmap" in arguments:
            raise CommandErrorReply(f"Bitmap '{arguments['bitmap']}' could not be found")
        if "bitmap-mode" in arguments:
            raise CommandErrorReply("Cannot specify bitmap sync mode without a bitmap")
        if target == source.node_name:
            raise CommandErrorReply("Source and target cannot be the same")
        self._busy_target(target)
        perf = arguments.get("x-perf", {})
        if not 1 <= perf.get("max-workers", 64) <= 2**31 - 1:
            raise CommandErrorReply("max-workers must be between 1 and 2147483647")
        if perf.get("max-chunk", 0) < 0:
            raise CommandErrorReply("max-chunk must be zero (which means no limit) or positive")
        job_id = arguments.get("job-id", "")  # QEMU falls back to the device name: "" here
        if not id_wellformed(job_id):
            raise CommandErrorReply(f"Invalid job ID '{job_id}'")
        if job_id in self.jobs:
            raise CommandErrorReply(f"Job ID '{job_id}' already in use")
        job = BlockJob(
            self,
            job_id,
            source=source.node_name,
            target=target,
            length=0
            if sync == "top"
            else source.size,  # no backing chain: nothing allocated on top
            speed=arguments.get("speed", 0),
            sync=sync,
            auto_finalize=arguments.get("auto-finalize", True),
            auto_dismiss=arguments.get("auto-dismiss", True),
        )
        self.jobs[job_id] = job
        job._transition("created")
        if job.speed < 0:
            job._transition("null")
            self._remove(job)
            raise CommandErrorReply("Parameter 'speed' expects a non-negative value")
        job._transition("running")
        job._transition("paused")  # the drained section around job start
        job._transition("running")
        self._spawn(job)

    def find(self, job_id: str) -> BlockJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise CommandErrorReply("Job not found")
        return job

    def find_block_job(self, device: str) -> BlockJob:
        job = self.jobs.get(device)
        if job is None:
            raise CommandErrorReply(f"Block job '{device}' not found", DEVICE_NOT_ACTIVE)
        return job
