"""Recovery at start-up: reconcile the journal with what the backends report."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Protocol, final

import anyio
import anyio.abc
import attrs

from jobctl._core._entity import Need
from jobctl._core._kinds import AsyncJob
from jobctl._groups import unwrap_single

from ._backend import BackendState, BackendStatus, TaskBackend
from ._errors import JournalCorruptError, JournalNotFoundError, JournalStateError, RecoveryError
from ._follow import follow_tasks, outcome_update
from ._journal import EndAction, Journal
from ._records import (
    AsyncJobRecord,
    CommandRecord,
    CommandState,
    TaskRecord,
    TaskState,
    TaskUpdate,
)

__all__ = ["AsyncJobHandler", "EntityLocker", "RecoveryReport", "recover"]


class EntityLocker(Protocol):
    """Entity locks, as recovery needs them: a ``jobctl.host.EntityLocks``
    is one.

    ``hold(needs, owner=...)`` takes every :class:`jobctl.Need` at once, each
    in its mode, for ``owner`` (a command id), and holds them until the
    block ends.
    """

    def hold(self, needs: Iterable[Need], *, owner: str) -> AbstractAsyncContextManager[object]:
        """A context manager that, on entering, waits until it holds every
        one of ``needs`` at once, each in its mode, for ``owner``, and
        releases them all when the block ends (however it ends)."""
        ...


class AsyncJobHandler(Protocol):
    """Recovers one kind of async job from its last persisted phase (a flow
    provides it: for a migration, cancel it on the source and resume the VM;
    for a backup, take the job that QEMU still runs back).

    Run with ``task_group.start``: it calls ``task_status.started()`` once the
    job is either settled or taken over by a new async job of the domain (one
    saved through the journal's persister), and may keep running after that
    (following a resumed backup). Recovery drops the old record then.
    """

    async def __call__(
        self, record: AsyncJobRecord, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None: ...


@final
@attrs.frozen
class RecoveryReport:
    """What :func:`recover` found and decided, before following anything."""

    #: Unfinished commands: each is being ended (end action included).
    commands: tuple[str, ...]
    #: Task ids still running at their backends, now followed.
    adopted: tuple[str, ...]
    #: Task ids that ended while the manager was down; outcome from the backend.
    concluded: tuple[str, ...]
    #: Task ids recovery failed: never started, started without a recorded
    #: backend id, or unknown to their backend.
    failed: tuple[str, ...]
    #: Async jobs of dead sessions, handed to their handlers.
    async_jobs: tuple[AsyncJobRecord, ...]


def _check_handlers(
    commands: Sequence[CommandRecord],
    jobs: Sequence[AsyncJobRecord],
    backends: Mapping[str, TaskBackend],
    end_actions: Mapping[str, EndAction],
    handlers: Mapping[AsyncJob, AsyncJobHandler],
) -> None:
    missing: list[str] = []
    for command in commands:
        if command.kind not in end_actions:
            missing.append(f"an end action for command kind {command.kind!r} ({command.id})")
        for task in command.tasks:
            if task.backend_id is not None and task.backend not in backends:
                missing.append(f"backend {task.backend!r} (task {task.id})")
    for job in jobs:
        if job.kind not in handlers:
            missing.append(f"a handler for async job {job.kind.name} (domain {job.domain!r})")
    if missing:
        unique = list(dict.fromkeys(missing))
        raise RecoveryError("recover() was not given " + "; ".join(unique))


def _reconcile(task: TaskRecord, status: BackendStatus | None) -> TaskUpdate | None:
    """The update that makes ``task`` agree with its backend (None: keep it)."""
    if task.backend_id is None:
        if task.state is TaskState.PENDING:
            why = "it never started before the manager stopped"
        else:
            why = (
                f"it was handed to backend {task.backend!r} but its backend id was never"
                " recorded, so its outcome is unknown"
            )
        return TaskUpdate(task.id, TaskState.FAILED, error=why)
    if status is None and task.state is not TaskState.RUNNING:
        return TaskUpdate(
            task.id,
            TaskState.FAILED,
            error=f"it never reached backend {task.backend!r} before the manager stopped",
        )
    if status is not None and status.state is BackendState.RUNNING:
        if task.state is TaskState.RUNNING:
            return None
        return TaskUpdate(task.id, TaskState.RUNNING)
    return outcome_update(task, status)


async def _query(
    tasks: Sequence[TaskRecord], backends: Mapping[str, TaskBackend]
) -> dict[str, BackendStatus | None]:
    by_backend: dict[str, list[TaskRecord]] = defaultdict(list)
    for task in tasks:
        if task.backend_id is not None:
            by_backend[task.backend].append(task)
    found: dict[str, BackendStatus | None] = {}
    for name, group in by_backend.items():
        statuses = await backends[name].query([t.backend_id for t in group if t.backend_id])
        for task in group:
            assert task.backend_id is not None
            found[task.id] = statuses.get(task.backend_id)
    return found


async def _complete_command(
    journal: Journal,
    command: CommandRecord,
    action: EndAction,
    locker: EntityLocker | None,
    tasks_done: anyio.Event | None,
    max_attempts: int,
    retry_delay: float,
    *,
    task_status: anyio.abc.TaskStatus[None],
) -> None:
    async with AsyncExitStack() as stack:
        if locker is not None and command.entities:
            await stack.enter_async_context(locker.hold(command.entities, owner=command.id))
        task_status.started()
        if tasks_done is not None:
            await tasks_done.wait()
        try:
            await journal.end_command(
                command.id, action, max_attempts=max_attempts, retry_delay=retry_delay
            )
        except JournalNotFoundError as exc:
            raise _vanished(journal, f"command {command.id!r}", exc) from exc


def _vanished(journal: Journal, what: str, exc: JournalNotFoundError) -> JournalCorruptError:
    """Recovery read ``what`` from the journal a moment ago; not finding it
    now means the journal is damaged (one writer: nobody removed it)."""
    path = getattr(journal.store, "path", None)
    name = repr(path) if isinstance(path, str) else repr(journal.store)
    return JournalCorruptError(
        f"journal file {name} is damaged: recovery read {what} from it, then could not find it"
        f" again ({exc})",
        path=path if isinstance(path, str) else None,
    )


async def recover(
    journal: Journal,
    *,
    backends: Mapping[str, TaskBackend],
    end_actions: Mapping[str, EndAction],
    async_handlers: Mapping[AsyncJob, AsyncJobHandler] | None = None,
    locker: EntityLocker | None = None,
    poll_interval: float = 1.0,
    max_attempts: int = 3,
    retry_delay: float = 1.0,
    domains: Iterable[str] | None = None,
    task_status: anyio.abc.TaskStatus[RecoveryReport] = anyio.TASK_STATUS_IGNORED,
) -> RecoveryReport:
    """Reconcile the journal with the backends after a restart, and finish
    what the dead process left.

    1. Checks that every backend, command kind (its end action) and async job
       kind (its handler) the journal names was given; raises
       :class:`RecoveryError` before changing anything otherwise.
    2. Asks each backend about the unfinished tasks that have backend ids,
       then records in one transaction: a task never started, or started
       without a recorded backend id, or unknown to its backend, FAILED; a
       task its backend reports over, its outcome; a running one, RUNNING
       (adopted).
    3. Takes the entity locks of every unfinished command again (``locker``),
       one command after the other, in the journal's order.
    4. Hands each async job of a dead session to its kind's handler.
    5. Follows the adopted tasks, and ends every unfinished command through
       its kind's end action, exactly once (a command whose end action a
       crash cut short runs it again, as a new attempt).

    Run it at start-up, before the journal begins commands of its own
    (:class:`JournalStateError` otherwise): a live command's pending tasks
    would look never started. Awaited directly it returns when everything
    is done. Started with
    ``await task_group.start(recover, journal, ...)`` it returns the report
    after step 4, while steps 5 go on in the task group. Safe to run again
    after a crash during recovery.

    With ``domains`` (a fenced journal, after taking those domains over
    from a manager that died or stopped answering) it recovers only the
    commands and async jobs of those domains, and may run while this
    journal runs commands of its other domains: the old owner's writes of
    them are refused by their epoch, so what recovery reads stays true. It
    writes with the new owner's epoch: run it once the leases are held.

    Errors leave as themselves, not wrapped in an :class:`ExceptionGroup`
    (a group only when several fail at once). A damaged journal raises
    :class:`JournalCorruptError` naming the file, including a command or
    task that recovery read and then could not find again.
    """
    only: frozenset[str] | None = None
    if domains is not None:
        only = frozenset(domains)
        if journal.fence is None:
            raise ValueError("recover(domains=...) takes domains over: it needs a fenced journal")
    elif journal.statistics().commands_begun:
        raise JournalStateError(
            "recover() reconciles what a dead process left: run it at start-up, before"
            " this journal begins commands of its own"
        )
    handlers: Mapping[AsyncJob, AsyncJobHandler] = async_handlers or {}
    commands = await journal.unfinished_commands()
    jobs = tuple(job for job in await journal.async_jobs() if job.session != journal.session)
    if only is not None:
        commands = tuple(c for c in commands if c.domain in only)
        jobs = tuple(job for job in jobs if job.domain in only)
    _check_handlers(commands, jobs, backends, end_actions, handlers)

    unfinished = [
        task
        for command in commands
        if command.state is CommandState.RUNNING
        for task in command.unfinished_tasks
    ]
    statuses = await _query(unfinished, backends)
    updates: list[TaskUpdate] = []
    adopted: list[TaskRecord] = []
    concluded: list[TaskRecord] = []
    failed: list[TaskRecord] = []
    for task in unfinished:
        status = statuses.get(task.id)
        update = _reconcile(task, status)
        if update is not None:
            updates.append(update)
        if update is None or update.state is TaskState.RUNNING:
            adopted.append(attrs.evolve(task, state=TaskState.RUNNING))
        elif status is None:
            failed.append(task)
        else:
            concluded.append(task)
    await journal.update_tasks(updates)
    # Release what ended at the backends: what just concluded, and what ended
    # before the crash (the crash may have come between journaling and
    # releasing it), unless an unfinished task uses that id again.
    in_use = {(t.backend, t.backend_id) for t in adopted}
    ended = {t.id for t in concluded}
    to_release: dict[str, list[str]] = defaultdict(list)
    for command in commands:
        for task in command.tasks:
            if task.backend_id is None or (task.backend, task.backend_id) in in_use:
                continue
            if task.state.final or task.id in ended:
                to_release[task.backend].append(task.backend_id)
    for name, ids in to_release.items():
        await backends[name].release(ids)

    report = RecoveryReport(
        commands=tuple(command.id for command in commands),
        adopted=tuple(task.id for task in adopted),
        concluded=tuple(task.id for task in concluded),
        failed=tuple(task.id for task in failed),
        async_jobs=jobs,
    )

    pending: dict[str, set[str]] = defaultdict(set)
    for task in adopted:
        pending[task.command_id].add(task.id)
    tasks_done = {command_id: anyio.Event() for command_id in pending}

    def on_done(task: TaskRecord) -> None:
        waiting = pending[task.command_id]
        waiting.discard(task.id)
        if not waiting:
            tasks_done[task.command_id].set()

    # One failure leaves as itself (a JournalCorruptError, a handler's
    # RecoveryError), not as a group of one.
    async with unwrap_single(), anyio.create_task_group() as tg:
        # Follow first: a command may wait for another's locks, which it
        # releases only once its adopted tasks are over.
        if adopted:
            tg.start_soon(_follow, journal, adopted, backends, poll_interval, on_done)
        for command in commands:
            await tg.start(
                _complete_command,
                journal,
                command,
                end_actions[command.kind],
                locker,
                tasks_done.get(command.id),
                max_attempts,
                retry_delay,
            )
        for job in jobs:
            await tg.start(handlers[job.kind], job)
            await journal.clear_async_job(job)
        task_status.started(report)
    return report


async def _follow(
    journal: Journal,
    tasks: Sequence[TaskRecord],
    backends: Mapping[str, TaskBackend],
    poll_interval: float,
    on_done: Callable[[TaskRecord], None],
) -> None:
    try:
        await follow_tasks(journal, tasks, backends, poll_interval=poll_interval, on_done=on_done)
    except JournalNotFoundError as exc:
        raise _vanished(journal, "an adopted task", exc) from exc
