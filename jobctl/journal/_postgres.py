"""The PostgreSQL journal store: several processes may share one database.

The same :class:`JournalStore` guarantees as the SQLite store: each method is
one transaction, committed whole or not at all and durable once it returns;
a command and all its tasks are recorded in one transaction; the state rules
are checked inside the transaction that writes, with the command's row locked
(``SELECT ... FOR UPDATE``), so two writers (in one process or in several)
cannot both win a compare-and-set, and a command's end is claimed once per
attempt.

psycopg's async API runs only on asyncio, so the store runs psycopg's sync API
on worker threads (``anyio.to_thread``) with a connection pool
(``psycopg_pool``): it works on trio and asyncio alike and never blocks the
event loop. Every call is bounded: waiting for a connection by ``timeout``,
each statement by the server's ``statement_timeout``; a server that is gone
or does not answer raises :class:`JournalError` naming the database.

psycopg is imported when a store opens, not by ``import jobctl.journal``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from jobctl._core._entity import Entity, LockMode, Need
from jobctl._core._kinds import AsyncJob, Job

from ._errors import (
    JournalClosedError,
    JournalCorruptError,
    JournalError,
    JournalNotFoundError,
    JournalSchemaError,
    JournalStateError,
    LeaseHeldError,
    StaleEpochError,
)
from ._fencing import FencingToken, LeaseGrant, LeaseRecord, stale_epoch
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from ._rules import (
    backend_conflict,
    claim_of,
    dumps_object,
    loads_object,
    loads_optional_object,
    task_after,
    transition_backend_id,
)

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = ["POSTGRES_SCHEMA_VERSION", "PostgresJournalStore", "PostgresStoreStatistics"]

T = TypeVar("T")

#: The schema version this module writes (``jobctl_meta.version``).
POSTGRES_SCHEMA_VERSION: Final = 2

#: A transaction that met a deadlock or a serialization failure is run again
#: this many times at most (each try is a whole transaction: nothing of a
#: failed try remains).
_RETRIES: Final = 5

# A domain's lease: its owner (NULL once released), the epoch (only grows:
# each acquisition adds one; a row is never deleted) and the expiry, always
# computed on the database's clock.
_LEASES: Final = """CREATE TABLE jobctl_leases (
        domain TEXT PRIMARY KEY,
        owner TEXT,
        epoch BIGINT NOT NULL CHECK (epoch >= 1),
        expires TIMESTAMPTZ NOT NULL,
        acquired TIMESTAMPTZ NOT NULL
    )"""

_SCHEMA: Final = (
    """CREATE TABLE jobctl_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        journal_id TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE jobctl_commands (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'ending', 'succeeded', 'failed')),
        outcome TEXT CHECK (outcome IN ('succeeded', 'failed')),
        data TEXT NOT NULL,
        result TEXT,
        error TEXT,
        end_attempts INTEGER NOT NULL CHECK (end_attempts >= 0),
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        domain TEXT,
        CHECK (state = 'running' OR outcome IS NOT NULL)
    )""",
    "CREATE INDEX jobctl_commands_unfinished ON jobctl_commands (created, id)"
    " WHERE state IN ('running', 'ending')",
    """CREATE TABLE jobctl_tasks (
        id TEXT PRIMARY KEY,
        command_id TEXT NOT NULL REFERENCES jobctl_commands (id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        backend TEXT NOT NULL,
        backend_id TEXT,
        state TEXT NOT NULL
            CHECK (state IN ('pending', 'starting', 'running', 'succeeded', 'failed')),
        params TEXT NOT NULL,
        result TEXT,
        error TEXT,
        updated DOUBLE PRECISION NOT NULL,
        UNIQUE (command_id, position),
        UNIQUE (command_id, name)
    )""",
    # One unfinished task per backend id: recovery must know whose work it is.
    "CREATE UNIQUE INDEX jobctl_tasks_active_backend_id ON jobctl_tasks (backend, backend_id)"
    " WHERE backend_id IS NOT NULL AND state NOT IN ('succeeded', 'failed')",
    """CREATE TABLE jobctl_entities (
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        command_id TEXT NOT NULL REFERENCES jobctl_commands (id),
        shared BOOLEAN NOT NULL,
        active BOOLEAN NOT NULL,
        PRIMARY KEY (type, id, command_id)
    )""",
    "CREATE INDEX jobctl_entities_active ON jobctl_entities (type, id) WHERE active",
    "CREATE INDEX jobctl_entities_command ON jobctl_entities (command_id)",
    """CREATE TABLE jobctl_async_jobs (
        domain TEXT PRIMARY KEY,
        job_id BIGINT NOT NULL,
        kind TEXT NOT NULL,
        phase TEXT NOT NULL,
        owner TEXT,
        allowed TEXT NOT NULL,
        private TEXT NOT NULL,
        session TEXT NOT NULL,
        saved DOUBLE PRECISION NOT NULL
    )""",
    _LEASES,
)

#: Version 1 to 2: commands belong to an owned domain, and domains have leases.
_UPGRADE_1: Final = ("ALTER TABLE jobctl_commands ADD COLUMN domain TEXT", _LEASES)

#: Any number: the key of the transaction-scoped advisory lock that makes
#: creators of one database's schema take turns.
_CREATE_LOCK: Final = 0x6A6F626A

_COMMAND_COLUMNS: Final = (
    "id, kind, state, outcome, data, result, error, end_attempts, created, updated, domain"
)
_TASK_COLUMNS: Final = (
    "id, command_id, position, name, backend, backend_id, state, params, result, error, updated"
)
_ASYNC_COLUMNS: Final = "domain, job_id, kind, phase, owner, allowed, private, session, saved"


@final
@attrs.frozen
class PostgresStoreStatistics:
    """What a :class:`PostgresJournalStore` has done so far."""

    #: Write calls that committed or failed.
    writes: int
    #: Read calls.
    reads: int
    #: Transactions run again after a deadlock or serialization failure.
    retries: int
    #: Calls running now (on worker threads).
    in_flight: int
    closed: bool


def _by_entity(need: Need) -> Entity:
    return need.entity


@final
class PostgresJournalStore:
    """A :class:`JournalStore` in a PostgreSQL database, shared by any number
    of processes.

    ``await PostgresJournalStore.open("host=/run/postgresql dbname=jobs")``
    creates the journal's tables (``jobctl_*``) in an empty database, or
    checks the ones it finds: a newer schema, or tables that are not a
    journal's, raise :class:`JournalSchemaError` and nothing is changed. Use
    it as an async context manager, or call :meth:`aclose`.

    Unlike the SQLite store it does not refuse a second writer: several
    managers may share one database, and each transaction's checks (taken
    under the command's row lock) keep them from both winning a transition
    or both claiming an end. Which manager may act on which domain is the
    business of the caller.
    """

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, name: str, timeout: float, journal_id: str
    ) -> None:
        self._pool = pool
        self._name = name
        self._timeout = timeout
        self._journal_id = journal_id
        self._closed = False
        self._writes = 0
        self._reads = 0
        self._retries = 0
        self._in_flight = 0
        self._idle = anyio.Event()

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        min_connections: int = 1,
        max_connections: int = 4,
        timeout: float = 30.0,
    ) -> PostgresJournalStore:
        """Connect (``conninfo`` is a libpq connection string or URI), make or
        check the schema, and return the store. ``timeout`` (seconds) bounds
        the wait for a connection and each statement."""
        if not 1 <= min_connections <= max_connections:
            raise ValueError(
                f"connections: need 1 <= min_connections ({min_connections}) <="
                f" max_connections ({max_connections})"
            )
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        pool, name, journal_id = await anyio.to_thread.run_sync(
            partial(cls._open_sync, conninfo, min_connections, max_connections, timeout)
        )
        return cls(pool, name, timeout, journal_id)

    @classmethod
    def _open_sync(
        cls, conninfo: str, min_connections: int, max_connections: int, timeout: float
    ) -> tuple[psycopg_pool.ConnectionPool, str, str]:
        import psycopg
        import psycopg.conninfo
        import psycopg_pool

        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"bad PostgreSQL connection string: {exc}") from None
        name = f"postgresql database {params.get('dbname', '?')!r} on {params.get('host', '?')!r}"
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
        pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_connections,
            max_size=max_connections,
            kwargs=kwargs,
            timeout=timeout,
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
        )
        try:
            pool.open(wait=True, timeout=timeout)
            with pool.connection() as conn:
                journal_id = _create_or_check(conn, name)
        except BaseException as exc:
            pool.close()
            if isinstance(exc, psycopg_pool.PoolTimeout):
                raise JournalError(f"journal {name} cannot be reached in {timeout} s") from None
            if isinstance(exc, psycopg.Error):
                raise JournalError(f"journal {name} cannot be opened: {exc}") from None
            raise
        return pool, name, journal_id

    async def __aenter__(self) -> PostgresJournalStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def name(self) -> str:
        """The database, as errors name it."""
        return self._name

    @property
    def journal_id(self) -> str:
        """The journal's id, chosen when its tables were made."""
        return self._journal_id

    def statistics(self) -> PostgresStoreStatistics:
        """The store's counters: transactions written and read, retries after a deadlock or a
        serialization failure, calls in flight, and whether it is closed."""
        return PostgresStoreStatistics(
            writes=self._writes,
            reads=self._reads,
            retries=self._retries,
            in_flight=self._in_flight,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<PostgresJournalStore {self._name} {state}>"

    async def aclose(self) -> None:
        """Wait for the calls in flight to finish, then close the pool.
        Idempotent."""
        if not self._closed:
            self._closed = True
            if self._in_flight:
                with anyio.CancelScope(shield=True):
                    await self._idle.wait()
            await anyio.to_thread.run_sync(self._pool.close)
        await anyio.lowlevel.checkpoint()

    # -- running a transaction on a worker thread -------------------------------------

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction on a worker thread. Once started it
        runs to its end even if the caller is cancelled (then the caller is
        cancelled after it), so a write that committed is never reported
        lost while it stands."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise JournalClosedError(f"journal store {self._name} is closed")
        self._in_flight += 1
        try:
            return await anyio.to_thread.run_sync(partial(self._transaction, fn))
        finally:
            self._in_flight -= 1
            if write:
                self._writes += 1
            else:
                self._reads += 1
            if self._closed and not self._in_flight:
                self._idle.set()

    def _transaction(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        import psycopg
        import psycopg.errors
        import psycopg_pool

        for attempt in range(_RETRIES + 1):
            try:
                with self._pool.connection(timeout=self._timeout) as conn, conn.transaction():
                    return fn(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES:
                    raise JournalError(
                        f"journal {self._name}: a transaction met {_RETRIES + 1} deadlocks or"
                        " serialization failures in a row"
                    ) from None
                self._retries += 1
            except psycopg_pool.PoolTimeout:
                raise JournalError(
                    f"journal {self._name}: no connection within {self._timeout} s"
                    " (the server is down or does not answer)"
                ) from None
            except psycopg.errors.QueryCanceled:
                raise JournalError(
                    f"journal {self._name}: a statement ran past {self._timeout} s"
                ) from None
            except psycopg.Error as exc:
                raise JournalError(f"journal {self._name}: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _corrupt(self, table: str, row: object, why: str) -> JournalCorruptError:
        return JournalCorruptError(
            f"row {row!r} of table {table!r} in journal {self._name} breaks the journal's"
            f" rules: {why}",
            path=self._name,
            table=table,
            row=str(row),
        )

    # -- reading rows ----------------------------------------------------------------

    def _task(self, r: Sequence[Any]) -> TaskRecord:
        try:
            return TaskRecord(
                id=r[0],
                command_id=r[1],
                position=r[2],
                name=r[3],
                backend=r[4],
                backend_id=r[5],
                state=TaskState(r[6]),
                params=loads_object(r[7], "params"),
                result=loads_optional_object(r[8], "result"),
                error=r[9],
                updated=r[10],
            )
        except (TypeError, ValueError) as exc:
            raise self._corrupt("jobctl_tasks", r[0], str(exc)) from None

    def _load(
        self, conn: psycopg.Connection[Any], where: str, params: Sequence[Any], *, lock: bool
    ) -> list[CommandRecord]:
        """Commands matching ``where`` (over alias ``c``) with their tasks and
        entities, oldest first; with ``lock``, their rows locked until the
        transaction ends."""
        suffix = " FOR UPDATE" if lock else ""
        rows = conn.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM jobctl_commands c WHERE {where}"
            f" ORDER BY created, id{suffix}",
            params,
        ).fetchall()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        tasks: dict[str, list[TaskRecord]] = {command_id: [] for command_id in ids}
        for raw in conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM jobctl_tasks WHERE command_id = ANY(%s)"
            " ORDER BY command_id, position",
            (ids,),
        ):
            task = self._task(raw)
            tasks[task.command_id].append(task)
        entities: dict[str, list[Need]] = {command_id: [] for command_id in ids}
        for kind, entity_id, command_id, shared in conn.execute(
            "SELECT type, id, command_id, shared FROM jobctl_entities WHERE command_id = ANY(%s)",
            (ids,),
        ):
            mode = LockMode.SHARED if shared else LockMode.EXCLUSIVE
            entities[command_id].append(Need(Entity(kind, entity_id), mode))
        return [self._command(r, tasks[r[0]], entities[r[0]]) for r in rows]

    def _command(
        self, r: Sequence[Any], tasks: list[TaskRecord], entities: list[Need]
    ) -> CommandRecord:
        try:
            return CommandRecord(
                id=r[0],
                kind=r[1],
                state=CommandState(r[2]),
                outcome=None if r[3] is None else CommandState(r[3]),
                data=loads_object(r[4], "data"),
                result=loads_optional_object(r[5], "result"),
                error=r[6],
                end_attempts=r[7],
                created=r[8],
                updated=r[9],
                tasks=tuple(tasks),
                entities=tuple(sorted(entities, key=_by_entity)),
                domain=r[10],
            )
        except (TypeError, ValueError) as exc:
            raise self._corrupt("jobctl_commands", r[0], str(exc)) from None

    def _load_command(
        self, conn: psycopg.Connection[Any], command_id: str, *, lock: bool
    ) -> CommandRecord:
        found = self._load(conn, "c.id = %s", (command_id,), lock=lock)
        if not found:
            raise JournalNotFoundError(f"no command {command_id!r} in the journal")
        return found[0]

    # -- the JournalStore methods -----------------------------------------------------

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
        """Record a RUNNING command, all its tasks (PENDING) and its entity associations in one
        transaction, before any task starts; a command id already recorded raises
        :class:`JournalStateError`. With ``domain`` the command belongs to that owned domain:
        ``fence`` must hold the domain's current token (:class:`StaleEpochError` otherwise, in
        the same transaction), and so must every later write of the command."""
        data_json = dumps_object(data, f"data of command {command_id!r}")
        params = [dumps_object(spec.params, f"params of task {spec.name!r}") for spec in tasks]
        entity_list = tuple(sorted(entities, key=_by_entity))

        def add(conn: psycopg.Connection[Any]) -> CommandRecord:
            import psycopg.errors

            if domain is not None:
                _check_fence(conn, domain, fence, required=True)
            now = time.time()
            inserted = conn.execute(
                f"INSERT INTO jobctl_commands ({_COMMAND_COLUMNS})"
                " VALUES (%s, %s, 'running', NULL, %s, NULL, NULL, 0, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (command_id, kind, data_json, now, now, domain),
            )
            if inserted.rowcount != 1:
                raise JournalStateError(f"command id {command_id!r} is already in the journal")
            records = []
            for position, (spec, params_json) in enumerate(zip(tasks, params, strict=True)):
                task_id = f"{command_id}.{position}"
                try:
                    with conn.transaction():
                        conn.execute(
                            f"INSERT INTO jobctl_tasks ({_TASK_COLUMNS}) VALUES"
                            " (%s, %s, %s, %s, %s, %s, 'pending', %s, NULL, NULL, %s)",
                            (
                                task_id,
                                command_id,
                                position,
                                spec.name,
                                spec.backend,
                                spec.backend_id,
                                params_json,
                                now,
                            ),
                        )
                except psycopg.errors.UniqueViolation:
                    raise _conflict(conn, spec.backend, spec.backend_id, spec.name) from None
                records.append(
                    TaskRecord(
                        id=task_id,
                        command_id=command_id,
                        position=position,
                        name=spec.name,
                        backend=spec.backend,
                        backend_id=spec.backend_id,
                        state=TaskState.PENDING,
                        params=spec.params,
                        result=None,
                        error=None,
                        updated=now,
                    )
                )
            if entity_list:
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO jobctl_entities (type, id, command_id, shared, active)"
                        " VALUES (%s, %s, %s, %s, TRUE)",
                        [
                            (n.entity.type, n.entity.id, command_id, n.mode is LockMode.SHARED)
                            for n in entity_list
                        ],
                    )
            return CommandRecord(
                id=command_id,
                kind=kind,
                state=CommandState.RUNNING,
                data=data,
                tasks=tuple(records),
                entities=entity_list,
                created=now,
                updated=now,
                outcome=None,
                end_attempts=0,
                result=None,
                error=None,
                domain=domain,
            )

        return await self._run(add, write=True)

    async def update_tasks(
        self, updates: Sequence[TaskUpdate], *, fence: Mapping[str, FencingToken] | None = None
    ) -> tuple[TaskRecord, ...]:
        """Apply task transitions in order, in one transaction, with the command's row locked: each
        must move its task forward and its command must be RUNNING, or none is applied
        (:class:`JournalStateError`). Of two managers racing one transition, exactly one wins.
        A task of an owned domain's command needs that domain's current token in ``fence``
        (:class:`StaleEpochError` otherwise, and nothing is applied)."""
        encoded = [
            (update, dumps_object(update.result, f"result of task {update.task_id!r}"))
            for update in updates
        ]

        def apply(conn: psycopg.Connection[Any]) -> tuple[TaskRecord, ...]:
            import psycopg.errors

            now = time.time()
            out = []
            checked: set[str] = set()
            for update, result_json in encoded:
                owner = conn.execute(
                    "SELECT command_id FROM jobctl_tasks WHERE id = %s", (update.task_id,)
                ).fetchone()
                if owner is None:
                    raise JournalNotFoundError(f"no task {update.task_id!r} in the journal")
                # The command's row lock orders every writer of its tasks.
                command_state, domain = conn.execute(
                    "SELECT state, domain FROM jobctl_commands WHERE id = %s FOR UPDATE", owner
                ).fetchone() or (None, None)
                if domain is not None and domain not in checked:
                    _check_fence(conn, domain, fence, required=True)
                    checked.add(domain)
                raw = conn.execute(
                    f"SELECT {_TASK_COLUMNS} FROM jobctl_tasks WHERE id = %s", (update.task_id,)
                ).fetchone()
                if raw is None or command_state is None:
                    raise self._corrupt("jobctl_tasks", update.task_id, "its command is missing")
                task = self._task(raw)
                backend_id = transition_backend_id(task, command_state, update)
                try:
                    with conn.transaction():
                        conn.execute(
                            "UPDATE jobctl_tasks SET state = %s, backend_id = %s, result = %s,"
                            " error = %s, updated = %s WHERE id = %s",
                            (
                                update.state.value,
                                backend_id,
                                result_json,
                                update.error,
                                now,
                                task.id,
                            ),
                        )
                except psycopg.errors.UniqueViolation:
                    raise _conflict(conn, task.backend, backend_id, task.name) from None
                out.append(task_after(task, update, backend_id, now))
            return tuple(out)

        return await self._run(apply, write=True)

    async def claim_end(
        self,
        command_id: str,
        *,
        max_attempts: int,
        last_error: str | None,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> CommandRecord:
        """Claim the command's end action in one transaction, with the command's row locked
        (two claimants take turns), as :meth:`JournalStore.claim_end` says: RUNNING with its
        tasks over becomes ENDING with one attempt, ENDING gets one more, past ``max_attempts``
        it becomes FAILED, and a final command is returned as it is. An owned domain's command
        needs its current token in ``fence`` (:class:`StaleEpochError`), so a manager whose
        lease was taken over never runs the end action again."""

        def claim(conn: psycopg.Connection[Any]) -> CommandRecord:
            command = self._load_command(conn, command_id, lock=True)
            if command.domain is not None:
                _check_fence(conn, command.domain, fence, required=True)
            if command.state.final:
                return command
            now = time.time()
            decided = claim_of(command, max_attempts, last_error)
            outcome, attempts, error = decided.outcome, decided.attempts, decided.error
            if error is not None:
                conn.execute(
                    "UPDATE jobctl_commands SET state = 'failed', outcome = %s, error = %s,"
                    " updated = %s WHERE id = %s",
                    (outcome.value, error, now, command_id),
                )
                _release_entities(conn, command_id)
                return decided.apply(command, now)
            conn.execute(
                "UPDATE jobctl_commands SET state = 'ending', outcome = %s, end_attempts = %s,"
                " updated = %s WHERE id = %s",
                (outcome.value, attempts, now, command_id),
            )
            return decided.apply(command, now)

        return await self._run(claim, write=True)

    async def finish_command(
        self,
        claimed: CommandRecord,
        state: CommandState,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> CommandRecord:
        """Record the command's end (its end action done), in one transaction; only the latest
        claim may finish it, so a stale claimant's end is refused. An owned domain's command
        needs its current token in ``fence`` (:class:`StaleEpochError`)."""
        if not state.final:
            raise ValueError(f"a command finishes as succeeded or failed, not {state.value!r}")
        command_id = claimed.id
        result_json = dumps_object(result, f"result of the end action of command {command_id!r}")

        def finish(conn: psycopg.Connection[Any]) -> CommandRecord:
            row = conn.execute(
                "SELECT state, end_attempts, outcome, domain FROM jobctl_commands"
                " WHERE id = %s FOR UPDATE",
                (command_id,),
            ).fetchone()
            if row is None:
                raise JournalNotFoundError(f"no command {command_id!r} in the journal")
            current, attempts, outcome, domain = row
            if domain is not None:
                _check_fence(conn, domain, fence, required=True)
            if current != CommandState.ENDING:
                why = "was already recorded" if current != "running" else "was not claimed"
                raise JournalStateError(
                    f"command {command_id!r} is {current}, not ending: its end {why}"
                )
            if attempts != claimed.end_attempts:
                raise JournalStateError(
                    f"command {command_id!r}: attempt {claimed.end_attempts} of its end action"
                    f" finished, but attempt {attempts} holds the claim"
                )
            if state is CommandState.SUCCEEDED and outcome != CommandState.SUCCEEDED:
                raise JournalStateError(
                    f"command {command_id!r} cannot succeed: its outcome is {outcome}"
                )
            now = time.time()
            conn.execute(
                "UPDATE jobctl_commands SET state = %s, result = %s, error = %s, updated = %s"
                " WHERE id = %s",
                (state.value, result_json, error, now, command_id),
            )
            _release_entities(conn, command_id)
            # Tasks and entities cannot change once a command is ENDING.
            return attrs.evolve(claimed, state=state, result=result, error=error, updated=now)

        return await self._run(finish, write=True)

    async def get_command(self, command_id: str) -> CommandRecord:
        """The command and its tasks, as committed; :class:`JournalNotFoundError` for an unknown
        id."""
        return await self._run(
            partial(self._load_command, command_id=command_id, lock=False), write=False
        )

    async def unfinished_commands(self) -> tuple[CommandRecord, ...]:
        """Every command not yet finished, with its tasks: what :func:`recover` resolves."""

        def query(conn: psycopg.Connection[Any]) -> tuple[CommandRecord, ...]:
            return tuple(self._load(conn, "c.state IN ('running', 'ending')", (), lock=False))

        return await self._run(query, write=False)

    async def active_commands(self, entity_type: str, entity_id: str) -> tuple[str, ...]:
        """Ids of the unfinished commands associated with the entity
        ``entity_type``/``entity_id``."""

        def query(conn: psycopg.Connection[Any]) -> tuple[str, ...]:
            rows = conn.execute(
                "SELECT command_id FROM jobctl_entities WHERE type = %s AND id = %s AND active"
                " ORDER BY command_id",
                (entity_type, entity_id),
            ).fetchall()
            return tuple(r[0] for r in rows)

        return await self._run(query, write=False)

    async def save_async_job(
        self, record: AsyncJobRecord, *, fence: Mapping[str, FencingToken] | None = None
    ) -> None:
        """Record (or replace) the domain's async job, in one transaction. When the domain has
        an owner, ``fence`` must hold its current token (:class:`StaleEpochError`)."""
        private = dumps_object(
            record.private, f"private data of the async job on {record.domain!r}"
        )
        values = (
            record.domain,
            record.job_id,
            record.kind.value,
            record.phase,
            record.owner,
            json.dumps(sorted(job.value for job in record.allowed)),
            private,
            record.session,
            record.saved,
        )

        def save(conn: psycopg.Connection[Any]) -> None:
            _check_fence(conn, record.domain, fence, required=False)
            conn.execute(
                f"INSERT INTO jobctl_async_jobs ({_ASYNC_COLUMNS}) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (domain) DO UPDATE SET"
                " job_id = EXCLUDED.job_id, kind = EXCLUDED.kind, phase = EXCLUDED.phase,"
                " owner = EXCLUDED.owner, allowed = EXCLUDED.allowed,"
                " private = EXCLUDED.private, session = EXCLUDED.session,"
                " saved = EXCLUDED.saved",
                values,
            )

        await self._run(save, write=True)

    async def clear_async_job(
        self,
        domain: str,
        job_id: int,
        session: str,
        *,
        fence: Mapping[str, FencingToken] | None = None,
    ) -> None:
        """Remove the domain's async job record if it is still this job of this session; another's
        record is left alone. When the domain has an owner, ``fence`` must hold its current token
        (:class:`StaleEpochError`)."""

        def clear(conn: psycopg.Connection[Any]) -> None:
            _check_fence(conn, domain, fence, required=False)
            conn.execute(
                "DELETE FROM jobctl_async_jobs WHERE domain = %s AND job_id = %s AND session = %s",
                (domain, job_id, session),
            )

        await self._run(clear, write=True)

    async def async_jobs(self) -> tuple[AsyncJobRecord, ...]:
        """Every recorded async job: what recovery finds still running."""

        def query(conn: psycopg.Connection[Any]) -> tuple[AsyncJobRecord, ...]:
            rows = conn.execute(
                f"SELECT {_ASYNC_COLUMNS} FROM jobctl_async_jobs ORDER BY domain"
            ).fetchall()
            return tuple(self._async_job(r) for r in rows)

        return await self._run(query, write=False)

    # -- domain leases ------------------------------------------------------------------

    async def acquire_lease(self, domain: str, owner: str, duration: float) -> LeaseGrant:
        """Take ``domain`` for ``owner`` for ``duration`` seconds on the database's clock, if
        nobody holds it: never taken, released, or expired on the database's clock. The epoch
        grows by one (1 for the first owner). A live lease, even ``owner``'s own, raises
        :class:`LeaseHeldError` naming its holder: a manager never takes over its own live
        lease, since another process may be running under that name."""
        _check_lease_args(domain, owner, duration)

        def acquire(conn: psycopg.Connection[Any]) -> LeaseGrant:
            row = conn.execute(
                "INSERT INTO jobctl_leases AS l (domain, owner, epoch, expires, acquired)"
                " VALUES (%(d)s, %(o)s, 1, clock_timestamp() + make_interval(secs => %(s)s),"
                " clock_timestamp())"
                " ON CONFLICT (domain) DO UPDATE SET owner = EXCLUDED.owner,"
                " epoch = l.epoch + 1, expires = EXCLUDED.expires, acquired = EXCLUDED.acquired"
                " WHERE l.owner IS NULL OR l.expires <= clock_timestamp()"
                f" RETURNING {_GRANT}",
                {"d": domain, "o": owner, "s": duration},
            ).fetchone()
            if row is not None:
                return _grant(domain, owner, row)
            held = conn.execute(
                "SELECT owner, epoch, EXTRACT(EPOCH FROM expires - clock_timestamp())::float8"
                " FROM jobctl_leases WHERE domain = %s",
                (domain,),
            ).fetchone()
            assert held is not None
            holder, epoch, remaining = held
            raise LeaseHeldError(
                f"domain {domain!r} is owned by {holder!r} at epoch {epoch} for"
                f" {max(remaining, 0.0):.1f} s more; {owner!r} cannot take it",
                domain=domain,
                owner=holder,
                epoch=epoch,
                remaining=remaining,
            )

        return await self._run(acquire, write=True)

    async def renew_lease(self, token: FencingToken, duration: float) -> LeaseGrant:
        """Extend ``token``'s lease to ``duration`` seconds from now on the database's clock,
        if it is still the domain's current one (even past its expiry, as long as nobody took
        the domain since: then nobody else acted in between). :class:`StaleEpochError` naming
        the current owner otherwise."""
        _check_lease_args(token.domain, token.owner, duration)

        def renew(conn: psycopg.Connection[Any]) -> LeaseGrant:
            row = conn.execute(
                "UPDATE jobctl_leases AS l SET expires = clock_timestamp()"
                " + make_interval(secs => %s) WHERE domain = %s AND owner = %s AND epoch = %s"
                f" RETURNING {_GRANT}",
                (duration, token.domain, token.owner, token.epoch),
            ).fetchone()
            if row is None:
                raise _stale(conn, token, "lease renewal")
            return _grant(token.domain, token.owner, row)

        return await self._run(renew, write=True)

    async def renew_leases(
        self, tokens: Sequence[FencingToken], duration: float
    ) -> tuple[tuple[LeaseGrant, ...], tuple[StaleEpochError, ...]]:
        """:meth:`renew_lease` for many leases in one transaction (one statement): the grants
        of the ones still current, and a :class:`StaleEpochError` naming the owner now for each
        of the others."""
        for token in tokens:
            _check_lease_args(token.domain, token.owner, duration)

        def renew(
            conn: psycopg.Connection[Any],
        ) -> tuple[tuple[LeaseGrant, ...], tuple[StaleEpochError, ...]]:
            if not tokens:
                return (), ()
            rows = conn.execute(
                "UPDATE jobctl_leases AS l SET expires = clock_timestamp()"
                " + make_interval(secs => %s) FROM unnest(%s::text[], %s::text[], %s::bigint[])"
                " AS t(domain, owner, epoch)"
                " WHERE l.domain = t.domain AND l.owner = t.owner AND l.epoch = t.epoch"
                f" RETURNING l.domain, {_GRANT}",
                (
                    duration,
                    [t.domain for t in tokens],
                    [t.owner for t in tokens],
                    [t.epoch for t in tokens],
                ),
            ).fetchall()
            by_domain = {t.domain: t for t in tokens}
            grants = tuple(_grant(r[0], by_domain[r[0]].owner, r[1:]) for r in rows)
            renewed = {grant.token.domain for grant in grants}
            stale = tuple(
                _stale(conn, token, "lease renewal")
                for token in tokens
                if token.domain not in renewed
            )
            return grants, stale

        return await self._run(renew, write=True)

    async def release_lease(self, token: FencingToken) -> None:
        """Give the domain up at once (its epoch stays; the next owner gets the next one), if
        ``token`` is still current; :class:`StaleEpochError` naming the owner otherwise."""

        def release(conn: psycopg.Connection[Any]) -> None:
            done = conn.execute(
                "UPDATE jobctl_leases SET owner = NULL, expires = clock_timestamp()"
                " WHERE domain = %s AND owner = %s AND epoch = %s",
                (token.domain, token.owner, token.epoch),
            )
            if done.rowcount != 1:
                raise _stale(conn, token, "lease release")

        await self._run(release, write=True)

    async def leases(self) -> tuple[LeaseRecord, ...]:
        """Every domain's lease row, by domain, with whether it has expired on the database's
        clock (a released lease counts as expired): what a manager looks at to take domains
        over."""

        def query(conn: psycopg.Connection[Any]) -> tuple[LeaseRecord, ...]:
            rows = conn.execute(
                "SELECT domain, owner, epoch, EXTRACT(EPOCH FROM expires)::float8,"
                " owner IS NULL OR expires <= clock_timestamp() FROM jobctl_leases ORDER BY domain"
            ).fetchall()
            return tuple(LeaseRecord(r[0], r[1], r[2], r[3], r[4]) for r in rows)

        return await self._run(query, write=False)

    def _async_job(self, r: Sequence[Any]) -> AsyncJobRecord:
        try:
            allowed = json.loads(r[5])
            if not isinstance(allowed, list):
                raise TypeError("column 'allowed' is not a JSON list")
            return AsyncJobRecord(
                domain=r[0],
                job_id=r[1],
                kind=AsyncJob(r[2]),
                phase=r[3],
                owner=r[4],
                allowed=frozenset(Job(value) for value in allowed),
                private=loads_object(r[6], "private"),
                session=r[7],
                saved=r[8],
            )
        except (TypeError, ValueError) as exc:
            raise self._corrupt("jobctl_async_jobs", r[0], str(exc)) from None


_GRANT: Final = (
    "l.epoch, EXTRACT(EPOCH FROM l.expires)::float8,"
    " EXTRACT(EPOCH FROM l.expires - clock_timestamp())::float8"
)


def _grant(domain: str, owner: str, row: Sequence[Any]) -> LeaseGrant:
    return LeaseGrant(FencingToken(domain, owner, row[0]), expires=row[1], remaining=row[2])


def _check_lease_args(domain: object, owner: object, duration: object) -> None:
    if not isinstance(domain, str) or not domain:
        raise ValueError(f"a domain is a non-empty string, not {domain!r}")
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"a lease owner is a non-empty string, not {owner!r}")
    if not isinstance(duration, int | float) or not 0 < duration < 86400:
        raise ValueError(f"a lease lasts more than 0 and less than 86400 s, not {duration!r}")


def _lease_row(conn: psycopg.Connection[Any], domain: str) -> tuple[str | None, int | None]:
    """The domain's (owner, epoch), its row locked against takeover until the
    transaction ends; (None, None) when no lease was ever taken."""
    row = conn.execute(
        "SELECT owner, epoch FROM jobctl_leases WHERE domain = %s FOR SHARE", (domain,)
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def _stale(conn: psycopg.Connection[Any], token: FencingToken, what: str) -> StaleEpochError:
    owner, epoch = _lease_row(conn, token.domain)
    return stale_epoch(token.domain, token, owner, epoch, what)


def _check_fence(
    conn: psycopg.Connection[Any],
    domain: str,
    fence: Mapping[str, FencingToken] | None,
    *,
    required: bool,
) -> None:
    """Refuse a write for ``domain`` unless ``fence`` holds its current token
    (:class:`StaleEpochError`). Without a token the write passes only if it is
    not ``required`` and the domain has no owner. The lease row stays locked
    (``FOR SHARE``) until the write commits: a takeover waits for it, so the
    new owner's recovery sees every write this check let through."""
    owner, epoch = _lease_row(conn, domain)
    token = None if fence is None else fence.get(domain)
    if token is None:
        if required or owner is not None:
            raise stale_epoch(domain, None, owner, epoch)
        return
    if (owner, epoch) != (token.owner, token.epoch):
        raise stale_epoch(domain, token, owner, epoch)


def _release_entities(conn: psycopg.Connection[Any], command_id: str) -> None:
    conn.execute(
        "UPDATE jobctl_entities SET active = FALSE WHERE command_id = %s AND active", (command_id,)
    )


def _conflict(
    conn: psycopg.Connection[Any], backend: str, backend_id: str | None, name: str
) -> JournalStateError:
    holder = conn.execute(
        "SELECT id FROM jobctl_tasks WHERE backend = %s AND backend_id = %s"
        " AND state NOT IN ('succeeded', 'failed')",
        (backend, backend_id),
    ).fetchone()
    return backend_conflict(None if holder is None else str(holder[0]), backend, backend_id, name)


def _create_or_check(conn: psycopg.Connection[Any], name: str) -> str:
    """Make the schema in a database without it, or check the one there;
    return the journal's id. Creators take turns on an advisory lock held
    until their transaction ends."""
    import uuid

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        }
        ours = {"jobctl_meta", "jobctl_commands", "jobctl_tasks", "jobctl_entities"}
        if "jobctl_meta" not in tables:
            if tables & ours:
                raise JournalSchemaError(
                    f"{name} holds some of the journal's tables but no jobctl_meta: not a"
                    " jobctl journal, or a damaged one; it was left unchanged"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            journal_id = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO jobctl_meta (id, version, journal_id, created) VALUES (1, %s, %s, %s)",
                (POSTGRES_SCHEMA_VERSION, journal_id, time.time()),
            )
            return journal_id
        row = conn.execute("SELECT version, journal_id FROM jobctl_meta WHERE id = 1").fetchone()
        if row is None:
            raise JournalSchemaError(f"{name}: its jobctl_meta table is empty; left unchanged")
        version, journal_id = row
        if version > POSTGRES_SCHEMA_VERSION:
            raise JournalSchemaError(
                f"journal {name} has schema version {version}, newer than this jobctl's"
                f" {POSTGRES_SCHEMA_VERSION}; upgrade jobctl (the database was left unchanged)"
            )
        if version == 1 and ours <= tables and "jobctl_leases" not in tables:
            for statement in _UPGRADE_1:
                conn.execute(statement)
            conn.execute("UPDATE jobctl_meta SET version = %s", (POSTGRES_SCHEMA_VERSION,))
            return str(journal_id)
        if version != POSTGRES_SCHEMA_VERSION or not ours | {"jobctl_leases"} <= tables:
            raise JournalSchemaError(
                f"journal {name} has schema version {version} but not this version's tables;"
                " it was left unchanged"
            )
        return str(journal_id)
