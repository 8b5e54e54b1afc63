"""Per-record checksums: every row of the journal carries the CRC-32 of its
own encoded values, bound to the journal's id.

SQLite's ``integrity_check`` proves the b-trees sound; it cannot see a byte
that changed inside a record (a state, a JSON text, a backend id) while the
page around it stays well formed. So each row stores, in its ``crc``
column, ``crc32`` of ``[journal id, table, value, ...]`` encoded as JSON,
written in the same statement as the values, and checked against the values
actually served whenever the row is read.

What this guarantees: an accidental change to a row (any burst of up to 32
flipped bits, and all but one in 2**32 of larger changes), a row from another
journal (a ``-wal`` or page mixed in from elsewhere) and a value of the wrong
type are reported as :class:`JournalCorruptError` instead of being served.
It is not a signature: whoever can write the file can recompute it.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, final

import attrs

from ._errors import JournalCorruptError

__all__ = [
    "ASYNC_JOBS",
    "COMMANDS",
    "ENTITIES",
    "META",
    "SEAL",
    "TASKS",
    "RowContext",
    "Table",
]

Kind = Literal["text", "int", "real"]
_TYPES: Final[Mapping[str, type]] = {"text": str, "int": int, "real": float}


@final
@attrs.frozen
class Column:
    name: str
    kind: Kind
    nullable: bool = False


@final
@attrs.frozen(cache_hash=True)
class Table:
    """A journal table: its checksummed columns, in their physical order
    (``crc`` follows them), and the columns that name a row."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    names: tuple[str, ...] = attrs.field(init=False, eq=False)
    #: Per column: the Python type SQLite hands back, and whether NULL is allowed.
    types: tuple[tuple[type, bool], ...] = attrs.field(init=False, eq=False, repr=False)

    @names.default
    def _names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @types.default
    def _types(self) -> tuple[tuple[type, bool], ...]:
        return tuple((_TYPES[column.kind], column.nullable) for column in self.columns)

    def select(self, alias: str) -> str:
        """The columns and ``crc``, for ``SELECT``."""
        return _select(self, alias)

    def insert_sql(self, verb: str = "INSERT") -> str:
        return _insert(self, verb)

    def update_sql(self, changed: tuple[str, ...]) -> str:
        """Set the ``changed`` columns and the checksum of the row named by
        its key (only those: an index on an unchanged column is left alone)."""
        return _update(self, changed)


@functools.cache
def _select(table: Table, alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in (*table.names, "crc"))


@functools.cache
def _insert(table: Table, verb: str) -> str:
    names = (*table.names, "crc")
    marks = ", ".join("?" for _ in names)
    return f"{verb} INTO {table.name} ({', '.join(names)}) VALUES ({marks})"


@functools.cache
def _update(table: Table, changed: tuple[str, ...]) -> str:
    sets = ", ".join(f"{name} = ?" for name in (*changed, "crc"))
    where = " AND ".join(f"{name} = ?" for name in table.key)
    return f"UPDATE {table.name} SET {sets} WHERE {where}"


def _c(name: str, kind: Kind, nullable: bool = False) -> Column:
    return Column(name, kind, nullable)


