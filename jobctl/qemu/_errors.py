"""The exceptions of jobctl's QEMU job flows.

Every failure of a flow is a :class:`FlowError` (a :class:`jobctl.JobError`),
typed by what failed. An abort (``Domain.abort``) or a DESTROY still ends a
flow with :class:`jobctl.JobAbortedError`, after the flow cleaned up.
"""

from __future__ import annotations

from typing import final

from jobctl._core._errors import JobError

__all__ = [
    "BackupError",
    "FlowError",
    "MachineError",
    "MachineStartError",
    "MigrationError",
    "NotRunningError",
    "RestoreError",
    "SaveError",
]


class FlowError(JobError):
    """Base class of the errors of jobctl's QEMU job flows."""


@final
class NotRunningError(FlowError):
    """The flow needs a running QEMU, and the VM has none on this host."""


class MachineError(FlowError):
    """Starting or talking to a QEMU (real or simulated) failed."""


@final
class MachineStartError(MachineError):
    """A QEMU did not start: the message says why (its exit status and the
    end of its standard error, or the time it took)."""


@final
class MigrationError(FlowError):
    """A migration failed; the VM still runs on the source (when it can).

    ``status`` is the migration's last status (``"failed"``, ``"cancelled"``,
    ...) or ``None`` when it never got that far. ``side`` is the side whose
    step failed: ``"source"`` (its QEMU refused, its migration failed - the
    message has QEMU's reason, such as a broken stream when the destination
    died - or its monitor closed) or ``"destination"`` (its QEMU did not
    start, refused, failed to load or to resume).
    """

    def __init__(self, message: str, *, side: str, status: str | None = None) -> None:
        super().__init__(message)
        self.side = side
        self.status = status


@final
class BackupError(FlowError):
    """A backup job failed (its target is left as QEMU left it)."""


@final
class SaveError(FlowError):
    """Saving the VM's state to a file failed; the VM runs on (when it ran)."""


@final
class RestoreError(FlowError):
    """Restoring a saved state failed; the VM stays off."""
