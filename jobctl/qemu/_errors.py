"""The exceptions of jobctl's QEMU job flows.

Every failure of a flow is a :class:`FlowError`, typed by what failed. It
is the QEMU layer's own root, not a job core error: an abort
(``Domain.abort``) or a DESTROY still ends a flow with the core's
:class:`jobctl.JobAbortedError`, after the flow cleaned up.
"""

from __future__ import annotations

from typing import final

__all__ = [
    "BackupError",
    "FlowError",
    "MachineError",
    "MachineSpecError",
    "MachineStartError",
    "MigrationError",
    "NotRunningError",
    "RestoreError",
    "SaveError",
]


class FlowError(Exception):
    """Base class of the errors of jobctl's QEMU job flows."""


@final
class NotRunningError(FlowError):
    """The flow needs a running QEMU, and the VM has none on this host."""


@final
class MachineError(FlowError):
    """A QEMU host could not do what was asked of it: a program it needs
    (``qemu-system-*``, ``qemu-img``) is missing or failed, or the host is
    shutting down."""


@final
class MachineSpecError(FlowError):
    """A machine's spec names a file its host cannot use: a disk image,
    one of its backing files, a kernel or an initrd is missing, unreadable,
    or not in the format the spec says. Raised by
    :meth:`~jobctl.qemu.Host.start_machine` (real and simulated hosts alike)
    before any QEMU starts; the message names the spec's field and the file."""


@final
class MachineStartError(FlowError):
    """A QEMU process (real or simulated) was started and did not come up:
    the message says why (its exit status and the end of its standard error,
    or the time it took)."""


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
