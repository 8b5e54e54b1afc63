"""Following running tasks at their backends until they end."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import anyio

from ._backend import BackendState, BackendStatus, TaskBackend
from ._journal import Journal
from ._records import CommandRecord, TaskRecord, TaskState, TaskUpdate

__all__ = ["follow_command", "follow_tasks"]


def outcome_update(task: TaskRecord, status: BackendStatus | None) -> TaskUpdate:
    """The journal update for a task its backend reports over, or unknown."""
    if status is None:
        return TaskUpdate(
            task.id,
            TaskState.FAILED,
            error=(
                f"backend {task.backend!r} no longer knows {task.backend_id!r}: the task was lost"
            ),
        )
    if status.state is BackendState.SUCCEEDED:
        return TaskUpdate(task.id, TaskState.SUCCEEDED, result=status.result)
    return TaskUpdate(
        task.id, TaskState.FAILED, error=status.error or f"failed on backend {task.backend!r}"
    )


async def follow_tasks(
    journal: Journal,
    tasks: Iterable[TaskRecord],
    backends: Mapping[str, TaskBackend],
    *,
    poll_interval: float = 1.0,
    on_done: Callable[[TaskRecord], None] | None = None,
) -> tuple[TaskRecord, ...]:
    """Poll the backends until every task is over, recording each outcome.

    Each task must be RUNNING with a backend id, and its backend must be in
    ``backends``; the caller leaves these tasks to the follower. A finished
    task's outcome is recorded first and only then released at the backend.
    ``on_done`` is called with each task's final record. Returns the final
    records in the order they ended.
    """
    if not poll_interval >= 0:
        raise ValueError(f"poll_interval must be >= 0, not {poll_interval!r}")
    watched: dict[str, TaskRecord] = {}
    for task in tasks:
        if task.state is not TaskState.RUNNING or task.backend_id is None:
            raise ValueError(
                f"only a running task with a backend id can be followed, not task {task.id!r}"
                f" ({task.state.value}, backend id {task.backend_id!r})"
            )
        if task.backend not in backends:
            raise ValueError(f"task {task.id!r} runs on backend {task.backend!r}, not given")
        watched[task.id] = task
    ended: list[TaskRecord] = []
    while watched:
        by_backend: dict[str, list[TaskRecord]] = defaultdict(list)
        for task in watched.values():
            by_backend[task.backend].append(task)
        updates: list[TaskUpdate] = []
        release: dict[str, list[str]] = defaultdict(list)
        for name, group in by_backend.items():
            statuses = await backends[name].query([t.backend_id for t in group if t.backend_id])
            for task in group:
                assert task.backend_id is not None
                status = statuses.get(task.backend_id)
                if status is not None and status.state is BackendState.RUNNING:
                    continue
                updates.append(outcome_update(task, status))
                if status is not None:
                    release[name].append(task.backend_id)
        for record in await journal.update_tasks(updates):
            del watched[record.id]
            ended.append(record)
            if on_done is not None:
                on_done(record)
        for name, ids in release.items():
            await backends[name].release(ids)
        if watched:
            await anyio.sleep(poll_interval)
    return tuple(ended)


async def follow_command(
    journal: Journal,
    command_id: str,
    backends: Mapping[str, TaskBackend],
    *,
    poll_interval: float = 1.0,
) -> CommandRecord:
    """Follow the command's running tasks (those with a backend id) until
    they are over; return the command as it is then."""
    command = await journal.command(command_id)
    running = [
        t for t in command.tasks if t.state is TaskState.RUNNING and t.backend_id is not None
    ]
    await follow_tasks(journal, running, backends, poll_interval=poll_interval)
    return await journal.command(command_id)
