"""Host-level parallel work: entity locks and a bounded command executor.

A host runs many commands at once (backups, deletes, restores, starts).
Instead of serializing them all, each command declares the entities it
needs (:class:`Entity`: a VM, a disk, a backup chain, a storage domain),
shared or exclusive; :class:`EntityLocks` grants them all-or-nothing, FIFO
among conflicts, and :class:`CommandExecutor` runs the commands on a bounded
pool of workers with kind caps, priorities, ordered groups and a bounded
queue.
"""

from __future__ import annotations

from ._command import Command, CommandContext
from ._entity import Entity, LockMode, Need, normalize_needs
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
from ._locks import EntityLocks, EntityLocksStatistics, LockGrant
from ._report import CommandReport, CommandState, ExecutorStatistics, ExecutorSummary

__all__ = [
    "Command",
    "CommandCancelledError",
    "CommandContext",
    "CommandExecutor",
    "CommandHandle",
    "CommandNotRunError",
    "CommandQueueFullError",
    "CommandReport",
    "CommandState",
    "Entity",
    "EntityLockBusyError",
    "EntityLockTimeoutError",
    "EntityLocks",
    "EntityLocksStatistics",
    "ExecutorClosedError",
    "ExecutorStatistics",
    "ExecutorSummary",
    "LockConflict",
    "LockGrant",
    "LockMode",
    "Need",
    "normalize_needs",
]
