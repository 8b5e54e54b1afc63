"""The journal's front end: commands, their child tasks, and end actions that
run exactly once."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._core._entity import Entity, Need

from ._fencing import Fence, FencingToken
from ._persister import JournalPersister
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from ._sqlite import SqliteJournalStore
from ._store import FencedJournalStore, JournalStore

__all__ = ["EndAction", "EndContext", "Journal", "JournalStatistics", "open_journal"]


@final
@attrs.frozen
class EndContext:
    """What an end action is told about the command it ends."""

    #: The command as claimed: ENDING, every task over.
    command: CommandRecord
    #: 1 on the first run; more means an earlier attempt was claimed and may
    #: have done some or all of its work before it failed or the process died.
    attempt: int

    @property
    def outcome(self) -> CommandState:
        """SUCCEEDED if every task succeeded, else FAILED."""
        assert self.command.outcome is not None
        return self.command.outcome

    @property
    def key(self) -> str:
        """The idempotency key for effects outside the journal: the command id.
        The same key comes with every attempt."""
        return self.command.id


#: A command's end action (oVirt's ``endSuccessfully``/``endWithFailure``).
#: It may return a JSON object, recorded as the command's result in the same
#: transaction that makes the command final.
EndAction = Callable[[EndContext], Awaitable[Mapping[str, Any] | None]]


@final
@attrs.frozen
class JournalStatistics:
    """Counters of one :class:`Journal` since it was made."""

    commands_begun: int
    task_updates: int
    #: End action runs (attempts), including the ones that raised.
    end_action_runs: int
    end_action_errors: int
    commands_ended: int
    #: End actions running now.
    ending: int


@final
class Journal:
    """The crash-safe task journal.

    A command with child tasks goes like this::

        cmd = await journal.begin_command("remove_vm", [TaskSpec(...), ...],
                                          entities=[Entity("vm", "vm1").exclusive()])
        for task in cmd.tasks:          # all recorded before any starts
            ... start it, then:
            await journal.update_task(task.id, TaskState.RUNNING, backend_id=job_id)
        ... as each one ends:
            await journal.update_task(task.id, TaskState.SUCCEEDED, result={...})
        final = await journal.end_command(cmd.id, end_action)

    Guarantees:

    * Every write is durable when the call returns (see the store).
    * A command is SUCCEEDED only if every one of its tasks SUCCEEDED and its
      end action completed; the store checks this in the transaction.
    * The end action's *journal* effect (the command's final state and the
      result the action returned) happens exactly once per command: it is
      written in the one transaction that moves the command from ENDING to
      final, and that transaction succeeds only for the latest claim.
    * The end action itself is claimed in the journal before each run, at
      most ``max_attempts`` times in all, crashes included: a crash between a
      run and its final write is seen as a claim without its write, and the
      next run is attempt ``n + 1`` (:attr:`EndContext.attempt`). A command
      made final by a completed run therefore had its action's effects
      *outside* the journal happen at least once; make them idempotent with
      :attr:`EndContext.key` (the command id) and they happen exactly once.
      After ``max_attempts`` claims without a completed run the command is
      FAILED and its error says so; its outside effects may then be partial.
    * Within one process, concurrent ``end_command`` calls for one command
      do not overlap; the later ones see the final record.

    Several managers on one database (a :class:`FencedJournalStore` such as
    :class:`PostgresJournalStore`) give each journal a ``fence``: their
    leases (``jobctl.cluster.Ownership``). A command begun with
    ``domain=...`` belongs to that domain, and every write of it (its tasks,
    its end's claim and record) and of the domain's async job carries this
    manager's epoch of the domain; the store refuses a stale one with
    :class:`StaleEpochError` naming the domain's owner now, in the
    transaction that would have written it. So once another manager takes
    the domain over, this one can no longer change the domain's part of the
    journal, nor claim an end action of it.
    """

    __slots__ = (
        "_commands_begun",
        "_commands_ended",
        "_end_action_errors",
        "_end_action_runs",
        "_ending",
        "_fence",
        "_fenced",
        "_persister",
        "_session",
        "_store",
        "_task_updates",
    )

    def __init__(self, store: JournalStore, *, fence: Fence | None = None) -> None:
        self._store = store
        self._fence = fence
        self._fenced: FencedJournalStore | None = None
        if fence is not None:
            if not isinstance(store, FencedJournalStore):
                raise TypeError(
                    f"a fenced journal needs a store that keeps domain leases"
                    f" (PostgresJournalStore), not {store!r}: domain ownership is for managers"
                    " sharing one database"
                )
            self._fenced = store
        self._session = uuid.uuid4().hex
        self._persister = JournalPersister(store, self._session, fence=fence)
        self._ending: dict[str, anyio.Event] = {}
        self._commands_begun = 0
        self._task_updates = 0
        self._end_action_runs = 0
        self._end_action_errors = 0
        self._commands_ended = 0

    @property
    def store(self) -> JournalStore:
        """Where the journal is kept."""
        return self._store

    @property
    def fence(self) -> Fence | None:
        """Where this journal's writes take their fencing tokens from (None: unfenced)."""
        return self._fence

    def _tokens(self) -> Mapping[str, FencingToken]:
        assert self._fence is not None
        return self._fence.tokens()

    @property
    def session(self) -> str:
        """This journal's session id, written with every async job record."""
        return self._session

    @property
    def persister(self) -> JournalPersister:
        """The :class:`jobctl.AsyncJobPersister` to give each ``Domain``."""
        return self._persister

    async def aclose(self) -> None:
        """Close the store."""
        await self._store.aclose()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> JournalStatistics:
        """Counters since the journal was made."""
        return JournalStatistics(
            commands_begun=self._commands_begun,
            task_updates=self._task_updates,
            end_action_runs=self._end_action_runs,
            end_action_errors=self._end_action_errors,
            commands_ended=self._commands_ended,
            ending=len(self._ending),
        )

    # -- commands and tasks --------------------------------------------------------

    async def begin_command(
        self,
        kind: str,
        tasks: Iterable[TaskSpec],
        *,
        entities: Iterable[Need] = (),
        data: Mapping[str, Any] | None = None,
        command_id: str | None = None,
        domain: str | None = None,
    ) -> CommandRecord:
        """Record a command with every task it expects, in one transaction,
        before any of them starts.

        ``entities`` are what the command works on, as :class:`jobctl.Need`
        values (``vm.exclusive()``, ``domain.shared()``: the modes recovery
        locks them in again); one entity may appear once. ``data`` is any
        JSON object the flow wants back after a crash. Task names must be
        unique within the command; backend ids given in advance must not be
        in use by an unfinished task.

        ``domain`` (a fenced journal only) makes the command the owned
        domain's: this manager must hold the domain's lease now, and every
        later write of the command carries its epoch
        (:class:`StaleEpochError` once another manager owns the domain).
        """
        if domain is not None and self._fenced is None:
            raise ValueError(
                f"command for domain {domain!r}: a domain's command needs a fenced journal"
                " (Journal(store, fence=ownership))"
            )
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"a command kind is a non-empty string, not {kind!r}")
        if command_id is None:
            command_id = uuid.uuid4().hex
        elif not isinstance(command_id, str) or not command_id:
            raise ValueError(f"a command id is a non-empty string, not {command_id!r}")
        specs = tuple(tasks)
        for spec in specs:
            if not isinstance(spec, TaskSpec):
                raise TypeError(f"tasks must be TaskSpec objects, not {spec!r}")
        _check_unique("task name", [spec.name for spec in specs], command_id)
        _check_unique(
            "backend id",
            [f"{s.backend}:{s.backend_id}" for s in specs if s.backend_id is not None],
            command_id,
        )
        needs = tuple(entities)
        for need in needs:
            if not isinstance(need, Need):
                hint = (
                    " (use entity.shared() or entity.exclusive())"
                    if isinstance(need, Entity)
                    else ""
                )
                raise TypeError(f"entities must be Need values, not {need!r}{hint}")
        _check_unique("entity", [f"{n.entity.type}/{n.entity.id}" for n in needs], command_id)
        if self._fenced is not None:
            record = await self._fenced.add_command(
                command_id,
                kind,
                {} if data is None else data,
                specs,
                needs,
                domain=domain,
                fence=self._tokens(),
            )
        else:
            record = await self._store.add_command(
                command_id, kind, {} if data is None else data, specs, needs
            )
        self._commands_begun += 1
        return record

    async def update_task(
        self,
        task_id: str,
        state: TaskState,
        *,
        backend_id: str | None = None,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> TaskRecord:
        """Move a task forward (see :class:`TaskState`), attaching its backend
        id when it becomes known, with its result (SUCCEEDED) or error (FAILED)."""
        update = TaskUpdate(task_id, state, backend_id=backend_id, result=result, error=error)
        (record,) = await self.update_tasks([update])
        return record

    async def update_tasks(self, updates: Sequence[TaskUpdate]) -> tuple[TaskRecord, ...]:
        """Apply several task transitions in one transaction (all or none)."""
        if not updates:
            await anyio.lowlevel.checkpoint()
            return ()
        if self._fenced is not None:
            records = await self._fenced.update_tasks(updates, fence=self._tokens())
        else:
            records = await self._store.update_tasks(updates)
        self._task_updates += len(records)
        return records

    async def command(self, command_id: str) -> CommandRecord:
        """The command and its tasks, as committed now."""
        return await self._store.get_command(command_id)

    async def unfinished_commands(self) -> tuple[CommandRecord, ...]:
        """Every command not yet final, oldest first."""
        return await self._store.unfinished_commands()

    async def active_commands(self, entity_type: str, entity_id: str) -> tuple[str, ...]:
        """Ids of the unfinished commands that work on the entity."""
        return await self._store.active_commands(entity_type, entity_id)

    async def entity_busy(self, entity_type: str, entity_id: str) -> bool:
        """Whether any unfinished command works on the entity (one indexed query)."""
        return bool(await self._store.active_commands(entity_type, entity_id))

    async def async_jobs(self) -> tuple[AsyncJobRecord, ...]:
        """Every persisted async job, this session's and dead sessions'."""
        return await self._store.async_jobs()

    async def clear_async_job(self, record: AsyncJobRecord) -> None:
        """Drop ``record``, unless its domain has saved a newer job since."""
        if self._fenced is not None:
            await self._fenced.clear_async_job(
                record.domain, record.job_id, record.session, fence=self._tokens()
            )
        else:
            await self._store.clear_async_job(record.domain, record.job_id, record.session)

    # -- the end action ----------------------------------------------------------------

    async def end_command(
        self,
        command_id: str,
        action: EndAction,
        *,
        max_attempts: int = 3,
        retry_delay: float = 1.0,
    ) -> CommandRecord:
        """Run the command's end action and record the command's final state.

        Every task must be over (:class:`JournalStateError` otherwise). Each
        attempt is claimed in the journal before it runs; an attempt that
        raises is retried after ``retry_delay`` seconds, up to
        ``max_attempts`` claims in all (counting attempts a crash cut short);
        past that the command is FAILED. If the command is already final the
        action does not run and the final record is returned: calling this
        again, or from recovery, is safe.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {max_attempts!r}")
        if not retry_delay >= 0:
            raise ValueError(f"retry_delay must be >= 0, not {retry_delay!r}")
        while (running := self._ending.get(command_id)) is not None:
            await running.wait()
        done = self._ending[command_id] = anyio.Event()
        try:
            return await self._end(command_id, action, max_attempts, retry_delay)
        finally:
            del self._ending[command_id]
            done.set()

    async def _end(
        self, command_id: str, action: EndAction, max_attempts: int, retry_delay: float
    ) -> CommandRecord:
        last_error: str | None = None
        while True:
            if self._fenced is not None:
                command = await self._fenced.claim_end(
                    command_id,
                    max_attempts=max_attempts,
                    last_error=last_error,
                    fence=self._tokens(),
                )
            else:
                command = await self._store.claim_end(
                    command_id, max_attempts=max_attempts, last_error=last_error
                )
            if command.state.final:
                return command
            context = EndContext(command, command.end_attempts)
            self._end_action_runs += 1
            try:
                result = await action(context)
            except Exception as exc:
                self._end_action_errors += 1
                last_error = f"{type(exc).__name__}: {exc}"
                if command.end_attempts < max_attempts:
                    await anyio.sleep(retry_delay)
                continue
            error = None
            if context.outcome is CommandState.FAILED:
                error = "; ".join(
                    f"task {t.name!r} failed: {t.error}"
                    for t in command.tasks
                    if t.state is TaskState.FAILED
                )
            if self._fenced is not None:
                final = await self._fenced.finish_command(
                    command, context.outcome, result=result, error=error, fence=self._tokens()
                )
            else:
                final = await self._store.finish_command(
                    command, context.outcome, result=result, error=error
                )
            self._commands_ended += 1
            return final


def _check_unique(what: str, values: Sequence[str], command_id: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"command {command_id!r} names {what} {value!r} twice")
        seen.add(value)


@asynccontextmanager
async def open_journal(
    path: str | os.PathLike[str],
    *,
    synchronous: Literal["full", "normal"] = "full",
    readers: int = 4,
    create: bool = True,
    reseal: bool = False,
) -> AsyncIterator[Journal]:
    """``async with open_journal("jobs.db") as journal:`` a journal in an
    SQLite file (see :class:`SqliteJournalStore` for the options), closed on
    the way out."""
    store = await SqliteJournalStore.open(
        path, synchronous=synchronous, readers=readers, create=create, reseal=reseal
    )
    async with Journal(store) as journal:
        yield journal
