"""The exceptions of the task journal.

Every one is a :class:`JournalError`, one level below it, so a manager can
catch the journal's failures in one place, apart from the job core's, and
still tell them apart by type.
"""

from __future__ import annotations

from typing import ClassVar, final

from jobctl._pickling import PicklesAsMade

__all__ = [
    "JournalClosedError",
    "JournalCorruptError",
    "JournalError",
    "JournalInUseError",
    "JournalNotFoundError",
    "JournalSchemaError",
    "JournalStateError",
    "LeaseHeldError",
    "RecoveryError",
    "StaleEpochError",
]


class JournalError(Exception):
    """Base class of every error the task journal raises."""


@final
class JournalSchemaError(JournalError):
    """The journal file is not one this version can use: a newer schema, or
    another application's database. Nothing was changed in it."""


@final
class JournalCorruptError(PicklesAsMade, JournalError):
    """The journal is damaged: SQLite reports the file as damaged, a record
    fails its checksum or breaks the schema's rules, or the journal holds
    fewer commits than were acknowledged (a lost or foreign ``-wal``, a
    restored backup). The journal is never reset on this and the file is
    left as it was. ``path`` names the journal file; ``table`` and ``row``
    name the bad row when one is known."""

    _fields: ClassVar[tuple[str, ...]] = ("path", "table", "row")

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        table: str | None = None,
        row: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.table = table
        self.row = row


@final
class JournalStateError(JournalError):
    """A write the journal refuses because of what it already holds: an
    illegal task transition, ending a command whose tasks are not all done,
    a command id or active backend id that is already taken."""


@final
class JournalNotFoundError(JournalError, LookupError):
    """No command or task with the given id is in the journal, or no journal
    file at the path (opened with ``create=False``)."""


@final
class JournalInUseError(PicklesAsMade, JournalError):
    """Another open store (in this process or another) already writes this
    journal file, whatever name it was opened by. The journal has one
    writer; a second one could run a command's end action twice. ``path``
    is the database file; ``pid`` the holder's process id when it is known."""

    _fields: ClassVar[tuple[str, ...]] = ("path", "pid")

    def __init__(self, message: str, *, path: str, pid: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid


@final
class JournalClosedError(JournalError):
    """The journal (or its store) was used after it was closed."""


@final
class RecoveryError(JournalError):
    """``recover()`` cannot reconcile the journal: it names a backend, a
    command kind or an async job kind that the caller did not provide a
    handler for. Raised before anything is changed."""


@final
class StaleEpochError(PicklesAsMade, JournalError):
    """A write for an owned domain was refused: the epoch it carries is not
    the domain's current one (another manager took the domain over, or the
    lease was released), or it carries none. ``domain`` is the domain,
    ``epoch`` the refused epoch (None: none carried), ``owner`` and
    ``current_epoch`` what the lease row says now (``owner`` None: nobody
    owns it; ``current_epoch`` None: nobody ever did). Nothing was written."""

    _fields: ClassVar[tuple[str, ...]] = ("domain", "epoch", "owner", "current_epoch")

    def __init__(
        self,
        message: str,
        *,
        domain: str,
        epoch: int | None,
        owner: str | None,
        current_epoch: int | None,
    ) -> None:
        super().__init__(message)
        self.domain = domain
        self.epoch = epoch
        self.owner = owner
        self.current_epoch = current_epoch


@final
class LeaseHeldError(PicklesAsMade, JournalError):
    """A domain's lease could not be taken: another manager holds it and it
    has not expired on the database's clock. ``owner`` and ``epoch`` name the
    holder; ``remaining`` is how many seconds it still has."""

    _fields: ClassVar[tuple[str, ...]] = ("domain", "owner", "epoch", "remaining")

    def __init__(
        self, message: str, *, domain: str, owner: str, epoch: int, remaining: float
    ) -> None:
        super().__init__(message)
        self.domain = domain
        self.owner = owner
        self.epoch = epoch
        self.remaining = remaining
