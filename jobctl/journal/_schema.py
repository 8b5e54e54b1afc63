"""The journal's schema, how a journal file comes to exist, and what opening
one checks before anything is written to it.

Only a path that does not exist becomes a journal: the file is built
complete under a temporary name in the same directory (``<path>.new-*``,
left behind only by a crash), sealed, and then linked into place, so a crash
leaves either no journal or a whole empty one, never an empty or half-made
file that a later open would mistake for a new journal. Creators in one
directory take turns (a ``flock`` on the directory).

Opening checks, on a read-only connection (which never checkpoints a
``-wal`` into the file, so a rejected journal is left exactly as found):

* ``PRAGMA integrity_check``: every page, b-tree, free list, index entry
  (against its table), ``NOT NULL``, ``CHECK`` and ``STRICT`` type. It
  reads the whole file: 20-40 ms per MiB, 55-115 ms for a journal of 10,000
  tasks (``bench/bench_journal.py``, a busy 2-core machine), where opening
  without it takes 4 ms. ``quick_check`` costs a quarter of that but
  cannot see a damaged index, which hides rows from queries (or serves
  another row in their place).
* the application id, the schema version, and the exact text of every
  table and index definition;
* the journal's id and commit count, each against its checksum.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Final, final

import attrs

from ._errors import JournalCorruptError, JournalError, JournalSchemaError
from ._files import fsync_directory
from ._rows import ASYNC_JOBS, COMMANDS, ENTITIES, META, SEAL, TASKS, RowContext

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "Inspection",
    "create_file",
    "inspect",
    "is_corruption",
    "migrate",
]

#: ``PRAGMA application_id`` of a jobctl journal ("jobj").
APPLICATION_ID: Final = 0x6A6F626A
#: ``PRAGMA user_version`` of the schema this module writes.
SCHEMA_VERSION: Final = 2
#: What opening runs over the whole file (the benchmark swaps it to measure
#: the open without it).
INTEGRITY_PRAGMA: str | None = "integrity_check"

_SCHEMA_1: Final = (
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
    "PRAGMA user_version = 1",
)

# Version 2: a checksum on every row, task and entity counts on commands,
# the journal's id and its commit count. A new journal is made as version 1
# and migrated, so new and migrated journals have the same schema text.
_MIGRATE_2: Final = (
    "ALTER TABLE commands ADD COLUMN task_count INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE commands ADD COLUMN entity_count INTEGER NOT NULL DEFAULT 0",
    *(
        f"ALTER TABLE {table.name} ADD COLUMN crc INTEGER NOT NULL DEFAULT 0"
        for table in (COMMANDS, TASKS, ENTITIES, ASYNC_JOBS)
    ),
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        journal_id TEXT NOT NULL,
        created REAL NOT NULL,
        crc INTEGER NOT NULL
    ) STRICT""",
    """CREATE TABLE seal (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL CHECK (seq >= 0),
        crc INTEGER NOT NULL
    ) STRICT""",
)
_DDL: Final = {1: _SCHEMA_1, 2: (*_SCHEMA_1, *_MIGRATE_2)}
_expected: dict[int, list[tuple[object, ...]]] = {}

_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
#: Result codes that say the system, not the file, is the trouble: PERM,
#: BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN,
#: PROTOCOL, NOLFS, AUTH.
_ENVIRONMENT: Final = frozenset({3, 5, 6, 7, 8, 9, 10, 13, 14, 15, 22, 23})
#: What the sqlite3 module and SQLite say about damaged content without a
#: CORRUPT or NOTADB code.
_DAMAGE_MESSAGES: Final = ("Could not decode to UTF-8", "unsupported file format")


def is_corruption(exc: BaseException) -> bool:
    """Whether SQLite (or the ``sqlite3`` module) reports damaged data."""
    if isinstance(exc, sqlite3.DatabaseError) and any(m in str(exc) for m in _DAMAGE_MESSAGES):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _schema_rows(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"
    ).fetchall()


def _expected_schema(version: int) -> list[tuple[object, ...]]:
    if version not in _expected:
        conn = sqlite3.connect(":memory:")
        try:
            for statement in _DDL[version]:
                conn.execute(statement)
            _expected[version] = _schema_rows(conn)
        finally:
            conn.close()
    return _expected[version]


def migrate(conn: sqlite3.Connection, path: str) -> RowContext:
    """Version 1 to 2, inside the caller's transaction: add the columns and
    tables, choose the journal's id, count and checksum every row. Returns
    the new journal's row context."""
    for statement in _MIGRATE_2:
        conn.execute(statement)
    ctx = RowContext(path, uuid.uuid4().hex)
    meta = {"id": 1, "journal_id": ctx.journal_id, "created": time.time()}
    conn.execute(META.insert_sql(), ctx.encode(META, meta))
    conn.execute(SEAL.insert_sql(), ctx.encode(SEAL, {"id": 1, "seq": 0}))
    conn.execute(
        "UPDATE commands SET"
        " task_count = (SELECT count(*) FROM tasks t WHERE t.command_id = commands.id),"
        " entity_count = (SELECT count(*) FROM entities e WHERE e.command_id = commands.id)"
    )
    for table in (COMMANDS, TASKS, ENTITIES, ASYNC_JOBS):
        where = " AND ".join(f"{name} = ?" for name in table.key)
        update = f"UPDATE {table.name} SET crc = ? WHERE {where}"
        rows = conn.execute(f"SELECT {', '.join(table.names)} FROM {table.name}").fetchall()
        for values in rows:
            row = dict(zip(table.names, values, strict=True))
            conn.execute(update, (ctx.encode(table, row)[-1], *ctx.key_of(table, row)))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return ctx