COMMANDS: Final = Table(
    "commands",
    (
        _c("id", "text"),
        _c("kind", "text"),
        _c("state", "text"),
        _c("outcome", "text", True),
        _c("data", "text"),
        _c("result", "text", True),
        _c("error", "text", True),
        _c("end_attempts", "int"),
        _c("created", "real"),
        _c("updated", "real"),
        # How many task and entity rows the command has: a row that a damaged
        # index hides from a query is missed, not silently dropped.
        _c("task_count", "int"),
        _c("entity_count", "int"),
    ),
    ("id",),
)
TASKS: Final = Table(
    "tasks",
    (
        _c("id", "text"),
        _c("command_id", "text"),
        _c("position", "int"),
        _c("name", "text"),
        _c("backend", "text"),
        _c("backend_id", "text", True),
        _c("state", "text"),
        _c("params", "text"),
        _c("result", "text", True),
        _c("error", "text", True),
        _c("updated", "real"),
    ),
    ("id",),
)
ENTITIES: Final = Table(
    "entities",
    (
        _c("type", "text"),
        _c("id", "text"),
        _c("command_id", "text"),
        _c("shared", "int"),
        _c("active", "int"),
    ),
    ("type", "id", "command_id"),
)
ASYNC_JOBS: Final = Table(
    "async_jobs",
    (
        _c("domain", "text"),
        _c("job_id", "int"),
        _c("kind", "text"),
        _c("phase", "text"),
        _c("owner", "text", True),
        _c("allowed", "text"),
        _c("private", "text"),
        _c("session", "text"),
        _c("saved", "real"),
    ),
    ("domain",),
)
#: One row: the journal's id, chosen when it was created; never rewritten.
META: Final = Table(
    "meta", (_c("id", "int"), _c("journal_id", "text"), _c("created", "real")), ("id",)
)
#: One row: how many write transactions the journal committed (see ``_seal``).
SEAL: Final = Table("seal", (_c("id", "int"), _c("seq", "int")), ("id",))


class Damaged(Exception):
    """A value read from the journal is not what was written (internal)."""


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def _checksum(journal_id: str, table: Table, values: Sequence[object]) -> int:
    return zlib.crc32(_ENCODER.encode([journal_id, table.name, *values]).encode())


@final
@attrs.frozen
class RowContext:
    """What reading and writing rows of one journal file needs: the file's
    name (for error messages) and the journal id the checksums bind to."""

    path: str
    journal_id: str

    def corrupt(self, table: Table | str, key: object, why: str) -> JournalCorruptError:
        name = table.name if isinstance(table, Table) else table
        return JournalCorruptError(
            f"journal file {self.path!r} is damaged: row {key!r} of table {name!r}: {why}",
            path=self.path,
            table=name,
            row=str(key),
        )

    def encode(self, table: Table, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The values of ``row`` as SQLite will hand them back, then the
        checksum: the parameters of :meth:`Table.insert_sql`."""
        values: list[Any] = []
        for column in table.columns:
            value = row[column.name]
            if value is None:
                if not column.nullable:
                    raise ValueError(f"{table.name}.{column.name} cannot be NULL")
            elif column.kind == "int":
                value = int(value)
            elif column.kind == "real":
                value = float(value)
                if math.isnan(value):
                    raise ValueError(f"{table.name}.{column.name} cannot be NaN")
            elif not isinstance(value, str):
                raise TypeError(f"{table.name}.{column.name} must be text, not {value!r}")
            values.append(value)
        return (*values, _checksum(self.journal_id, table, values))

    def key_of(self, table: Table, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[name] for name in table.key)

    def verify(self, table: Table, raw: Sequence[Any]) -> dict[str, Any]:
        """The row (columns then ``crc``, as :meth:`Table.select` lists
        them) as a dict, once its types and checksum are right; raises
        :class:`JournalCorruptError` naming it otherwise."""
        if len(raw) != len(table.columns) + 1:
            raise self.corrupt(table, None, f"{len(raw)} values, expected {len(table.columns) + 1}")
        values = raw[:-1]
        for (kind, nullable), value, column in zip(table.types, values, table.columns, strict=True):
            if type(value) is not kind and not (value is None and nullable):
                why = f"column {column.name!r} holds {type(value).__name__}, not {column.kind}"
                raise self.corrupt(table, self._key(table, raw), why)
        expected = _checksum(self.journal_id, table, values)
        if raw[-1] != expected:
            raise self.corrupt(
                table,
                self._key(table, raw),
                f"checksum mismatch (stored {raw[-1]!r}, computed {expected}): the record was"
                " altered or belongs to another journal",
            )
        return dict(zip(table.names, values, strict=True))

    @staticmethod
    def _key(table: Table, raw: Sequence[Any]) -> object:
        named = dict(zip(table.names, raw, strict=False))
        parts = [named[name] for name in table.key]
        return parts[0] if len(parts) == 1 else "/".join(map(str, parts))
