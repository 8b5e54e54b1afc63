"""The journal's value classes: states, what a command records, and what the
journal hands back.

Everything here is frozen: a record is a snapshot of committed journal rows,
never a live view.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, final

import attrs

from jobctl._core._entity import Need
from jobctl._core._kinds import AsyncJob, Job

__all__ = [
    "AsyncJobRecord",
    "CommandRecord",
    "CommandState",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "TaskUpdate",
]

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _frozen_optional_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else MappingProxyType(dict(value))


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must be a non-empty string, not {value!r}"
        )


def _optional_non_empty(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _non_empty(instance, attribute, value)


@enum.unique
class TaskState(enum.StrEnum):
    """Where a child task is. A task only moves forward:
    ``PENDING < STARTING < RUNNING < SUCCEEDED | FAILED``; it may skip stages."""

    #: Recorded with its command; not handed to its backend yet.
    PENDING = "pending"
    #: About to be handed to its backend, whose id for it is not known yet.
    #: After a crash in this state the work may run without the journal
    #: knowing where, so recovery fails the task (and its command).
    STARTING = "starting"
    #: The backend runs it.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """Whether the task is over."""
        return self in (TaskState.SUCCEEDED, TaskState.FAILED)

    @property
    def rank(self) -> int:
        """Order of the stages; a transition must raise it."""
        return _TASK_RANK[self]


_TASK_RANK: Final = {
    TaskState.PENDING: 0,
    TaskState.STARTING: 1,
    TaskState.RUNNING: 2,
    TaskState.SUCCEEDED: 3,
    TaskState.FAILED: 3,
}


@enum.unique
class CommandState(enum.StrEnum):
    """Where a command (the parent of its tasks) is."""

    #: Its tasks are recorded; some may not be over.
    RUNNING = "running"
    #: Every task is over and the end action was claimed: it runs, or a
    #: crash interrupted it and recovery will run it again.
    ENDING = "ending"
    #: Every task succeeded and the end action completed.
    SUCCEEDED = "succeeded"
    #: A task failed, or the end action failed (or could not complete).
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """Whether the command is over (its end action will not run again)."""
        return self in (CommandState.SUCCEEDED, CommandState.FAILED)


@final
@attrs.frozen
class TaskSpec:
    """One expected child task, as :meth:`Journal.begin_command` records it.

    ``backend`` names where the task runs (the key recovery looks its
    :class:`TaskBackend` up by); ``backend_id`` is the backend's id for it
    when the caller chooses it in advance (a QEMU ``job-id``). ``params`` is
    any JSON object the flow wants back after a crash.
    """

    name: str = attrs.field(validator=_non_empty)
    backend: str = attrs.field(validator=_non_empty)
    backend_id: str | None = attrs.field(default=None, validator=_optional_non_empty)
    params: Mapping[str, Any] = attrs.field(default=_EMPTY, converter=_frozen_mapping)


@final
@attrs.frozen
class TaskUpdate:
    """One task transition for :meth:`JournalStore.update_tasks`."""

    task_id: str = attrs.field(validator=_non_empty)
    state: TaskState
    #: Attached if the task has none yet; must match if it has one.
    backend_id: str | None = attrs.field(default=None, validator=_optional_non_empty)
    #: For SUCCEEDED: the task's JSON result.
    result: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_optional_mapping)
    #: For FAILED: why (required).
    error: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.state is TaskState.FAILED:
            if not isinstance(self.error, str) or not self.error:
                raise ValueError(f"a failed task needs an error text (task {self.task_id!r})")
        elif self.error is not None:
            raise ValueError(f"only a failed task has an error (task {self.task_id!r})")
        if self.result is not None and self.state is not TaskState.SUCCEEDED:
            raise ValueError(f"only a succeeded task has a result (task {self.task_id!r})")


@final
@attrs.frozen
class TaskRecord:
    """A child task as the journal holds it."""

    id: str
    command_id: str
    #: Its place in the command's task list, from 0.
    position: int
    name: str
    backend: str
    backend_id: str | None
    state: TaskState
    params: Mapping[str, Any] = attrs.field(converter=_frozen_mapping)
    result: Mapping[str, Any] | None = attrs.field(converter=_frozen_optional_mapping)
    error: str | None
    #: Wall-clock time of the last change (``time.time()``).
    updated: float


@final
@attrs.frozen
class CommandRecord:
    """A command and its tasks as the journal holds them."""

    id: str
    kind: str
    state: CommandState
    data: Mapping[str, Any] = attrs.field(converter=_frozen_mapping)
    tasks: tuple[TaskRecord, ...]
    #: What the command works on, each entity with the mode it needs it in
    #: (the core's :class:`jobctl.Need`), sorted by entity.
    entities: tuple[Need, ...]
    created: float
    updated: float
    #: Decided when the end action is claimed: SUCCEEDED if every task
    #: succeeded, else FAILED. ``None`` while RUNNING.
    outcome: CommandState | None
    #: How many times the end action was claimed (each claim may have run it).
    end_attempts: int
    #: What the end action returned, recorded with the final state.
    result: Mapping[str, Any] | None = attrs.field(converter=_frozen_optional_mapping)
    error: str | None
    #: The owned domain the command belongs to (a fenced journal's
    #: ``begin_command(domain=...)``): every later write of the command must
    #: carry that domain's current epoch. None for a command of no domain.
    domain: str | None = None

    def task(self, name: str) -> TaskRecord:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"command {self.id!r} has no task {name!r}")

    @property
    def unfinished_tasks(self) -> tuple[TaskRecord, ...]:
        """The tasks that are not over."""
        return tuple(task for task in self.tasks if not task.state.final)


@final
@attrs.frozen
class AsyncJobRecord:
    """A domain's async job as last persisted: at its begin and on each phase
    change. ``session`` identifies the journal session (process run) that
    wrote it, so recovery can tell a dead run's jobs from the live ones."""

    domain: str
    job_id: int
    kind: AsyncJob
    phase: str
    owner: str | None
    allowed: frozenset[Job]
    private: Mapping[str, Any] = attrs.field(converter=_frozen_mapping)
    session: str
    #: Wall-clock time it was saved (``time.time()``).
    saved: float