def create_file(path: str, seal: Callable[[str], None]) -> None:
    """Create an empty journal at ``path`` (which must not exist; the caller
    holds the directory's lock): built whole under a temporary name, sealed
    (``seal(journal_id)``), then linked into place."""
    tmp = f"{path}.new-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # Invisible until linked, and fsync-ed once whole just below.
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA_1:
                conn.execute(statement)
            journal_id = migrate(conn, path).journal_id
            conn.execute("COMMIT")
        finally:
            conn.close()  # the last connection: checkpoints and removes tmp-wal
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Sealed before it exists: an existing journal always has a seal.
        seal(journal_id)
        os.link(tmp, path)
        fsync_directory(path)
    finally:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


@final
@attrs.frozen
class Inspection:
    """What opening found in a sound journal file."""

    version: int
    #: Version 2 on: the journal's row context and its commit count.
    ctx: RowContext | None
    seq: int


def inspect(path: str, name: str, *, sealed: bool, sealed_version: int | None) -> Inspection:
    """Check the existing file ``path`` (read-only; see the module).

    ``name`` is how errors name it. The file is the journal of schema
    version *v* if its table definitions are exactly those of *v*; then a
    wrong application id or version number is a damaged header. It is
    another application's database (:class:`JournalSchemaError`) only if
    SQLite reads it soundly, it has tables but not a journal's, its
    application id is not jobctl's, and no seal (``sealed``) names it; a
    newer jobctl's journal only if the version and the tables are both
    newer and the seal, if readable, agrees (``sealed_version``). Anything
    else, including a file SQLite cannot read at all, is damage.
    """

    def corrupt(why: str) -> JournalCorruptError:
        return JournalCorruptError(
            f"journal file {name!r} is damaged: {why}; it was left unchanged", path=name
        )

    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
    except sqlite3.Error as exc:
        raise JournalError(f"journal {name!r} cannot be opened: {exc}") from None
    # Damaged text in a row must not stop the checks: replaced characters
    # fail the comparisons and checksums below.
    conn.text_factory = _lenient
    try:
        conn.execute("BEGIN")
        if INTEGRITY_PRAGMA is not None:
            problems = [row[0] for row in conn.execute(f"PRAGMA {INTEGRITY_PRAGMA}(8)")]
            if problems != ["ok"]:
                raise corrupt(f"SQLite's {INTEGRITY_PRAGMA} reports: " + "; ".join(problems))
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = _schema_rows(conn)
        found = [v for v in _DDL if tables == _expected_schema(v)]
        if found:
            (ours,) = found
            if app_id != APPLICATION_ID or version != ours:
                raise corrupt(
                    f"its tables are those of a version {ours} journal, but its header says"
                    f" application_id {app_id:#x}, version {version}"
                )
        elif not tables:
            # No content at all is not another application's data.
            raise corrupt("it holds no tables: an empty database, or one whose first page was lost")
        elif app_id != APPLICATION_ID and not sealed:
            raise JournalSchemaError(
                f"{name!r} is not a jobctl journal (application_id {app_id:#x}, expected"
                f" {APPLICATION_ID:#x}); it was left unchanged"
            )
        elif (
            version > SCHEMA_VERSION
            and app_id == APPLICATION_ID
            and sealed_version
            in (
                None,
                version,
            )
        ):
            raise JournalSchemaError(
                f"journal {name!r} has schema version {version}, newer than this jobctl's"
                f" {SCHEMA_VERSION}; upgrade jobctl (the file was left unchanged)"
            )
        else:
            raise corrupt(
                f"its tables are not those of any journal version (application_id {app_id:#x},"
                f" version {version})"
            )
        if version == 1:
            return Inspection(1, None, 0)
        return _read_identity(conn, name, corrupt)
    except UnicodeDecodeError as exc:  # SQLite's message quotes damaged text
        raise corrupt(f"SQLite cannot read it (undecodable text in its answer: {exc})") from None
    except sqlite3.Error as exc:
        # The checks above are exact, so whatever SQLite refuses here comes
        # from the file's content, unless the system is the trouble.
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _ENVIRONMENT and not is_corruption(exc):
            raise JournalError(f"journal {name!r} cannot be read: {exc}") from None
        raise corrupt(f"SQLite cannot read it ({exc})") from None
    finally:
        conn.close()


def _lenient(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _read_identity(
    conn: sqlite3.Connection, name: str, corrupt: Callable[[str], JournalCorruptError]
) -> Inspection:
    metas = conn.execute(f"SELECT {META.select('m')} FROM meta m").fetchall()
    if len(metas) != 1 or not isinstance(metas[0][1], str):
        raise corrupt(f"its meta table holds {len(metas)} rows, not 1")
    ctx = RowContext(name, metas[0][1])
    ctx.verify(META, metas[0])
    seals = conn.execute(f"SELECT {SEAL.select('s')} FROM seal s").fetchall()
    if len(seals) != 1:
        raise corrupt(f"its seal table holds {len(seals)} rows, not 1")
    seq: int = ctx.verify(SEAL, seals[0])["seq"]
    return Inspection(SCHEMA_VERSION, ctx, seq)
