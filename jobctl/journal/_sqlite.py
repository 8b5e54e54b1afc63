"""The default journal store: one SQLite file in WAL mode.

Writes go through one connection, on one worker thread at a time, and are
group-committed: the requests that queue up while a transaction commits are
applied together in the next one, each inside its own savepoint, so one bad
request fails alone and one ``fsync`` serves them all. Reads use a small pool
of read-only connections: in WAL mode they neither wait for the writer nor
for each other. The event loop never blocks on the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, Literal, TypeVar, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._kinds import AsyncJob, Job

from ._errors import (
    JournalClosedError,
    JournalCorruptError,
    JournalError,
    JournalInUseError,
    JournalNotFoundError,
    JournalSchemaError,
    JournalStateError,
)
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    EntityRef,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskUpdate,
)

__all__ = ["SCHEMA_VERSION", "SqliteJournalStore", "SqliteStoreStatistics"]

T = TypeVar("T")

#: ``PRAGMA application_id`` of a jobctl journal ("jobj").
APPLICATION_ID: Final = 0x6A6F626A
#: ``PRAGMA user_version`` of the schema this module writes.
SCHEMA_VERSION: Final = 1
#: Most write requests one transaction applies.
_MAX_BATCH: Final = 512

_SCHEMA: Final = (
    """CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'ending', 'succeeded', 'failed')),
        outcome TEXT CHECK (outcome IN ('succeeded', 'failed')),
        data TEXT NOT NULL,
        result TEXT,
        error TEXT,
        end_attempts INTEGER NOT NULL CHECK (end_attempts >= 0),
        created REAL NOT NULL,
        updated REAL NOT NULL
    ) STRICT""",
    "CREATE INDEX commands_unfinished ON commands (created, id)"
    " WHERE state IN ('running', 'ending')",
    """CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        command_id TEXT NOT NULL REFERENCES commands (id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        backend TEXT NOT NULL,
        backend_id TEXT,
        state TEXT NOT NULL
            CHECK (state IN ('pending', 'starting', 'running', 'succeeded', 'failed')),
        params TEXT NOT NULL,
        result TEXT,
        error TEXT,
        updated REAL NOT NULL,
        UNIQUE (command_id, position),
        UNIQUE (command_id, name)
    ) STRICT""",
    # One unfinished task per backend id: recovery must know whose work it is.
    "CREATE UNIQUE INDEX tasks_active_backend_id ON tasks (backend, backend_id)"
    " WHERE backend_id IS NOT NULL AND state NOT IN ('succeeded', 'failed')",
    """CREATE TABLE entities (
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        command_id TEXT NOT NULL REFERENCES commands (id),
        shared INTEGER NOT NULL CHECK (shared IN (0, 1)),
        active INTEGER NOT NULL CHECK (active IN (0, 1)),
        PRIMARY KEY (type, id, command_id)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX entities_active ON entities (type, id) WHERE active = 1",
    "CREATE INDEX entities_command ON entities (command_id)",
    """CREATE TABLE async_jobs (
        domain TEXT PRIMARY KEY,
        job_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        phase TEXT NOT NULL,
        owner TEXT,
        allowed TEXT NOT NULL,
        private TEXT NOT NULL,
        session TEXT NOT NULL,
        saved REAL NOT NULL
    ) STRICT""",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_COMMAND_COLUMNS: Final = (
    "c.id, c.kind, c.state, c.data, c.created, c.updated, c.outcome, c.end_attempts,"
    " c.result, c.error"
)
_TASK_COLUMNS: Final = (
    "t.id, t.command_id, t.position, t.name, t.backend, t.backend_id, t.state, t.params,"
    " t.result, t.error, t.updated"
)
_UNFINISHED: Final = "c.state IN ('running', 'ending')"


@final
@attrs.frozen
class SqliteStoreStatistics:
    """Counters of one :class:`SqliteJournalStore` since it was opened."""

    path: str
    #: Write transactions committed (each one ``fsync`` with ``synchronous="full"``).
    transactions: int
    #: Write requests applied; ``writes / transactions`` is the mean batch.
    writes: int
    largest_batch: int
    reads: int
    #: Reads running right now.
    reads_in_flight: int
    closed: bool


@attrs.define(eq=False)
class _Write(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    result: T | None = None
    error: Exception | None = None
    done: bool = False


def _dumps(value: Mapping[str, Any] | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be a JSON object: {exc}") from None


def _loads(text: object, column: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise TypeError(f"column {column!r} holds {type(text).__name__}, not JSON text")
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"column {column!r} holds JSON {type(value).__name__}, not an object")
    return value


def _loads_optional(text: object, column: str) -> dict[str, Any] | None:
    return None if text is None else _loads(text, column)


def _corrupt(table: str, row: object, exc: Exception) -> JournalCorruptError:
    return JournalCorruptError(
        f"corrupt row in journal table {table!r} (key {row!r}): {exc}", table=table, row=str(row)
    )


def _task_from_row(row: Sequence[Any]) -> TaskRecord:
    try:
        return TaskRecord(
            id=row[0],
            command_id=row[1],
            position=row[2],
            name=row[3],
            backend=row[4],
            backend_id=row[5],
            state=TaskState(row[6]),
            params=_loads(row[7], "params"),
            result=_loads_optional(row[8], "result"),
            error=row[9],
            updated=row[10],
        )
    except (TypeError, ValueError) as exc:
        raise _corrupt("tasks", row[0], exc) from None


def _command_from_row(
    row: Sequence[Any], tasks: tuple[TaskRecord, ...], entities: tuple[EntityRef, ...]
) -> CommandRecord:
    try:
        state = CommandState(row[2])
        outcome = None if row[6] is None else CommandState(row[6])
        if state is not CommandState.RUNNING and outcome is None:
            raise ValueError(f"a command in state {state.value!r} must have an outcome")
        return CommandRecord(
            id=row[0],
            kind=row[1],
            state=state,
            data=_loads(row[3], "data"),
            tasks=tasks,
            entities=entities,
            created=row[4],
            updated=row[5],
            outcome=outcome,
            end_attempts=row[7],
            result=_loads_optional(row[8], "result"),
            error=row[9],
        )
    except (TypeError, ValueError) as exc:
        raise _corrupt("commands", row[0], exc) from None


def _async_job_from_row(row: Sequence[Any]) -> AsyncJobRecord:
    try:
        allowed = json.loads(row[5])
        if not isinstance(allowed, list):
            raise TypeError("column 'allowed' is not a JSON list")
        return AsyncJobRecord(
            domain=row[0],
            job_id=row[1],
            kind=AsyncJob(row[2]),
            phase=row[3],
            owner=row[4],
            allowed=frozenset(Job(value) for value in allowed),
            private=_loads(row[6], "private"),
            session=row[7],
            saved=row[8],
        )
    except (TypeError, ValueError) as exc:
        raise _corrupt("async_jobs", row[0], exc) from None


def _load_commands(
    conn: sqlite3.Connection, where: str, params: Sequence[Any]
) -> tuple[CommandRecord, ...]:
    """Commands matching ``where`` (over alias ``c``) with tasks and entities."""
    rows = conn.execute(
        f"SELECT {_COMMAND_COLUMNS} FROM commands c WHERE {where} ORDER BY c.created, c.id",
        params,
    ).fetchall()
    if not rows:
        return ()
    tasks: dict[str, list[TaskRecord]] = {row[0]: [] for row in rows}
    for task_row in conn.execute(
        f"SELECT {_TASK_COLUMNS} FROM tasks t JOIN commands c ON c.id = t.command_id"
        f" WHERE {where} ORDER BY t.command_id, t.position",
        params,
    ):
        tasks[task_row[1]].append(_task_from_row(task_row))
    entities: dict[str, list[EntityRef]] = {row[0]: [] for row in rows}
    for command_id, type_, id_, shared in conn.execute(
        "SELECT e.command_id, e.type, e.id, e.shared FROM entities e"
        f" JOIN commands c ON c.id = e.command_id WHERE {where} ORDER BY e.type, e.id",
        params,
    ):
        try:
            entities[command_id].append(EntityRef(type_, id_, bool(shared)))
        except (TypeError, ValueError) as exc:
            raise _corrupt("entities", f"{type_}/{id_}/{command_id}", exc) from None
    return tuple(
        _command_from_row(row, tuple(tasks[row[0]]), tuple(entities[row[0]])) for row in rows
    )


def _load_command(conn: sqlite3.Connection, command_id: str) -> CommandRecord:
    found = _load_commands(conn, "c.id = ?", (command_id,))
    if not found:
        raise JournalNotFoundError(f"no command {command_id!r} in the journal")
    return found[0]


def _translate(exc: Exception, path: str) -> Exception:
    """Turn SQLite's errors into journal errors; leave the journal's own alone."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    message = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in message or "not a database" in message
    ):
        return JournalCorruptError(f"journal file {path!r} is damaged: {message}")
    return JournalError(f"journal file {path!r}: {type(exc).__name__}: {message}")


@final
class SqliteJournalStore:
    """A :class:`JournalStore` in one SQLite file (WAL mode).

    Open it with ``store = await SqliteJournalStore.open(path)`` and close it
    with ``await store.aclose()`` (or ``async with store:``).

    Guarantees:

    * A method's write is committed (and with ``synchronous="full"``, the
      default, ``fsync``-ed) before it returns; with ``"normal"`` it survives
      the process being killed but not the machine losing power.
    * Once a write was queued, cancelling its caller does not abandon it: the
      caller waits for the outcome (as ``anyio.to_thread.run_sync`` does).
    * One writer per file: a second store on the same file, in any process,
      fails with :class:`JournalInUseError` while the first is open.
    * A file with a newer schema or another application's data raises
      :class:`JournalSchemaError` and is left untouched.
    """

    __slots__ = (
        "_closed",
        "_largest_batch",
        "_lock_fd",
        "_path",
        "_queue",
        "_read_limiter",
        "_readers",
        "_reads",
        "_reads_done",
        "_reads_in_flight",
        "_transactions",
        "_write_limiter",
        "_write_lock",
        "_writer",
        "_writes",
    )

    def __init__(self, path: str, writer: sqlite3.Connection, lock_fd: int, readers: int) -> None:
        # Private: use ``await SqliteJournalStore.open(path)``.
        self._path = path
        self._writer = writer
        self._lock_fd = lock_fd
        self._closed = False
        self._queue: list[_Write[Any]] = []
        self._write_lock = anyio.Lock()
        self._write_limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(readers)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._reads_in_flight = 0
        self._reads_done: anyio.Event | None = None
        self._transactions = 0
        self._writes = 0
        self._largest_batch = 0
        self._reads = 0

    # -- opening and closing ---------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["full", "normal"] = "full",
        readers: int = 4,
    ) -> SqliteJournalStore:
        """Open (creating if needed) the journal at ``path``.

        ``readers`` is how many reads may run at once, each on its own
        connection. Raises :class:`JournalSchemaError` for a file this version
        cannot use and :class:`JournalInUseError` if another store has it open.
        """
        path = os.fspath(path)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"the journal needs a file path, not {path!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers!r}")
        writer, lock_fd = await anyio.to_thread.run_sync(_open_writer, path, synchronous)
        return cls(path, writer, lock_fd, readers)

    async def __aenter__(self) -> SqliteJournalStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for the writes and reads in flight, then close. Idempotent."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                pass
            while self._reads_in_flight:
                self._reads_done = anyio.Event()
                await self._reads_done.wait()
            await anyio.to_thread.run_sync(self._close_connections)

    def _close_connections(self) -> None:
        try:
            while True:
                try:
                    self._readers.get_nowait().close()
                except queue.Empty:
                    break
            self._writer.close()
        finally:
            os.close(self._lock_fd)

    @property
    def path(self) -> str:
        """The journal file."""
        return self._path

    def statistics(self) -> SqliteStoreStatistics:
        """Counters since the store was opened."""
        return SqliteStoreStatistics(
            path=self._path,
            transactions=self._transactions,
            writes=self._writes,
            largest_batch=self._largest_batch,
            reads=self._reads,
            reads_in_flight=self._reads_in_flight,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SqliteJournalStore {self._path!r} ({state})>"

    # -- the writer: group commit ---------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise JournalClosedError(f"the journal store {self._path!r} is closed")
        request: _Write[T] = _Write(fn)
        self._queue.append(request)
        # Once queued the request is committed by us or by whoever holds the
        # lock now; either way we wait for its outcome, even if cancelled.
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                if not request.done:
                    batch, self._queue = self._queue, []
                    try:
                        for start in range(0, len(batch), _MAX_BATCH):
                            chunk = batch[start : start + _MAX_BATCH]
                            await anyio.to_thread.run_sync(
                                self._run_batch, chunk, limiter=self._write_limiter
                            )
                            self._transactions += 1
                            self._writes += len(chunk)
                            self._largest_batch = max(self._largest_batch, len(chunk))
                    finally:
                        for other in batch:
                            if not other.done:
                                other.error = JournalError("the write never reached the journal")
                                other.done = True
        assert request.done
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _run_batch(self, batch: list[_Write[Any]]) -> None:
        """Apply ``batch`` in one transaction (worker thread)."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            for request in batch:
                request.error, request.done = _translate(exc, self._path), True
            return
        try:
            for request in batch:
                conn.execute("SAVEPOINT request")
                try:
                    request.result = request.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO request")
                    request.error = _translate(exc, self._path)
                conn.execute("RELEASE request")
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of the batch was committed: every request fails.
            for request in batch:
                request.result = None
                request.error = (
                    _translate(exc, self._path)
                    if isinstance(exc, Exception)
                    else JournalError("the write was interrupted")
                )
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise
        finally:
            for request in batch:
                request.done = True

    # -- reads -------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise JournalClosedError(f"the journal store {self._path!r} is closed")
        self._reads_in_flight += 1
        self._reads += 1
        try:
            return await anyio.to_thread.run_sync(self._run_read, fn, limiter=self._read_limiter)
        finally:
            self._reads_in_flight -= 1
            if not self._reads_in_flight and self._reads_done is not None:
                self._reads_done.set()

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction on a pooled connection (worker thread)."""
        try:
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                conn = _connect(self._path)
                conn.execute("PRAGMA query_only = ON")
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            finally:
                self._readers.put(conn)
        except Exception as exc:
            translated = _translate(exc, self._path)
            if translated is exc:
                raise
            raise translated from exc

    # -- JournalStore --------------------------------------------------------------

    async def add_command(
        self,
        command_id: str,
        kind: str,
        data: Mapping[str, Any],
        tasks: Sequence[TaskSpec],
        entities: Iterable[EntityRef],
    ) -> CommandRecord:
        data_json = _dumps(data, f"data of command {command_id!r}")
        task_rows = [
            (
                f"{command_id}.{position}",
                command_id,
                position,
                spec.name,
                spec.backend,
                spec.backend_id,
                _dumps(spec.params, f"params of task {spec.name!r}"),
            )
            for position, spec in enumerate(tasks)
        ]
        entity_list = tuple(sorted(entities, key=lambda e: (e.type, e.id)))

        def add(conn: sqlite3.Connection) -> CommandRecord:
            now = time.time()
            if conn.execute("SELECT 1 FROM commands WHERE id = ?", (command_id,)).fetchone():
                raise JournalStateError(f"command id {command_id!r} is already in the journal")
            conn.execute(
                "INSERT INTO commands (id, kind, state, data, end_attempts, created, updated)"
                " VALUES (?, ?, 'running', ?, 0, ?, ?)",
                (command_id, kind, data_json, now, now),
            )
            for row in task_rows:
                try:
                    conn.execute(
                        "INSERT INTO tasks (id, command_id, position, name, backend, backend_id,"
                        " state, params, updated) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                        (*row, now),
                    )
                except sqlite3.IntegrityError:
                    raise _conflict(conn, row[4], row[5], row[3]) from None
            conn.executemany(
                "INSERT INTO entities (type, id, command_id, shared, active)"
                " VALUES (?, ?, ?, ?, 1)",
                [(e.type, e.id, command_id, int(e.shared)) for e in entity_list],
            )
            return CommandRecord(
                id=command_id,
                kind=kind,
                state=CommandState.RUNNING,
                data=data,
                tasks=tuple(
                    TaskRecord(
                        id=row[0],
                        command_id=command_id,
                        position=row[2],
                        name=row[3],
                        backend=row[4],
                        backend_id=row[5],
                        state=TaskState.PENDING,
                        params=spec.params,
                        result=None,
                        error=None,
                        updated=now,
                    )
                    for row, spec in zip(task_rows, tasks, strict=True)
                ),
                entities=entity_list,
                created=now,
                updated=now,
                outcome=None,
                end_attempts=0,
                result=None,
                error=None,
            )

        return await self._write(add)

    async def update_tasks(self, updates: Sequence[TaskUpdate]) -> tuple[TaskRecord, ...]:
        encoded = [
            (update, _dumps(update.result, f"result of task {update.task_id!r}"))
            for update in updates
        ]

        def apply(conn: sqlite3.Connection) -> tuple[TaskRecord, ...]:
            now = time.time()
            out = []
            for update, result_json in encoded:
                row = conn.execute(
                    f"SELECT {_TASK_COLUMNS}, c.state FROM tasks t"
                    " JOIN commands c ON c.id = t.command_id WHERE t.id = ?",
                    (update.task_id,),
                ).fetchone()
                if row is None:
                    raise JournalNotFoundError(f"no task {update.task_id!r} in the journal")
                task = _task_from_row(row)
                if row[-1] != CommandState.RUNNING:
                    raise JournalStateError(
                        f"task {task.id!r} ({task.name}) belongs to command {task.command_id!r},"
                        f" which is {row[-1]}: its tasks can no longer change"
                    )
                if update.state.rank <= task.state.rank:
                    raise JournalStateError(
                        f"task {task.id!r} ({task.name}) cannot go from {task.state.value}"
                        f" to {update.state.value}"
                    )
                backend_id = task.backend_id
                if update.backend_id is not None and update.backend_id != backend_id:
                    if backend_id is not None:
                        raise JournalStateError(
                            f"task {task.id!r} ({task.name}) already has backend id"
                            f" {backend_id!r}, not {update.backend_id!r}"
                        )
                    backend_id = update.backend_id
                try:
                    conn.execute(
                        "UPDATE tasks SET state = ?, backend_id = ?, result = ?, error = ?,"
                        " updated = ? WHERE id = ?",
                        (update.state, backend_id, result_json, update.error, now, task.id),
                    )
                except sqlite3.IntegrityError:
                    raise _conflict(conn, task.backend, backend_id, task.name) from None
                out.append(
                    attrs.evolve(
                        task,
                        state=update.state,
                        backend_id=backend_id,
                        result=update.result,
                        error=update.error,
                        updated=now,
                    )
                )
            return tuple(out)

        return await self._write(apply)

    async def claim_end(
        self, command_id: str, *, max_attempts: int, last_error: str | None
    ) -> CommandRecord:
        def claim(conn: sqlite3.Connection) -> CommandRecord:
            command = _load_command(conn, command_id)
            if command.state.final:
                return command
            now = time.time()
            if command.state is CommandState.RUNNING:
                unfinished = command.unfinished_tasks
                if unfinished:
                    names = ", ".join(f"{t.name} ({t.state.value})" for t in unfinished)
                    raise JournalStateError(
                        f"command {command_id!r} cannot end: {len(unfinished)} of its tasks"
                        f" are not over: {names}"
                    )
                ok = all(t.state is TaskState.SUCCEEDED for t in command.tasks)
                outcome = CommandState.SUCCEEDED if ok else CommandState.FAILED
                attempts = 1
            else:
                assert command.outcome is not None
                outcome, attempts = command.outcome, command.end_attempts + 1
            if attempts > max_attempts:
                why = (
                    f"last error: {last_error}"
                    if last_error
                    else "the process stopped while it ran"
                )
                error = f"end action did not complete in {max_attempts} attempts ({why})"
                conn.execute(
                    "UPDATE commands SET state = 'failed', outcome = ?, error = ?, updated = ?"
                    " WHERE id = ?",
                    (outcome, error, now, command_id),
                )
                conn.execute("UPDATE entities SET active = 0 WHERE command_id = ?", (command_id,))
                return attrs.evolve(
                    command, state=CommandState.FAILED, outcome=outcome, error=error, updated=now
                )
            conn.execute(
                "UPDATE commands SET state = 'ending', outcome = ?, end_attempts = ?, updated = ?"
                " WHERE id = ?",
                (outcome, attempts, now, command_id),
            )
            return attrs.evolve(
                command,
                state=CommandState.ENDING,
                outcome=outcome,
                end_attempts=attempts,
                updated=now,
            )

        return await self._write(claim)

    async def finish_command(
        self,
        claimed: CommandRecord,
        state: CommandState,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> CommandRecord:
        if not state.final:
            raise ValueError(f"a command finishes as succeeded or failed, not {state.value!r}")
        command_id = claimed.id
        result_json = _dumps(result, f"result of the end action of command {command_id!r}")

        def finish(conn: sqlite3.Connection) -> CommandRecord:
            row = conn.execute(
                "SELECT state, outcome, end_attempts FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
            if row is None:
                raise JournalNotFoundError(f"no command {command_id!r} in the journal")
            if row[0] != CommandState.ENDING:
                why = "was already recorded" if row[0] != "running" else "was not claimed"
                raise JournalStateError(
                    f"command {command_id!r} is {row[0]}, not ending: its end {why}"
                )
            if row[2] != claimed.end_attempts:
                raise JournalStateError(
                    f"command {command_id!r}: attempt {claimed.end_attempts} of its end action"
                    f" finished, but attempt {row[2]} holds the claim"
                )
            if state is CommandState.SUCCEEDED and row[1] != CommandState.SUCCEEDED:
                raise JournalStateError(
                    f"command {command_id!r} cannot succeed: its outcome is {row[1]}"
                )
            now = time.time()
            conn.execute(
                "UPDATE commands SET state = ?, result = ?, error = ?, updated = ? WHERE id = ?",
                (state, result_json, error, now, command_id),
            )
            conn.execute("UPDATE entities SET active = 0 WHERE command_id = ?", (command_id,))
            # Tasks and entities cannot change once a command is ENDING.
            return attrs.evolve(claimed, state=state, result=result, error=error, updated=now)

        return await self._write(finish)

    async def get_command(self, command_id: str) -> CommandRecord:
        return await self._read(lambda conn: _load_command(conn, command_id))

    async def unfinished_commands(self) -> tuple[CommandRecord, ...]:
        return await self._read(lambda conn: _load_commands(conn, _UNFINISHED, ()))

    async def active_commands(self, entity_type: str, entity_id: str) -> tuple[str, ...]:
        def query(conn: sqlite3.Connection) -> tuple[str, ...]:
            rows = conn.execute(
                "SELECT command_id FROM entities WHERE type = ? AND id = ? AND active = 1"
                " ORDER BY command_id",
                (entity_type, entity_id),
            ).fetchall()
            return tuple(row[0] for row in rows)

        return await self._read(query)

    async def save_async_job(self, record: AsyncJobRecord) -> None:
        private = _dumps(record.private, f"private data of the async job on {record.domain!r}")
        allowed = json.dumps(sorted(job.value for job in record.allowed))
        row = (
            record.domain,
            record.job_id,
            record.kind.value,
            record.phase,
            record.owner,
            allowed,
            private,
            record.session,
            record.saved,
        )

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO async_jobs (domain, job_id, kind, phase, owner, allowed,"
                " private, session, saved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._write(save)

    async def clear_async_job(self, domain: str, job_id: int, session: str) -> None:
        def clear(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM async_jobs WHERE domain = ? AND job_id = ? AND session = ?",
                (domain, job_id, session),
            )

        await self._write(clear)

    async def async_jobs(self) -> tuple[AsyncJobRecord, ...]:
        def query(conn: sqlite3.Connection) -> tuple[AsyncJobRecord, ...]:
            rows = conn.execute(
                "SELECT domain, job_id, kind, phase, owner, allowed, private, session, saved"
                " FROM async_jobs ORDER BY domain"
            ).fetchall()
            return tuple(_async_job_from_row(row) for row in rows)

        return await self._read(query)


def _conflict(
    conn: sqlite3.Connection, backend: str, backend_id: str | None, name: str
) -> JournalStateError:
    holder = conn.execute(
        "SELECT id FROM tasks WHERE backend = ? AND backend_id = ?"
        " AND state NOT IN ('succeeded', 'failed')",
        (backend, backend_id),
    ).fetchone()
    if holder is not None:
        return JournalStateError(
            f"task {name!r}: backend id {backend_id!r} on {backend!r} is already used by"
            f" unfinished task {holder[0]!r}"
        )
    return JournalStateError(f"task {name!r} conflicts with a task already in the journal")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _open_writer(path: str, synchronous: str) -> tuple[sqlite3.Connection, int]:
    """Take the writer lock, check or create the schema (worker thread)."""
    lock_fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalInUseError(
                f"journal {path!r} is already open for writing (lock file {path}-lock)"
            ) from None
        conn = _connect(path)
        try:
            _check_schema(conn, path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"journal {path!r} cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        except BaseException:
            conn.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    return conn, lock_fd


def _check_schema(conn: sqlite3.Connection, path: str) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            objects = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if app_id == 0 and version == 0 and objects == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                app_id, version = APPLICATION_ID, SCHEMA_VERSION
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        if "malformed" in str(exc):
            raise JournalCorruptError(f"journal file {path!r} is damaged: {exc}") from exc
        raise JournalSchemaError(
            f"{path!r} is not a jobctl journal: SQLite cannot read it ({exc})"
        ) from exc
    if app_id != APPLICATION_ID:
        raise JournalSchemaError(
            f"{path!r} is not a jobctl journal (application_id {app_id:#x}, expected"
            f" {APPLICATION_ID:#x}); it was left unchanged"
        )
    if version > SCHEMA_VERSION:
        raise JournalSchemaError(
            f"journal {path!r} has schema version {version}, newer than this jobctl's"
            f" {SCHEMA_VERSION}; upgrade jobctl (the file was left unchanged)"
        )
    if version < 1:
        raise JournalSchemaError(
            f"journal {path!r} has unknown schema version {version}; it was left unchanged"
        )
