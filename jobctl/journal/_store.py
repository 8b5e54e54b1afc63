"""The journal's storage interface: what a database must do for the journal.

:class:`SqliteJournalStore` is the default; a server database can replace it
by implementing this protocol. Each method is one atomic step: it commits
entirely or not at all, and it is durable once it returns. The state rules
(which transitions are legal, when a command may end) are checked inside that
step, so two writers cannot both win a compare-and-set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from jobctl._core._entity import Need

from ._errors import StaleEpochError
from ._fencing import FencingToken, LeaseGrant, LeaseRecord
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    TaskRecord,
    TaskSpec,
    TaskUpdate,
)

__all__ = ["FencedJournalStore", "JournalStore"]


class JournalStore(Protocol):
    """Durable storage for commands, their tasks, entity associations and
    async jobs.

    Errors: :class:`JournalStateError` for a write the journal's contents
    forbid, :class:`JournalNotFoundError` for an unknown id,
    :class:`JournalCorruptError` for unreadable data,
    :class:`JournalClosedError` after :meth:`aclose`.
    """

    async def add_command(
        self,
        command_id: str,
        kind: str,
        data: Mapping[str, Any],
        tasks: Sequence[TaskSpec],
        entities: Iterable[Need],
    ) -> CommandRecord:
        """Record a RUNNING command, all its tasks (PENDING) and its entity
        associations, in one transaction."""
        ...

    async def update_tasks(self, updates: Sequence[TaskUpdate]) -> tuple[TaskRecord, ...]:
        """Apply task transitions in order, in one transaction; each must
        move its task forward and its command must be RUNNING."""
        ...

    async def claim_end(
        self, command_id: str, *, max_attempts: int, last_error: str | None
    ) -> CommandRecord:
        """Claim the command's end action, in one transaction.

        A RUNNING command whose tasks are all over becomes ENDING with its
        outcome decided and ``end_attempts == 1``; an ENDING one gets
        ``end_attempts + 1``; past ``max_attempts`` it becomes FAILED
        instead (``last_error`` goes into the message). A final command is
        returned as it is: its end action will not run again.
        """
        ...

    async def finish_command(
        self,
        claimed: CommandRecord,
        state: CommandState,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> CommandRecord:
        """Move the ENDING command that :meth:`claim_end` returned as
        ``claimed`` to its final ``state`` (SUCCEEDED only if its outcome
        is), with the end action's result, and release its entity
        associations, in one transaction; only if that claim is still the
        latest. Done exactly once."""
        ...

    async def get_command(self, command_id: str) -> CommandRecord:
        """The command and its tasks."""
        ...

    async def unfinished_commands(self) -> tuple[CommandRecord, ...]:
        """Every command that is not final, oldest first."""
        ...

    async def active_commands(self, entity_type: str, entity_id: str) -> tuple[str, ...]:
        """Ids of the unfinished commands associated with the entity."""
        ...

    async def save_async_job(self, record: AsyncJobRecord) -> None:
        """Replace the domain's async job record."""
        ...

    async def clear_async_job(self, domain: str, job_id: int, session: str) -> None:
        """Delete the domain's record if it is still that job's."""
        ...

    async def async_jobs(self) -> tuple[AsyncJobRecord, ...]:
        """Every async job record."""
        ...

    async def aclose(self) -> None:
        """Finish the writes in flight and close. Idempotent."""
        ...


@runtime_checkable
class FencedJournalStore(JournalStore, Protocol):
    """A :class:`JournalStore` that also keeps domain leases and checks
    fencing tokens: several managers may share it, each owning some domains
    (:class:`PostgresJournalStore` is one; the SQLite store has one writer
    and keeps no leases).

    Every write takes ``fence``, the writer's tokens by domain; a write for
    an owned domain whose token is missing or stale raises
    :class:`StaleEpochError` in the transaction that would have written it.
    Lease times are the database's clock's, never the caller's.
    """

    async def add_command(
        self,
        command_id: str,
        kind: str,
        data: Mapping[str, Any],
        tasks: Sequence[TaskSpec],
        entities: Iterable[Need],
        *,
        domain: str | None = None,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> CommandRecord:
        """:meth:`JournalStore.add_command`; with ``domain``, the command
        belongs to that owned domain and ``fence`` must hold its token."""
        ...

    async def update_tasks(
        self, updates: Sequence[TaskUpdate], *, fence: Mapping[str, FencingToken] | None = None
    ) -> tuple[TaskRecord, ...]:
        """:meth:`JournalStore.update_tasks`, fenced."""
        ...

    async def claim_end(
        self,
        command_id: str,
        *,
        max_attempts: int,
        last_error: str | None,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> CommandRecord:
        """:meth:`JournalStore.claim_end`, fenced."""
        ...

    async def finish_command(
        self,
        claimed: CommandRecord,
        state: CommandState,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> CommandRecord:
        """:meth:`JournalStore.finish_command`, fenced."""
        ...

    async def save_async_job(
        self, record: AsyncJobRecord, *, fence: Mapping[str, FencingToken] | None = None
    ) -> None:
        """:meth:`JournalStore.save_async_job`, fenced when the domain has an owner."""
        ...

    async def clear_async_job(
        self,
        domain: str,
        job_id: int,
        session: str,
        *,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> None:
        """:meth:`JournalStore.clear_async_job`, fenced when the domain has an owner."""
        ...

    async def acquire_lease(self, domain: str, owner: str, duration: float) -> LeaseGrant:
        """Take a domain nobody holds (:class:`LeaseHeldError` otherwise),
        with the next epoch."""
        ...

    async def renew_lease(self, token: FencingToken, duration: float) -> LeaseGrant:
        """Extend a current lease (:class:`StaleEpochError` otherwise)."""
        ...

    async def renew_leases(
        self, tokens: Sequence[FencingToken], duration: float
    ) -> tuple[tuple[LeaseGrant, ...], tuple[StaleEpochError, ...]]:
        """Extend many leases in one transaction: the grants of the current
        ones, a :class:`StaleEpochError` for each of the others."""
        ...

    async def release_lease(self, token: FencingToken) -> None:
        """Give a current lease up (:class:`StaleEpochError` otherwise)."""
        ...

    async def leases(self) -> tuple[LeaseRecord, ...]:
        """Every domain's lease row."""
        ...
