"""The task journal for plain threads."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, final

import anyio.to_thread

from jobctl import Need
from jobctl.journal import (
    AsyncJobRecord,
    CommandRecord,
    EndContext,
    Journal,
    JournalStatistics,
    RecoveryReport,
    TaskRecord,
    TaskSpec,
    TaskState,
    TaskUpdate,
    recover,
)

from ._loop import EventLoopThread

__all__ = ["BlockingJournal", "EndActionFunction"]

#: An end action a thread gives: a plain function, run on a worker thread of
#: the loop (so it may block), or a coroutine function, run in the loop.
EndActionFunction = Callable[
    [EndContext], "Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None"
]


def _in_loop(action: EndActionFunction) -> Callable[[EndContext], Awaitable[Any]]:
    """``action`` as the journal's async end action."""
    if inspect.iscoroutinefunction(action):
        return action

    def checked(ctx: EndContext) -> Any:
        result = action(ctx)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: not left for the garbage collector to warn
            raise TypeError(
                f"the end action {action!r} returned an awaitable: give a coroutine"
                " function (async def) or a plain function that returns the result"
            )
        return result

    async def run(ctx: EndContext) -> Any:
        return await anyio.to_thread.run_sync(checked, ctx)

    return run


@final
class BlockingJournal:
    """A :class:`jobctl.journal.Journal` open in an :class:`EventLoopThread`,
    seen from plain threads.

    Open the journal in the loop and wrap it::

        with loop.enter(open_journal("tasks.db")) as journal:
            bj = BlockingJournal(loop, journal)
            cmd = bj.begin_command("remove_vm", [TaskSpec("disk0", "storage")])

    Every guarantee is the journal's: each write is durable when the call
    returns, a command's tasks are recorded in one transaction before any
    starts, the end action's journal effect happens once. Thread-safety:
    every method may be called from any thread but the loop's, by many
    threads at once; each runs in the loop, where the store orders the writes
    (concurrent updates are group-committed as they are for tasks). End
    actions may be plain functions: they run on a worker thread of the loop,
    so they may block; coroutine functions run in the loop.
    """

    __slots__ = ("_journal", "_loop")

    def __init__(self, loop: EventLoopThread, journal: Journal) -> None:
        if not isinstance(journal, Journal):
            raise TypeError(f"BlockingJournal wraps a jobctl.journal.Journal, not {journal!r}")
        self._loop = loop
        self._journal = journal

    @property
    def journal(self) -> Journal:
        """The wrapped journal (use it only inside the loop)."""
        return self._journal

    def begin_command(
        self,
        kind: str,
        tasks: Iterable[TaskSpec],
        *,
        entities: Iterable[Need] = (),
        data: Mapping[str, Any] | None = None,
        command_id: str | None = None,
    ) -> CommandRecord:
        """:meth:`jobctl.journal.Journal.begin_command`: the command and all
        its tasks, durable when this returns."""
        specs, needs = tuple(tasks), tuple(entities)

        async def call() -> CommandRecord:
            return await self._journal.begin_command(
                kind, specs, entities=needs, data=data, command_id=command_id
            )

        return self._loop.call(call)

    def update_task(
        self,
        task_id: str,
        state: TaskState,
        *,
        backend_id: str | None = None,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> TaskRecord:
        """:meth:`jobctl.journal.Journal.update_task`."""
        return self.update_tasks(
            [TaskUpdate(task_id, state, backend_id=backend_id, result=result, error=error)]
        )[0]

    def update_tasks(self, updates: Sequence[TaskUpdate]) -> tuple[TaskRecord, ...]:
        """:meth:`jobctl.journal.Journal.update_tasks`: all or none, in one
        transaction."""
        return self._loop.call(self._journal.update_tasks, tuple(updates))

    def command(self, command_id: str) -> CommandRecord:
        """:meth:`jobctl.journal.Journal.command`."""
        return self._loop.call(self._journal.command, command_id)

    def unfinished_commands(self) -> tuple[CommandRecord, ...]:
        """:meth:`jobctl.journal.Journal.unfinished_commands`."""
        return self._loop.call(self._journal.unfinished_commands)

    def active_commands(self, entity_type: str, entity_id: str) -> tuple[str, ...]:
        """:meth:`jobctl.journal.Journal.active_commands`."""
        return self._loop.call(self._journal.active_commands, entity_type, entity_id)

    def entity_busy(self, entity_type: str, entity_id: str) -> bool:
        """:meth:`jobctl.journal.Journal.entity_busy`."""
        return self._loop.call(self._journal.entity_busy, entity_type, entity_id)

    def async_jobs(self) -> tuple[AsyncJobRecord, ...]:
        """:meth:`jobctl.journal.Journal.async_jobs`."""
        return self._loop.call(self._journal.async_jobs)

    def end_command(
        self,
        command_id: str,
        action: EndActionFunction,
        *,
        max_attempts: int = 3,
        retry_delay: float = 1.0,
    ) -> CommandRecord:
        """:meth:`jobctl.journal.Journal.end_command`, with ``action`` a plain
        function (run on a worker thread) or a coroutine function; returns
        the final record."""
        return self.end_command_soon(
            command_id, action, max_attempts=max_attempts, retry_delay=retry_delay
        ).result()

    def end_command_soon(
        self,
        command_id: str,
        action: EndActionFunction,
        *,
        max_attempts: int = 3,
        retry_delay: float = 1.0,
    ) -> Future[CommandRecord]:
        """:meth:`end_command` started in the loop; its future at once.
        Cancelling the future cancels the run (an attempt cut short counts as
        a claim, as a crash does)."""
        run = _in_loop(action)

        async def call() -> CommandRecord:
            return await self._journal.end_command(
                command_id, run, max_attempts=max_attempts, retry_delay=retry_delay
            )

        return self._loop.submit(call)

    def recover(
        self,
        *,
        backends: Mapping[str, Any],
        end_actions: Mapping[str, EndActionFunction],
        **options: Any,
    ) -> RecoveryReport:
        """:func:`jobctl.journal.recover` on this journal, in the loop:
        ``backends`` are the journal's :class:`~jobctl.journal.TaskBackend`
        objects (async, they run in the loop), ``end_actions`` plain or
        coroutine functions; ``options`` are ``recover``'s other keywords.
        Returns when every unfinished command is final."""
        actions = {kind: _in_loop(action) for kind, action in end_actions.items()}

        async def call() -> RecoveryReport:
            return await recover(self._journal, backends=backends, end_actions=actions, **options)

        return self._loop.call(call)

    def statistics(self) -> JournalStatistics:
        """:meth:`jobctl.journal.Journal.statistics`, read in the loop."""
        return self._loop.run_sync(self._journal.statistics)
