"""Host-level parallel work: entity locks and a bounded command executor.

A host runs many commands at once (backups, deletes, restores, starts).
Instead of serializing them all, each command declares the entities it
needs (:class:`Entity`: a VM, a disk, a backup chain, a storage domain),
shared or exclusive; :class:`EntityLocks` grants them all-or-nothing, FIFO
among conflicts, and :class:`CommandExecutor` runs the commands on a bounded
pool of workers with kind caps, priorities, ordered groups and a bounded
queue.

:class:`Entity`, :class:`Need` and :class:`LockMode` are the core's entity
model (``jobctl.Entity`` is ``jobctl.host.Entity``), the one the journal
records too; they are re-exported here for lock users.
"""

from __future__ import annotations

from jobctl._core._entity import Entity, LockMode, Need
from jobctl._public import publish

from ._command import Command, CommandContext
from ._errors import (
    CommandCancelledError,
    CommandNotRunError,
    CommandQueueFullError,
    EntityLockBusyError,
    EntityLockTimeoutError,
    ExecutorClosedError,
    LockConflict,
)
from ._executor import CommandExecutor, CommandHandle
from ._locks import EntityLocks, EntityLocksStatistics, LockGrant, normalize_needs
from ._report import CommandReport, ExecutionState, ExecutorStatistics, ExecutorSummary

__all__ = [
    "Command",
    "CommandCancelledError",
    "CommandContext",
    "CommandExecutor",
    "CommandHandle",
    "CommandNotRunError",
    "CommandQueueFullError",
    "CommandReport",
    "Entity",
    "EntityLockBusyError",
    "EntityLockTimeoutError",
    "EntityLocks",
    "EntityLocksStatistics",
    "ExecutionState",
    "ExecutorClosedError",
    "ExecutorStatistics",
    "ExecutorSummary",
    "LockConflict",
    "LockGrant",
    "LockMode",
    "Need",
    "normalize_needs",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
