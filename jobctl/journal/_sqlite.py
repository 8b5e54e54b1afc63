"""The default journal store: one SQLite file in WAL mode.

Writes go through one connection, on one worker thread at a time, and are
group-committed: the requests that queue up while a transaction commits are
applied together in the next one, each inside its own savepoint, so one bad
request fails alone and one ``fsync`` serves them all. Reads use a small pool
of read-only connections: in WAL mode they neither wait for the writer nor
for each other. The event loop never blocks on the file.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final, Generic, Literal, TypeVar, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._core._entity import Entity, LockMode, Need
from jobctl._core._kinds import AsyncJob, Job

from ._errors import (
    JournalClosedError,
    JournalCorruptError,
    JournalError,
    JournalNotFoundError,
    JournalStateError,
)
from ._files import Seal, SealFile, WriterLock, directory_lock, read_seal
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from ._rows import ASYNC_JOBS, COMMANDS, ENTITIES, SEAL, TASKS, RowContext, Table
from ._rules import (
    backend_conflict,
    claim_of,
    dumps_object,
    loads_object,
    loads_optional_object,
    task_after,
    transition_backend_id,
)
from ._schema import SCHEMA_VERSION, create_file, inspect, is_corruption, migrate

__all__ = ["SCHEMA_VERSION", "SqliteJournalStore", "SqliteStoreStatistics"]

T = TypeVar("T")

#: Most write requests one transaction applies.
_MAX_BATCH: Final = 512
_UNFINISHED: Final = "c.state IN ('running', 'ending')"
_UNFINISHED_STATES: Final = frozenset({"running", "ending"})
_TASK_CHANGES: Final = ("state", "backend_id", "result", "error", "updated")
_TASK_AND_COMMAND: Final = (
    f"SELECT {TASKS.select('t')}, {COMMANDS.select('c')} FROM tasks t"
    " LEFT JOIN commands c ON c.id = t.command_id WHERE t.id = ?"
)


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


# -- reading rows: checksum first, then the schema's rules -----------------------------


def _task(ctx: RowContext, raw: Sequence[Any]) -> TaskRecord:
    r = ctx.verify(TASKS, raw)
    try:
        return TaskRecord(
            id=r["id"],
            command_id=r["command_id"],
            position=r["position"],
            name=r["name"],
            backend=r["backend"],
            backend_id=r["backend_id"],
            state=TaskState(r["state"]),
            params=loads_object(r["params"], "params"),
            result=loads_optional_object(r["result"], "result"),
            error=r["error"],
            updated=r["updated"],
        )
    except (TypeError, ValueError) as exc:
        raise ctx.corrupt(TASKS, r["id"], str(exc)) from None


def _by_entity(need: Need) -> Entity:
    return need.entity


def _entity(ctx: RowContext, raw: Sequence[Any]) -> tuple[dict[str, Any], Need]:
    """An entities row, checked, and the :class:`Need` it records: ``shared``
    1 is :attr:`LockMode.SHARED`, 0 :attr:`LockMode.EXCLUSIVE`."""
    r = ctx.verify(ENTITIES, raw)
    try:
        mode = LockMode.SHARED if r["shared"] else LockMode.EXCLUSIVE
        return r, Need(Entity(r["type"], r["id"]), mode)
    except (TypeError, ValueError) as exc:
        raise ctx.corrupt(ENTITIES, f"{r['type']}/{r['id']}/{r['command_id']}", str(exc)) from None


def _command(
    ctx: RowContext,
    r: Mapping[str, Any],
    tasks: list[TaskRecord],
    entities: list[Need],
) -> CommandRecord:
    try:
        state = CommandState(r["state"])
        outcome = None if r["outcome"] is None else CommandState(r["outcome"])
        if state is not CommandState.RUNNING and outcome is None:
            raise ValueError(f"a command in state {state.value!r} must have an outcome")
        # A task or entity row that a damaged index hid from the query.
        tasks.sort(key=lambda task: task.position)
        if [task.position for task in tasks] != list(range(r["task_count"])):
            raise ValueError(
                f"it has {r['task_count']} tasks, but positions"
                f" {[task.position for task in tasks]} were found"
            )
        if len(entities) != r["entity_count"]:
            raise ValueError(f"it has {r['entity_count']} entities, but {len(entities)} were found")
        return CommandRecord(
            id=r["id"],
            kind=r["kind"],
            state=state,
            data=loads_object(r["data"], "data"),
            tasks=tuple(tasks),
            entities=tuple(sorted(entities, key=_by_entity)),
            created=r["created"],
            updated=r["updated"],
            outcome=outcome,
            end_attempts=r["end_attempts"],
            result=loads_optional_object(r["result"], "result"),
            error=r["error"],
        )
    except (TypeError, ValueError) as exc:
        raise ctx.corrupt(COMMANDS, r["id"], str(exc)) from None


def _async_job(ctx: RowContext, raw: Sequence[Any]) -> AsyncJobRecord:
    r = ctx.verify(ASYNC_JOBS, raw)
    try:
        allowed = json.loads(r["allowed"])
        if not isinstance(allowed, list):
            raise TypeError("column 'allowed' is not a JSON list")
        return AsyncJobRecord(
            domain=r["domain"],
            job_id=r["job_id"],
            kind=AsyncJob(r["kind"]),
            phase=r["phase"],
            owner=r["owner"],
            allowed=frozenset(Job(value) for value in allowed),
            private=loads_object(r["private"], "private"),
            session=r["session"],
            saved=r["saved"],
        )
    except (TypeError, ValueError) as exc:
        raise ctx.corrupt(ASYNC_JOBS, r["domain"], str(exc)) from None


def _load(
    conn: sqlite3.Connection,
    ctx: RowContext,
    where: str,
    params: Sequence[Any],
    accept: Callable[[Mapping[str, Any]], bool],
) -> list[tuple[CommandRecord, dict[str, Any]]]:
    """Commands matching ``where`` (over alias ``c``) with their tasks and
    entities, each with its raw row, oldest first. Every row served is
    checked against its checksum and against ``where`` (``accept``), and
    each command against its task and entity counts: a damaged index that
    serves the wrong row, or hides one, is reported, not believed."""
    rows: dict[str, dict[str, Any]] = {}
    for raw in conn.execute(f"SELECT {COMMANDS.select('c')} FROM commands c WHERE {where}", params):
        r = ctx.verify(COMMANDS, raw)
        if not accept(r) or r["id"] in rows:
            why = "served twice" if r["id"] in rows else "served for a query it does not match"
            raise ctx.corrupt(COMMANDS, r["id"], f"{why}: an index is damaged")
        rows[r["id"]] = r
    if not rows:
        return []
    tasks: dict[str, list[TaskRecord]] = {command_id: [] for command_id in rows}
    for raw in conn.execute(
        f"SELECT {TASKS.select('t')} FROM tasks t JOIN commands c ON c.id = t.command_id"
        f" WHERE {where}",
        params,
    ):
        task = _task(ctx, raw)
        found = tasks.get(task.command_id)
        if found is None:
            raise ctx.corrupt(
                TASKS, task.id, f"served with command {task.command_id!r}, which was not"
            )
        found.append(task)
    entities: dict[str, list[Need]] = {command_id: [] for command_id in rows}
    for raw in conn.execute(
        f"SELECT {ENTITIES.select('e')} FROM entities e JOIN commands c ON c.id = e.command_id"
        f" WHERE {where}",
        params,
    ):
        r, need = _entity(ctx, raw)
        if r["command_id"] not in entities:
            key = f"{r['type']}/{r['id']}/{r['command_id']}"
            raise ctx.corrupt(ENTITIES, key, "served with a command that was not")
        entities[r["command_id"]].append(need)
    loaded = [
        (_command(ctx, r, tasks[command_id], entities[command_id]), r)
        for command_id, r in rows.items()
    ]
    loaded.sort(key=lambda pair: (pair[0].created, pair[0].id))
    return loaded


def _load_command(
    conn: sqlite3.Connection, ctx: RowContext, command_id: str
) -> tuple[CommandRecord, dict[str, Any]]:
    found = _load(conn, ctx, "c.id = ?", (command_id,), lambda r: r["id"] == command_id)
    if not found:
        raise JournalNotFoundError(f"no command {command_id!r} in the journal")
    return found[0]


def _command_row(conn: sqlite3.Connection, ctx: RowContext, command_id: str) -> dict[str, Any]:
    raw = conn.execute(
        f"SELECT {COMMANDS.select('c')} FROM commands c WHERE c.id = ?", (command_id,)
    ).fetchone()
    if raw is None:
        raise JournalNotFoundError(f"no command {command_id!r} in the journal")
    r = ctx.verify(COMMANDS, raw)
    if r["id"] != command_id:
        raise ctx.corrupt(COMMANDS, r["id"], f"served for id {command_id!r}: an index is damaged")
    return r


def _update(
    conn: sqlite3.Connection,
    ctx: RowContext,
    table: Table,
    row: Mapping[str, Any],
    changed: tuple[str, ...],
) -> None:
    """Write ``row`` (every column; ``changed`` differ from the stored row)
    with its new checksum."""
    encoded = ctx.encode(table, row)
    values = dict(zip(table.names, encoded, strict=False))
    params = (*(values[name] for name in changed), encoded[-1], *ctx.key_of(table, row))
    cursor = conn.execute(table.update_sql(changed), params)
    if cursor.rowcount != 1:
        raise ctx.corrupt(table, ctx.key_of(table, row), "vanished while it was rewritten")


def _release_entities(conn: sqlite3.Connection, ctx: RowContext, command_id: str) -> None:
    rows = conn.execute(
        f"SELECT {ENTITIES.select('e')} FROM entities e WHERE e.command_id = ? AND e.active = 1",
        (command_id,),
    ).fetchall()
    for raw in rows:
        r, _need = _entity(ctx, raw)
        _update(conn, ctx, ENTITIES, {**r, "active": 0}, ("active",))


def _translate(exc: Exception, path: str) -> Exception:
    """Turn SQLite's errors into journal errors; leave the journal's own alone."""
    if isinstance(exc, UnicodeDecodeError):
        return JournalCorruptError(f"journal file {path!r} is damaged: {exc}", path=path)
    if not isinstance(exc, sqlite3.Error):
        return exc
    if is_corruption(exc):
        return JournalCorruptError(f"journal file {path!r} is damaged: {exc}", path=path)
    return JournalError(f"journal file {path!r}: {type(exc).__name__}: {exc}")


@final
@attrs.frozen
class _Opened:
    path: str
    writer: sqlite3.Connection
    lock: WriterLock
    seal: SealFile
    ctx: RowContext
    seq: int


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
    * One writer per database file, whatever path, symlink or hard link
      names it: a second store, in any process, fails with
      :class:`JournalInUseError` (naming the holder's pid when the system
      tells it) while the first is open. The lock is on the file itself;
      there is no lock file to remove (details and limits: ``_files``).
    * Only a path that does not exist becomes a new journal. An existing
      file that is empty, damaged, or holds fewer commits than were
      acknowledged raises :class:`JournalCorruptError` naming the file and
      what is wrong, and is left as it was; so does every read that meets
      a damaged record (see ``_rows`` and ``_schema`` for what is checked).
    * A file with a newer schema or another application's data raises
      :class:`JournalSchemaError` and is left untouched; a version 1
      journal is migrated in one transaction.

    The journal is the files ``<path>``, ``<path>-wal`` and
    ``<path>-seal``: move, copy or back them up together (or close the
    store first: then ``-wal`` is gone and the other two suffice).
    """

    __slots__ = (
        "_broken",
        "_closed",
        "_ctx",
        "_largest_batch",
        "_lock",
        "_path",
        "_queue",
        "_read_limiter",
        "_readers",
        "_reads",
        "_reads_done",
        "_reads_in_flight",
        "_seal",
        "_seq",
        "_transactions",
        "_write_limiter",
        "_write_lock",
        "_writer",
        "_writes",
    )

    def __init__(self, opened: _Opened, readers: int) -> None:
        # Private: use ``await SqliteJournalStore.open(path)``.
        self._path = opened.path
        self._writer = opened.writer
        self._lock = opened.lock
        self._seal = opened.seal
        self._ctx = opened.ctx
        self._seq = opened.seq
        self._broken: JournalError | None = None
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
        create: bool = True,
        reseal: bool = False,
    ) -> SqliteJournalStore:
        """Open the journal at ``path``, creating it if no file is there
        (and ``create`` is true; else :class:`JournalNotFoundError`).

        ``readers`` is how many reads may run at once, each on its own
        connection. Symlinks in ``path`` are resolved: :attr:`path` and the
        errors name the real file. Raises :class:`JournalCorruptError` for a
        damaged file, :class:`JournalSchemaError` for a file this version
        cannot use and :class:`JournalInUseError` if another store has it
        open.

        ``reseal=True`` is for an operator who knows what was lost: it
        accepts a journal whose seal is missing, damaged, or ahead of it (a
        deleted ``-wal``, a restored backup) as it is now, and seals it
        again; every other check still applies.
        """
        path = os.fspath(path)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(f"the journal needs a file path, not {path!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers!r}")
        opened = await anyio.to_thread.run_sync(_open_files, path, synchronous, create, reseal)
        return cls(opened, readers)

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
            self._seal.close()
        finally:
            # Only now: closing a descriptor of the file drops SQLite's locks.
            self._lock.release()

    @property
    def path(self) -> str:
        """The journal file (symlinks resolved)."""
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
        if self._broken is not None:
            raise self._broken
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
        """Apply ``batch`` in one transaction, then seal it (worker thread)."""
        conn = self._writer
        if self._broken is not None:
            for request in batch:
                request.error, request.done = self._broken, True
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            for request in batch:
                request.error, request.done = _translate(exc, self._path), True
            return
        seq = self._seq + 1
        try:
            for request in batch:
                conn.execute("SAVEPOINT request")
                try:
                    request.result = request.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO request")
                    request.error = _translate(exc, self._path)
                conn.execute("RELEASE request")
            _update(conn, self._ctx, SEAL, {"id": 1, "seq": seq}, ("seq",))
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
        else:
            self._seq = seq
            try:
                self._seal.advance(seq)
            except OSError as exc:
                # The batch is committed (its results stand), but a later
                # loss of the -wal could no longer be told: stop writing.
                self._broken = JournalError(
                    f"journal {self._path!r}: its seal {self._seal.path!r} cannot be written"
                    f" ({exc}); reopen the journal"
                )
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
        entities: Iterable[Need],
    ) -> CommandRecord:
        """Record a RUNNING command, all its tasks (PENDING) and its entity
        associations, in one transaction.

        Raises :class:`JournalStateError` if ``command_id`` is already in the
        journal or a task's backend id is held by another unfinished task;
        ``data`` and each task's params must be JSON.
        """
        data_json = dumps_object(data, f"data of command {command_id!r}")
        task_rows: list[dict[str, Any]] = [
            {
                "id": f"{command_id}.{position}",
                "command_id": command_id,
                "position": position,
                "name": spec.name,
                "backend": spec.backend,
                "backend_id": spec.backend_id,
                "state": TaskState.PENDING.value,
                "params": dumps_object(spec.params, f"params of task {spec.name!r}"),
                "result": None,
                "error": None,
            }
            for position, spec in enumerate(tasks)
        ]
        entity_list = tuple(sorted(entities, key=_by_entity))
        ctx = self._ctx

        def add(conn: sqlite3.Connection) -> CommandRecord:
            now = time.time()
            if conn.execute("SELECT 1 FROM commands WHERE id = ?", (command_id,)).fetchone():
                raise JournalStateError(f"command id {command_id!r} is already in the journal")
            command = {
                "id": command_id,
                "kind": kind,
                "state": CommandState.RUNNING.value,
                "outcome": None,
                "data": data_json,
                "result": None,
                "error": None,
                "end_attempts": 0,
                "created": now,
                "updated": now,
                "task_count": len(task_rows),
                "entity_count": len(entity_list),
            }
            conn.execute(COMMANDS.insert_sql(), ctx.encode(COMMANDS, command))
            for row in task_rows:
                try:
                    conn.execute(TASKS.insert_sql(), ctx.encode(TASKS, {**row, "updated": now}))
                except sqlite3.IntegrityError:
                    raise _conflict(conn, row["backend"], row["backend_id"], row["name"]) from None
            conn.executemany(
                ENTITIES.insert_sql(),
                [
                    ctx.encode(
                        ENTITIES,
                        {
                            "type": need.entity.type,
                            "id": need.entity.id,
                            "command_id": command_id,
                            "shared": need.mode is LockMode.SHARED,
                            "active": 1,
                        },
                    )
                    for need in entity_list
                ],
            )
            return CommandRecord(
                id=command_id,
                kind=kind,
                state=CommandState.RUNNING,
                data=data,
                tasks=tuple(
                    TaskRecord(
                        id=row["id"],
                        command_id=command_id,
                        position=row["position"],
                        name=row["name"],
                        backend=row["backend"],
                        backend_id=row["backend_id"],
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
        """Apply task transitions in order, in one transaction; each must
        move its task forward and its command must be RUNNING.

        If one update is refused (:class:`JournalNotFoundError` for an unknown
        task, :class:`JournalStateError` for an illegal move or a backend id
        another task holds), none of them is applied.
        """
        encoded = [
            (update, dumps_object(update.result, f"result of task {update.task_id!r}"))
            for update in updates
        ]
        ctx = self._ctx

        def apply(conn: sqlite3.Connection) -> tuple[TaskRecord, ...]:
            now = time.time()
            out = []
            for update, result_json in encoded:
                raw = conn.execute(_TASK_AND_COMMAND, (update.task_id,)).fetchone()
                if raw is None:
                    raise JournalNotFoundError(f"no task {update.task_id!r} in the journal")
                split = len(TASKS.columns) + 1
                task = _task(ctx, raw[:split])
                if task.id != update.task_id:
                    raise ctx.corrupt(TASKS, task.id, f"served for id {update.task_id!r}")
                if raw[split] is None:
                    why = f"its command {task.command_id!r} is missing"
                    raise ctx.corrupt(TASKS, task.id, why)
                command = ctx.verify(COMMANDS, raw[split:])
                if command["id"] != task.command_id:
                    why = f"served with command {command['id']!r}: an index is damaged"
                    raise ctx.corrupt(TASKS, task.id, why)
                backend_id = transition_backend_id(task, command["state"], update)
                row = {
                    "id": task.id,
                    "command_id": task.command_id,
                    "position": task.position,
                    "name": task.name,
                    "backend": task.backend,
                    "backend_id": backend_id,
                    "state": update.state.value,
                    "params": raw[TASKS.names.index("params")],
                    "result": result_json,
                    "error": update.error,
                    "updated": now,
                }
                try:
                    _update(conn, ctx, TASKS, row, _TASK_CHANGES)
                except sqlite3.IntegrityError:
                    raise _conflict(conn, task.backend, backend_id, task.name) from None
                out.append(task_after(task, update, backend_id, now))
            return tuple(out)

        return await self._write(apply)

    async def claim_end(
        self, command_id: str, *, max_attempts: int, last_error: str | None
    ) -> CommandRecord:
        """Claim the command's end action, in one transaction.

        A RUNNING command whose tasks are all over becomes ENDING with its
        outcome decided and ``end_attempts == 1``; an ENDING one gets
        ``end_attempts + 1``; past ``max_attempts`` it becomes FAILED (its
        entity associations released) instead. A final command is returned as
        it is: its end action will not run again.
        """
        ctx = self._ctx

        def claim(conn: sqlite3.Connection) -> CommandRecord:
            command, row = _load_command(conn, ctx, command_id)
            if command.state.final:
                return command
            now = time.time()
            decided = claim_of(command, max_attempts, last_error)
            outcome, attempts, error = decided.outcome, decided.attempts, decided.error
            if error is not None:
                failed = {
                    **row,
                    "state": CommandState.FAILED.value,
                    "outcome": outcome.value,
                    "error": error,
                    "updated": now,
                }
                _update(conn, ctx, COMMANDS, failed, ("state", "outcome", "error", "updated"))
                _release_entities(conn, ctx, command_id)
                return decided.apply(command, now)
            ending = {
                **row,
                "state": CommandState.ENDING.value,
                "outcome": outcome.value,
                "end_attempts": attempts,
                "updated": now,
            }
            _update(conn, ctx, COMMANDS, ending, ("state", "outcome", "end_attempts", "updated"))
            return decided.apply(command, now)

        return await self._write(claim)

    async def finish_command(
        self,
        claimed: CommandRecord,
        state: CommandState,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> CommandRecord:
        """Move the ENDING command that :meth:`claim_end` returned as
        ``claimed`` to its final ``state``, with the end action's result, and
        release its entity associations, in one transaction.

        Raises :class:`JournalStateError` (and writes nothing) unless the
        command is ENDING under that same claim (``end_attempts`` unchanged),
        or if ``state`` is SUCCEEDED but its outcome is not: so it is done
        exactly once. ``ValueError`` if ``state`` is not final.
        """
        if not state.final:
            raise ValueError(f"a command finishes as succeeded or failed, not {state.value!r}")
        command_id = claimed.id
        result_json = dumps_object(result, f"result of the end action of command {command_id!r}")
        ctx = self._ctx

        def finish(conn: sqlite3.Connection) -> CommandRecord:
            row = _command_row(conn, ctx, command_id)
            if row["state"] != CommandState.ENDING:
                why = "was already recorded" if row["state"] != "running" else "was not claimed"
                raise JournalStateError(
                    f"command {command_id!r} is {row['state']}, not ending: its end {why}"
                )
            if row["end_attempts"] != claimed.end_attempts:
                raise JournalStateError(
                    f"command {command_id!r}: attempt {claimed.end_attempts} of its end action"
                    f" finished, but attempt {row['end_attempts']} holds the claim"
                )
            if state is CommandState.SUCCEEDED and row["outcome"] != CommandState.SUCCEEDED:
                raise JournalStateError(
                    f"command {command_id!r} cannot succeed: its outcome is {row['outcome']}"
                )
            now = time.time()
            done = {
                **row,
                "state": state.value,
                "result": result_json,
                "error": error,
                "updated": now,
            }
            _update(conn, ctx, COMMANDS, done, ("state", "result", "error", "updated"))
            _release_entities(conn, ctx, command_id)
            # Tasks and entities cannot change once a command is ENDING.
            return attrs.evolve(claimed, state=state, result=result, error=error, updated=now)

        return await self._write(finish)

    async def get_command(self, command_id: str) -> CommandRecord:
        """The command and its tasks, read in one transaction.

        Raises :class:`JournalNotFoundError` for an unknown id and
        :class:`JournalCorruptError` for a damaged record.
        """
        ctx = self._ctx
        return await self._read(lambda conn: _load_command(conn, ctx, command_id)[0])

    async def unfinished_commands(self) -> tuple[CommandRecord, ...]:
        """Every command that is not final (RUNNING or ENDING), oldest first,
        read in one consistent snapshot.
        """
        ctx = self._ctx

        def query(conn: sqlite3.Connection) -> tuple[CommandRecord, ...]:
            found = _load(conn, ctx, _UNFINISHED, (), lambda r: r["state"] in _UNFINISHED_STATES)
            return tuple(command for command, _row in found)

        return await self._read(query)

    async def active_commands(self, entity_type: str, entity_id: str) -> tuple[str, ...]:
        """Ids of the unfinished commands associated with the entity, sorted.

        An association ends when its command becomes final, so an id listed
        here still holds (or waits for) the entity.
        """
        ctx = self._ctx

        def query(conn: sqlite3.Connection) -> tuple[str, ...]:
            found: list[str] = []
            for raw in conn.execute(
                f"SELECT {ENTITIES.select('e')} FROM entities e"
                " WHERE e.type = ? AND e.id = ? AND e.active = 1",
                (entity_type, entity_id),
            ):
                r, _need = _entity(ctx, raw)
                key = f"{r['type']}/{r['id']}/{r['command_id']}"
                if (r["type"], r["id"], r["active"]) != (entity_type, entity_id, 1):
                    raise ctx.corrupt(ENTITIES, key, "served for a query it does not match")
                if r["command_id"] in found:
                    raise ctx.corrupt(ENTITIES, key, "served twice: an index is damaged")
                found.append(r["command_id"])
            return tuple(sorted(found))

        return await self._read(query)

    async def save_async_job(self, record: AsyncJobRecord) -> None:
        """Replace the domain's async job record with ``record``, in one
        transaction: a domain has at most one.
        """
        private = dumps_object(
            record.private, f"private data of the async job on {record.domain!r}"
        )
        row = {
            "domain": record.domain,
            "job_id": record.job_id,
            "kind": record.kind.value,
            "phase": record.phase,
            "owner": record.owner,
            "allowed": json.dumps(sorted(job.value for job in record.allowed)),
            "private": private,
            "session": record.session,
            "saved": record.saved,
        }
        values = self._ctx.encode(ASYNC_JOBS, row)

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(ASYNC_JOBS.insert_sql("INSERT OR REPLACE"), values)

        await self._write(save)

    async def clear_async_job(self, domain: str, job_id: int, session: str) -> None:
        """Delete the domain's record if it is still that job's (same
        ``job_id`` and ``session``); a newer job's record is left alone, and
        no record at all is not an error.
        """

        def clear(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM async_jobs WHERE domain = ? AND job_id = ? AND session = ?",
                (domain, job_id, session),
            )

        await self._write(clear)

    async def async_jobs(self) -> tuple[AsyncJobRecord, ...]:
        """Every async job record, one per domain, sorted by domain."""
        ctx = self._ctx

        def query(conn: sqlite3.Connection) -> tuple[AsyncJobRecord, ...]:
            rows = conn.execute(f"SELECT {ASYNC_JOBS.select('a')} FROM async_jobs a").fetchall()
            jobs = [_async_job(ctx, raw) for raw in rows]
            domains = [job.domain for job in jobs]
            if len(set(domains)) != len(domains):
                raise ctx.corrupt(ASYNC_JOBS, domains, "a domain is served twice")
            return tuple(sorted(jobs, key=lambda job: job.domain))

        return await self._read(query)


def _conflict(
    conn: sqlite3.Connection, backend: str, backend_id: str | None, name: str
) -> JournalStateError:
    holder = conn.execute(
        "SELECT id FROM tasks WHERE backend = ? AND backend_id = ?"
        " AND state NOT IN ('succeeded', 'failed')",
        (backend, backend_id),
    ).fetchone()
    return backend_conflict(None if holder is None else str(holder[0]), backend, backend_id, name)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


# -- opening ---------------------------------------------------------------------------


def _lock(path: str, seal_path: str, create: bool, reseal: bool) -> WriterLock:
    """Lock the journal file, creating it first if no file is at ``path``."""
    for _attempt in range(3):
        try:
            return WriterLock.acquire(path)
        except FileNotFoundError:
            pass
        if not create:
            raise JournalNotFoundError(f"no journal file {path!r} (and create=False)")
        try:
            with directory_lock(path):
                if not os.path.exists(path):  # else another process made it: lock that
                    _may_create(path, seal_path, reseal)
                    # create_file syncs the directory once both names are in it.
                    create_file(path, partial(_new_seal, seal_path, name_durable=False))
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"journal {path!r} cannot be created: {exc}") from exc
    raise JournalError(f"journal {path!r} keeps disappearing while it is opened")


def _new_seal(seal_path: str, journal_id: str, *, name_durable: bool = True) -> None:
    seal = Seal(journal_id, SCHEMA_VERSION, 0)
    SealFile.write_new(seal_path, seal, sync=True, name_durable=name_durable).close()


def _may_create(path: str, seal_path: str, reseal: bool) -> None:
    """Refuse to create a journal where a seal says one was acknowledged."""
    if reseal:
        return
    try:
        seal = read_seal(seal_path, path)
    except JournalCorruptError:
        raise JournalCorruptError(
            f"journal file {path!r} is missing and its seal {seal_path!r} is unreadable: the"
            " journal was deleted or moved; restore it, or open with reseal=True to start a"
            " new, empty journal",
            path=path,
        ) from None
    if seal is not None and seal.seq > 0:
        raise JournalCorruptError(
            f"journal file {path!r} is missing, but its seal {seal_path!r} says {seal.seq}"
            " commits were acknowledged: the journal was deleted or moved; restore it, or open"
            " with reseal=True to start a new, empty journal",
            path=path,
        )


def _check_seal(seal: Seal | None, ctx: RowContext, seq: int, seal_path: str) -> None:
    """Raise unless the journal holds every commit its seal says was acknowledged."""
    path = ctx.path
    advice = "restore the missing files, or open with reseal=True to accept the journal as it is"
    if seal is None:
        # A journal is sealed before it exists (and before it is migrated).
        why = (
            f"its seal {seal_path!r} is missing, so it cannot prove that it still holds every"
            f" acknowledged commit ({seq} are in the file)"
        )
    elif seal.journal_id != ctx.journal_id:
        why = (
            f"its seal {seal_path!r} belongs to journal {seal.journal_id}, not to"
            f" {ctx.journal_id}: the seal, the -wal or the file came from another journal"
        )
    elif seal.version != SCHEMA_VERSION:
        why = f"its seal says schema version {seal.version}, the file {SCHEMA_VERSION}"
    elif seq < seal.seq:
        why = (
            f"it holds {seq} commits, but {seal.seq} were acknowledged: its -wal was deleted,"
            " truncated or damaged, or the file was restored from an older copy"
        )
    else:
        return
    raise JournalCorruptError(f"journal file {path!r} is damaged: {why}; {advice}", path=path)


def _open_files(path: str, synchronous: str, create: bool, reseal: bool) -> _Opened:
    """Lock, check, migrate if needed, and seal the journal (worker thread)."""
    real = os.path.realpath(path)
    seal_path = f"{real}-seal"
    lock = _lock(real, seal_path, create, reseal)
    writer: sqlite3.Connection | None = None
    try:
        if lock.size() == 0:
            raise JournalCorruptError(
                f"journal file {real!r} is empty (0 bytes): it holds no journal, and only a path"
                " that does not exist becomes a new one; it was left unchanged",
                path=real,
            )
        try:
            seal = read_seal(seal_path, real)
        except JournalCorruptError:
            if not reseal:
                raise
            seal = None
        found = inspect(
            real,
            real,
            sealed=seal is not None or os.path.exists(seal_path),
            sealed_version=None if seal is None else seal.version,
        )
        writer = _connect(real)
        mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"journal {real!r} cannot use WAL mode (got {mode!r})")
        writer.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        if found.ctx is None:
            ctx, seq = _migrate(writer, real, seal_path), 0
        else:
            ctx, seq = found.ctx, found.seq
            if not reseal:
                _check_seal(seal, ctx, seq, seal_path)
        sealed = Seal(ctx.journal_id, SCHEMA_VERSION, seq)
        sync = synchronous == "full"
        if sealed == seal and not reseal:
            seal_file = SealFile.reopen(seal_path, sealed, sync=sync)
        else:
            seal_file = SealFile.write_new(seal_path, sealed, sync=sync)
    except BaseException as exc:
        if writer is not None:
            writer.close()
        lock.release()
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc, real) from exc
        raise
    return _Opened(real, writer, lock, seal_file, ctx, seq)


def _migrate(conn: sqlite3.Connection, path: str, seal_path: str) -> RowContext:
    """Version 1 to the current schema, checking every record it rewrites,
    sealed before it commits."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        ctx = migrate(conn, path)
        _load(conn, ctx, "1", (), lambda r: True)
        rows = conn.execute(f"SELECT {ASYNC_JOBS.select('a')} FROM async_jobs a").fetchall()
        for raw in rows:
            _async_job(ctx, raw)
        _new_seal(seal_path, ctx.journal_id)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return ctx
