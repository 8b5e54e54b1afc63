"""The journal's rules, in one place for every store.

A store (SQLite, PostgreSQL) reads the rows it needs inside its transaction,
asks these functions what the rules allow, and writes what they answer: so
two stores cannot disagree on what a task may do or how an end is claimed.
Nothing here touches a database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, final

import attrs

from ._errors import JournalStateError
from ._records import CommandRecord, CommandState, TaskRecord, TaskState, TaskUpdate

__all__ = [
    "EndClaim",
    "backend_conflict",
    "claim_of",
    "dumps_object",
    "loads_object",
    "loads_optional_object",
    "task_after",
    "transition_backend_id",
]


def dumps_object(value: Mapping[str, Any] | None, what: str) -> str | None:
    """``value`` as compact JSON text (None stays None); :class:`TypeError`
    naming ``what`` when it is not a JSON object."""
    if value is None:
        return None
    try:
        return json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be a JSON object: {exc}") from None


def loads_object(text: object, column: str) -> dict[str, Any]:
    """The JSON object stored as text in ``column``; :class:`TypeError` naming
    the column when it holds something else (not text, or JSON that is not an
    object), :class:`json.JSONDecodeError` when the text is not JSON."""
    if not isinstance(text, str):
        raise TypeError(f"column {column!r} holds {type(text).__name__}, not JSON text")
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"column {column!r} holds JSON {type(value).__name__}, not an object")
    return value


def loads_optional_object(text: object, column: str) -> dict[str, Any] | None:
    """:func:`loads_object`, with NULL read as None."""
    return None if text is None else loads_object(text, column)


def transition_backend_id(task: TaskRecord, command_state: str, update: TaskUpdate) -> str | None:
    """The backend id ``task`` has once ``update`` applies, if the rules
    allow it: its command (in ``command_state``) must be RUNNING, the task
    must move forward, and a backend id once set never changes. Raises
    :class:`JournalStateError` naming the task otherwise."""
    if command_state != CommandState.RUNNING:
        raise JournalStateError(
            f"task {task.id!r} ({task.name}) belongs to command {task.command_id!r},"
            f" which is {command_state}: its tasks can no longer change"
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
    return backend_id


def task_after(
    task: TaskRecord, update: TaskUpdate, backend_id: str | None, now: float
) -> TaskRecord:
    """The record of ``task`` once ``update`` is written at ``now``."""
    return attrs.evolve(
        task,
        state=update.state,
        backend_id=backend_id,
        result=update.result,
        error=update.error,
        updated=now,
    )


def backend_conflict(
    holder: str | None, backend: str, backend_id: str | None, name: str
) -> JournalStateError:
    """The error for a task whose backend id the store refused as taken:
    naming the unfinished task ``holder`` that has it, if the store found one."""
    if holder is not None:
        return JournalStateError(
            f"task {name!r}: backend id {backend_id!r} on {backend!r} is already used by"
            f" unfinished task {holder!r}"
        )
    return JournalStateError(f"task {name!r} conflicts with a task already in the journal")


@final
@attrs.frozen
class EndClaim:
    """What claiming a command's end decides (:func:`claim_of`)."""

    #: The outcome the command ends with (SUCCEEDED only if every task did).
    outcome: CommandState
    #: The attempt this claim is.
    attempts: int
    #: Set when the claim is past the attempts allowed: the command becomes
    #: FAILED with this error (and releases its entities) instead of ENDING.
    error: str | None

    def apply(self, command: CommandRecord, now: float) -> CommandRecord:
        """The command's record once the claim is written at ``now``."""
        if self.error is not None:
            return attrs.evolve(
                command,
                state=CommandState.FAILED,
                outcome=self.outcome,
                error=self.error,
                updated=now,
            )
        return attrs.evolve(
            command,
            state=CommandState.ENDING,
            outcome=self.outcome,
            end_attempts=self.attempts,
            updated=now,
        )


def claim_of(command: CommandRecord, max_attempts: int, last_error: str | None) -> EndClaim:
    """Claim the end of ``command``, not final: a RUNNING command whose tasks
    are all over gets its outcome decided and attempt 1, an ENDING one its
    next attempt, and past ``max_attempts`` the claim fails it (``last_error``
    in the message). Raises :class:`JournalStateError` for a RUNNING command
    with tasks not over."""
    assert not command.state.final
    if command.state is CommandState.RUNNING:
        unfinished = command.unfinished_tasks
        if unfinished:
            names = ", ".join(f"{t.name} ({t.state.value})" for t in unfinished)
            raise JournalStateError(
                f"command {command.id!r} cannot end: {len(unfinished)} of its tasks"
                f" are not over: {names}"
            )
        ok = all(t.state is TaskState.SUCCEEDED for t in command.tasks)
        outcome = CommandState.SUCCEEDED if ok else CommandState.FAILED
        attempts = 1
    else:
        assert command.outcome is not None
        outcome, attempts = command.outcome, command.end_attempts + 1
    error = None
    if attempts > max_attempts:
        why = f"last error: {last_error}" if last_error else "the process stopped while it ran"
        error = f"end action did not complete in {max_attempts} attempts ({why})"
    return EndClaim(outcome, attempts, error)
