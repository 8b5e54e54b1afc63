"""Job kinds: regular jobs (:class:`Job`) and async jobs (:class:`AsyncJob`)."""

from __future__ import annotations

import enum

__all__ = ["DEFAULT_ALLOWED", "AsyncJob", "Job"]


@enum.unique
class Job(enum.Enum):
    """The kinds of regular (short) jobs.

    QUERY jobs may share a domain with each other; every other kind is
    exclusive against all regular jobs.
    """

    QUERY = "query"
    DESTROY = "destroy"
    SUSPEND = "suspend"
    MODIFY = "modify"
    ABORT = "abort"
    MIGRATION_OP = "migration_op"

    @property
    def shared(self) -> bool:
        """Whether jobs of this kind may run beside each other."""
        return self is Job.QUERY


@enum.unique
class AsyncJob(enum.Enum):
    """The kinds of async (long) jobs; at most one runs on a domain."""

    MIGRATION_OUT = "migration_out"
    MIGRATION_IN = "migration_in"
    SAVE = "save"
    DUMP = "dump"
    SNAPSHOT = "snapshot"
    START = "start"
    BACKUP = "backup"
    RESTORE = "restore"


#: The regular job kinds an async job lets into its interruptible sections
#: unless told otherwise. DESTROY is always allowed, whatever the mask says.
DEFAULT_ALLOWED: frozenset[Job] = frozenset({Job.QUERY, Job.DESTROY, Job.ABORT})
