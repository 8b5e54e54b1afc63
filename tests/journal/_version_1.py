"""A version-1 journal, as the first jobctl with a journal wrote it.

A frozen copy, not an import of the journal's own: journals of version 1 on
disk do not change when the code does, so the migration is tested against
the format as it was shipped.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCHEMA_1"]

#: The statements that made an empty version-1 journal (then ``user_version`` 1).
SCHEMA_1: Final = (
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
    "PRAGMA application_id = 1785684586",  # 0x6A6F626A, "jobj"
    "PRAGMA user_version = 1",
)
