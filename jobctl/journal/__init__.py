"""The crash-safe task journal, and recovery after the manager restarts.

When the manager dies mid-operation nothing may be lost and nothing may be
reported done that was not done. The journal records every command with all
of its expected child tasks in one transaction before any starts, attaches
each task's backend id when it is known, writes states and results as they
change, runs each command's end action exactly once, and persists every
domain's async job on each phase change. :func:`recover` reconciles all that
with what the backends report at start-up.

The default store is an SQLite file in WAL mode (:class:`SqliteJournalStore`);
anything implementing :class:`JournalStore` can replace it. It refuses to
lie: one writer per database file whatever name opens it; only a path that
does not exist becomes a new journal; a damaged file, a record altered in
place, a lost or foreign ``-wal`` (fewer commits than were acknowledged, per
the journal's seal file) raise :class:`JournalCorruptError` naming the file,
at open or at the read that meets the damage, and the file is left as it was.

A command's entities are the core's :class:`jobctl.Need` values
(``Entity("vm", "vm1").exclusive()``), the ones :mod:`jobctl.host` locks:
recovery takes them again through any :class:`EntityLocker`, such as a
``jobctl.host.EntityLocks``.

Managers that share one database use :class:`PostgresJournalStore` (the
``postgres`` extra: psycopg 3 and its pool, loaded when a store opens). It
also keeps domain leases: each manager owns its domains with a
:class:`FencingToken` (owner, epoch), and a :class:`Journal` given a
``fence`` writes a domain's commands and async jobs with it; a stale epoch
is refused with :class:`StaleEpochError` (``jobctl.cluster`` holds and
renews the leases). Domain ownership is PostgreSQL's only: an SQLite journal
has one writer.
"""

from jobctl._public import publish

from ._backend import BackendState, BackendStatus, TaskBackend
from ._errors import (
    JournalClosedError,
    JournalCorruptError,
    JournalError,
    JournalInUseError,
    JournalNotFoundError,
    JournalSchemaError,
    JournalStateError,
    LeaseHeldError,
    RecoveryError,
    StaleEpochError,
)
from ._fencing import Fence, FencingToken, LeaseGrant, LeaseRecord
from ._files import Seal, read_seal
from ._follow import follow_command, follow_tasks
from ._journal import EndAction, EndContext, Journal, JournalStatistics, open_journal
from ._persister import JournalPersister
from ._phases import PhaseAction, by_phase
from ._postgres import POSTGRES_SCHEMA_VERSION, PostgresJournalStore, PostgresStoreStatistics
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from ._recovery import AsyncJobHandler, EntityLocker, RecoveryReport, recover
from ._sqlite import SCHEMA_VERSION, SqliteJournalStore, SqliteStoreStatistics
from ._store import FencedJournalStore, JournalStore

__all__ = [
    "POSTGRES_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "AsyncJobHandler",
    "AsyncJobRecord",
    "BackendState",
    "BackendStatus",
    "CommandRecord",
    "CommandState",
    "EndAction",
    "EndContext",
    "EntityLocker",
    "Fence",
    "FencedJournalStore",
    "FencingToken",
    "Journal",
    "JournalClosedError",
    "JournalCorruptError",
    "JournalError",
    "JournalInUseError",
    "JournalNotFoundError",
    "JournalPersister",
    "JournalSchemaError",
    "JournalStateError",
    "JournalStatistics",
    "JournalStore",
    "LeaseGrant",
    "LeaseHeldError",
    "LeaseRecord",
    "PhaseAction",
    "PostgresJournalStore",
    "PostgresStoreStatistics",
    "RecoveryError",
    "RecoveryReport",
    "Seal",
    "SqliteJournalStore",
    "SqliteStoreStatistics",
    "StaleEpochError",
    "TaskBackend",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "TaskUpdate",
    "by_phase",
    "follow_command",
    "follow_tasks",
    "open_journal",
    "read_seal",
    "recover",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
