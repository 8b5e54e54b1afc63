"""The command executor: a bounded pool of workers over entity-locked commands.

Every submitted command queues at once as a request on the executor's
:class:`EntityLocks`, ordered by priority, then submission. It starts when

* it can hold all its entities at once (no holder and no request queued
  ahead of it conflicts),
* it is the head of its group (``group``, or the one ``sequential`` lane):
  the group's earlier commands are over,
* a worker is free and its kind is under its ``kind_limits`` cap.

While it waits, for whatever reason, it keeps its place in the queue: a
later command that conflicts with it on an entity starts after it. So, at
equal priority, commands that conflict start in submission order, and the
outcome is that of running them one at a time in submission order; commands
that do not conflict overlap freely. A group member's priority counts at
most as much as the members ahead of it (it cannot pass them anyway), so
the queue order agrees with every group's order and nothing waits on
something queued behind it: no deadlock.

So the lock queue is a priority order, not a FIFO; the executor's own
waiting commands are one: a :class:`WaitQueue` (the core's) in lanes by
group, each lane in submission order, its first item the group's next head.

A command's failure is its own: it is recorded in its handle and the
summary, and the other commands go on.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Hashable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Generic, TypeVar, cast, final

import anyio
import anyio.abc
import anyio.lowlevel

from jobctl._core._queue import WaitQueue

from ._command import Command, CommandContext
from ._errors import (
    CommandCancelledError,
    CommandNotRunError,
    CommandQueueFullError,
    EntityLockBusyError,
    EntityLockTimeoutError,
    ExecutorClosedError,
)
from ._locks import EntityLocks, LockGrant, _Request, check_timeout
from ._report import CommandReport, ExecutionState, ExecutorStatistics, ExecutorSummary

__all__ = ["CommandExecutor", "CommandHandle"]

T = TypeVar("T")


class _Lane:
    """The group key of ``sequential=True`` commands."""

    def __repr__(self) -> str:
        return "<sequential lane>"


_SEQUENTIAL: Final = _Lane()


@enum.unique
class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@final
class _Item:
    """One submitted command and everything the executor tracks about it."""

    __slots__ = (
        "command",
        "context",
        "done",
        "error",
        "finished_at",
        "grant",
        "group",
        "head",
        "id",
        "label",
        "priority",
        "request",
        "scope",
        "started_at",
        "state",
        "submitted_at",
        "timer",
        "value",
    )

    def __init__(self, command: Command[Any], id: int, now: float) -> None:
        self.command = command
        self.id = id
        self.label = f"{command.name} #{id}"
        self.group: Hashable | None = _SEQUENTIAL if command.sequential else command.group
        #: The priority it queues at (capped by the group members ahead).
        self.priority = command.priority
        #: Whether it is its group's current command (always, without a group).
        self.head = self.group is None
        self.state = ExecutionState.QUEUED
        self.submitted_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.value: object = None
        self.error: BaseException | None = None
        self.request: _Request | None = None
        self.grant: LockGrant | None = None
        self.context: CommandContext | None = None
        self.timer: anyio.CancelScope | None = None
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()

    def report(self) -> CommandReport:
        return CommandReport(
            id=self.id,
            name=self.command.name,
            kind=self.command.kind,
            state=self.state,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            progress=None if self.context is None else self.context.progress,
        )


@final
class CommandHandle(Generic[T]):
    """A submitted command: its state, progress, result, and a way to cancel it."""

    __slots__ = ("_executor", "_item")

    def __init__(self, executor: CommandExecutor, item: _Item) -> None:
        self._executor = executor
        self._item = item

    @property
    def id(self) -> int:
        """The command's id: unique within its executor, numbered from 1 in
        submission order.
        """
        return self._item.id

    @property
    def command(self) -> Command[T]:
        """The :class:`Command` that was submitted, as it was."""
        return cast(Command[T], self._item.command)

    @property
    def state(self) -> ExecutionState:
        """The command's state now (see :class:`ExecutionState`): it only moves
        forward, and once ``state.finished`` it never changes again.
        """
        return self._item.state

    @property
    def progress(self) -> object:
        """The command's latest :meth:`CommandContext.set_progress` value."""
        context = self._item.context
        return None if context is None else context.progress

    def report(self) -> CommandReport:
        """A snapshot of the command's state and timing."""
        return self._item.report()

    async def wait(self) -> CommandReport:
        """Wait until the command is over; return its report (never raises
        the command's error)."""
        await self._item.done.wait()
        return self._item.report()

    async def result(self) -> T:
        """Wait until the command is over; return its value or raise its error.

        FAILED raises the command's own exception (or
        :class:`EntityLockTimeoutError` or :class:`EntityLockBusyError`), CANCELLED raises
        :class:`CommandCancelledError`, NOT_RUN :class:`CommandNotRunError`.
        """
        await self._item.done.wait()
        if self._item.error is not None:
            raise self._item.error
        return cast(T, self._item.value)

    def cancel(self) -> None:
        """Cancel the command: a queued one never runs (NOT_RUN), a running
        one is cancelled (CANCELLED). No-op once it is over."""
        self._executor._cancel(self._item)

    def __repr__(self) -> str:
        return f"<CommandHandle {self._item.label} {self._item.state.value}>"


def _check_positive(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value!r}")
    return value


def _check_limits(kind_limits: Mapping[str, int] | None) -> Mapping[str, int]:
    if kind_limits is None:
        return MappingProxyType({})
    if not isinstance(kind_limits, Mapping):
        raise TypeError(f"kind_limits must be a mapping of kind to cap, got {kind_limits!r}")
    for kind, cap in kind_limits.items():
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"kind_limits keys must be non-empty str kinds, got {kind!r}")
        _check_positive(cap, f"kind_limits[{kind!r}]")
    return MappingProxyType(dict(kind_limits))


@final
class CommandExecutor:
    """Runs :class:`Command` values on at most ``workers`` workers at once.

    ``async with CommandExecutor(workers=8) as ex:`` starts it; the block
    waits on leaving for every submitted command (like a task group) and
    cancels them all if the block raises. :meth:`stop` ends it early.

    * ``max_queued`` > 0 bounds the commands submitted and not started;
      :meth:`submit` past it raises :class:`CommandQueueFullError`.
    * ``kind_limits`` caps how many commands of a kind run at once
      (``{"backup": 2}`` keeps workers free for start and stop).
    * ``locks`` may be shared with other executors or with code that takes
      entity locks itself; by default the executor has its own.
    * ``history`` bounds how many finished reports the summary keeps
      (counts are always exact).
    """

    __slots__ = (
        "_counts",
        "_heads",
        "_history",
        "_idle",
        "_ids",
        "_kind_limits",
        "_locks",
        "_max_queued",
        "_name",
        "_phase",
        "_rejected",
        "_reports",
        "_running",
        "_running_by_kind",
        "_submitted",
        "_task_group",
        "_waiting",
        "_workers",
    )

    def __init__(
        self,
        *,
        workers: int,
        max_queued: int = 0,
        kind_limits: Mapping[str, int] | None = None,
        locks: EntityLocks | None = None,
        name: str = "executor",
        history: int = 10_000,
    ) -> None:
        self._workers = _check_positive(workers, "workers")
        if not isinstance(max_queued, int) or isinstance(max_queued, bool) or max_queued < 0:
            raise ValueError(f"max_queued must be an int >= 0 (0: unbounded), got {max_queued!r}")
        self._max_queued = max_queued
        self._kind_limits = _check_limits(kind_limits)
        if locks is not None and not isinstance(locks, EntityLocks):
            raise TypeError(f"locks must be an EntityLocks, got {locks!r}")
        self._locks = EntityLocks() if locks is None else locks
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self._name = name
        self._history = _check_positive(history, "history")
        self._phase = _Phase.NEW
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ids = itertools.count(1)
        # Items submitted and not started, in submission order, in lanes by
        # group (None: no group).
        self._waiting: WaitQueue[Hashable | None, _Item] = WaitQueue()
        # Items on a worker.
        self._running: dict[int, _Item] = {}
        self._running_by_kind: collections.Counter[str] = collections.Counter()
        # Group key -> the group's current command (queued or running); the
        # rest of the group waits behind it in the group's lane.
        self._heads: dict[Hashable, _Item] = {}
        self._idle: anyio.Event | None = None
        self._reports: collections.deque[CommandReport] = collections.deque(maxlen=history)
        self._counts: collections.Counter[ExecutionState] = collections.Counter()
        self._submitted = 0
        self._rejected = 0

    def __repr__(self) -> str:
        return (
            f"<CommandExecutor {self._name!r} {self._phase.value}: {len(self._running)}/"
            f"{self._workers} running, {len(self._waiting)} queued>"
        )

    @property
    def name(self) -> str:
        """The executor's name (the ``name`` argument): it names the executor in
        its errors and its repr.
        """
        return self._name

    @property
    def workers(self) -> int:
        """How many commands may run at once (the ``workers`` argument)."""
        return self._workers

    @property
    def locks(self) -> EntityLocks:
        """The entity locks the executor's commands take."""
        return self._locks

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> CommandExecutor:
        if self._phase is not _Phase.NEW:
            raise ExecutorClosedError(f"executor {self._name!r} can only be entered once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._phase = _Phase.RUNNING
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        assert task_group is not None
        join_error: BaseException | None = None
        if exc is None:
            try:
                await self.join()
            except BaseException as error:  # cancelled while waiting for the commands
                join_error = error
        failing = exc is not None or join_error is not None
        # Idle now (or failing): from here on nothing new may be queued.
        self._shut_down("the executor's block raised" if failing else "the executor's block ended")
        if failing:
            for item in self._running.values():
                item.scope.cancel()
            task_group.cancel_scope.cancel()
        try:
            # Commands' own errors never reach the task group, so the block's
            # error is re-raised as it is, not wrapped in an exception group.
            await task_group.__aexit__(None, None, None)
        finally:
            self._phase = _Phase.STOPPED
        if join_error is not None:
            raise join_error

    async def join(self) -> None:
        """Wait until no command is queued or running. Always a checkpoint.

        When it returns, the executor is idle at that moment (no await
        separates the check from the return).
        """
        await anyio.lowlevel.checkpoint()
        while self._waiting or self._running:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def stop(self, grace: float | None = None) -> ExecutorSummary:
        """Stop: refuse new commands, drop the queued ones (NOT_RUN) and wait
        for the running ones; after ``grace`` seconds (None: no limit) cancel
        those still running and wait for them to end. Returns the summary.

        Safe to call more than once; the executor's block may go on after it.
        Not from inside one of its own commands: it would wait for itself.
        """
        wait = check_timeout(grace, "grace")
        if self._phase is _Phase.NEW:
            raise ExecutorClosedError(f"executor {self._name!r} was never started")
        self._shut_down("the executor stopped")
        with anyio.move_on_after(wait):
            await self.join()
        for item in self._running.values():
            item.scope.cancel()
        await self.join()
        return self.summary()

    # -- submitting -----------------------------------------------------------

    def submit(self, command: Command[T]) -> CommandHandle[T]:
        """Queue ``command`` and return its handle at once.

        Raises :class:`ExecutorClosedError` unless the executor is running
        and :class:`CommandQueueFullError` when ``max_queued`` commands are
        already waiting. Never blocks.
        """
        if not isinstance(command, Command):
            raise TypeError(f"submit() takes a Command, got {command!r}")
        if self._phase is not _Phase.RUNNING:
            raise ExecutorClosedError(
                f"executor {self._name!r} is {self._phase.value}: cannot submit {command.name!r}"
            )
        if self._max_queued and len(self._waiting) >= self._max_queued:
            self._rejected += 1
            raise CommandQueueFullError(
                f"executor {self._name!r} refused {command.name!r}: {len(self._waiting)} "
                f"commands are queued (max_queued={self._max_queued}), "
                f"{len(self._running)} running"
            )
        item = _Item(command, next(self._ids), anyio.current_time())
        self._submitted += 1
        if item.group is not None:
            last = self._waiting.last_in(item.group)
            if last is None:
                last = self._heads.get(item.group)
            if last is None:
                item.head = True
                self._heads[item.group] = item
            else:
                item.priority = min(item.priority, last.priority)
        self._waiting.push(item.group, item)
        self._enqueue(item)
        if item.head and not self._check_head(item):
            self._next_in_group(item)
        return CommandHandle(self, item)

    # -- inspecting -----------------------------------------------------------

    def statistics(self) -> ExecutorStatistics:
        """Counts of the executor's commands now."""
        return ExecutorStatistics(
            workers=self._workers,
            running=len(self._running),
            queued=len(self._waiting),
            running_by_kind=MappingProxyType(dict(self._running_by_kind)),
            submitted=self._submitted,
            succeeded=self._counts[ExecutionState.SUCCEEDED],
            failed=self._counts[ExecutionState.FAILED],
            cancelled=self._counts[ExecutionState.CANCELLED],
            not_run=self._counts[ExecutionState.NOT_RUN],
            rejected=self._rejected,
        )

    def summary(self) -> ExecutorSummary:
        """What happened so far: counts and the finished commands' reports."""
        return ExecutorSummary(
            name=self._name,
            submitted=self._submitted,
            succeeded=self._counts[ExecutionState.SUCCEEDED],
            failed=self._counts[ExecutionState.FAILED],
            cancelled=self._counts[ExecutionState.CANCELLED],
            not_run=self._counts[ExecutionState.NOT_RUN],
            rejected=self._rejected,
            reports=tuple(self._reports),
        )

    # -- internals: queueing ---------------------------------------------------

    def _pool_open(self) -> bool:
        """Whether a worker is free for one more command."""
        return self._phase is _Phase.RUNNING and len(self._running) < self._workers

    def _kind_has_room(self, kind: str) -> bool:
        cap = self._kind_limits.get(kind)
        return cap is None or self._running_by_kind[kind] < cap

    def _has_room(self, kind: str) -> bool:
        return self._pool_open() and self._kind_has_room(kind)

    def _enqueue(self, item: _Item) -> None:
        """Queue ``item`` on the locks; it may start at once."""
        kind = item.command.kind
        request = self._locks._request(
            item.command.needs,
            item.label,
            item.priority,
            pool=self,
            ready=lambda: item.head and self._kind_has_room(kind),
            on_grant=lambda grant: self._start(item, grant),
        )
        item.request = request
        self._locks._enqueue(request)

    def _check_head(self, item: _Item) -> bool:
        """``item`` just became its group's head: apply its ``lock_timeout``.
        False if it failed at once (``lock_timeout=0`` and an entity is taken)."""
        assert item.request is not None
        timeout = item.command.lock_timeout
        if timeout is None or not item.request.queued:
            return True
        if timeout == 0:
            conflicts = self._locks._conflicts(item.request)
            if not conflicts:
                return True  # only waiting for a worker: that is not an entity conflict
            error = EntityLockBusyError(
                self._locks._message(item.request, "at once (lock_timeout=0)", conflicts),
                owner=item.label,
                conflicts=conflicts,
            )
            self._settle(item, ExecutionState.FAILED, error)
            return False
        assert self._task_group is not None
        item.timer = anyio.CancelScope()
        self._task_group.start_soon(self._expire, item, timeout, name=f"lock timer {item.label}")
        return True

    async def _expire(self, item: _Item, timeout: float) -> None:
        assert item.timer is not None and item.request is not None
        with item.timer:
            await anyio.sleep(timeout)
            request = item.request
            conflicts = self._locks._conflicts(request)
            if request.queued and conflicts:
                error = EntityLockTimeoutError(
                    self._locks._message(request, f"within {timeout}s", conflicts),
                    owner=item.label,
                    conflicts=conflicts,
                )
                self._settle(item, ExecutionState.FAILED, error)
                self._next_in_group(item)

    def _next_in_group(self, ended: _Item, grant: LockGrant | None = None) -> None:
        """``ended``, its group's head, is over (and out of the waiting
        lanes): make the next member the head, then release ``grant`` (or
        rescan), so the new head competes for the freed entities and worker
        from its place in the queue."""
        group = ended.group
        head = None if group is None else self._new_head(group)
        if grant is not None:
            self._locks.release(grant)
        else:
            self._locks._rescan()
        while head is not None and not self._check_head(head):
            head = self._new_head(group)
            if head is not None:
                self._locks._rescan()

    def _new_head(self, group: Hashable) -> _Item | None:
        """The head of ``group`` is over: the first of its waiting members,
        if any, is its head now."""
        head = self._waiting.first_in(group)
        if head is None:
            del self._heads[group]
        else:
            head.head = True
            self._heads[group] = head
        return head

    def _cancel(self, item: _Item) -> None:
        if item.state is ExecutionState.RUNNING:
            item.scope.cancel()
        elif item.state is ExecutionState.QUEUED:
            error = CommandNotRunError(
                f"{item.label} was cancelled before it started", reason="cancelled"
            )
            self._settle(item, ExecutionState.NOT_RUN, error)
            if item.head:
                self._next_in_group(item)

    def _shut_down(self, why: str) -> None:
        """Refuse new commands and drop every queued one (NOT_RUN)."""
        if self._phase is _Phase.RUNNING:
            self._phase = _Phase.STOPPING
        dropped = list(self._waiting)
        if not dropped:
            return
        # Our requests can no longer be granted (the pool is closed now), so
        # withdrawing them only lets other users of the locks go.
        self._locks._withdraw(*(item.request for item in dropped if item.request is not None))
        for item in dropped:
            error = CommandNotRunError(f"{item.label} never ran: {why}", reason="stopped")
            self._settle(item, ExecutionState.NOT_RUN, error)
        # What is left of each group is its running head, if any.
        for group, head in list(self._heads.items()):
            if head.state is not ExecutionState.RUNNING:
                del self._heads[group]

    # -- internals: running ----------------------------------------------------

    def _start(self, item: _Item, grant: LockGrant) -> None:
        """Called by the locks when ``item`` got its entities and a worker."""
        assert self._task_group is not None
        self._waiting.remove(item.group, item)
        if item.timer is not None:
            item.timer.cancel()
        item.state = ExecutionState.RUNNING
        item.grant = grant
        item.started_at = anyio.current_time()
        item.context = CommandContext(item.command, item.id, item.label, grant)
        self._running[item.id] = item
        self._running_by_kind[item.command.kind] += 1
        self._task_group.start_soon(self._run, item, name=item.label)

    async def _run(self, item: _Item) -> None:
        assert item.context is not None
        state = ExecutionState.CANCELLED
        error: BaseException | None = None
        try:
            with item.scope:
                item.value = await item.command.run(item.context)
                state = ExecutionState.SUCCEEDED
        except Exception as exc:
            state, error = ExecutionState.FAILED, exc
        except BaseException:
            # Cancelled from outside the command's own scope: the executor
            # is going down, so start nothing more.
            self._shut_down("the executor was cancelled")
            raise
        finally:
            if state is ExecutionState.CANCELLED and error is None:
                error = CommandCancelledError(f"{item.label} was cancelled while running")
            self._finish(item, state, error)

    def _finish(self, item: _Item, state: ExecutionState, error: BaseException | None) -> None:
        assert item.grant is not None
        del self._running[item.id]
        kind = item.command.kind
        self._running_by_kind[kind] -= 1
        if not self._running_by_kind[kind]:
            del self._running_by_kind[kind]
        self._record(item, state, error)
        # Releasing rescans the queue, which sees the free worker.
        self._next_in_group(item, item.grant)
        self._wake_joiners()

    def _settle(self, item: _Item, state: ExecutionState, error: BaseException) -> None:
        """End a command that never started."""
        assert item.request is not None
        self._locks._withdraw(item.request)
        self._waiting.remove(item.group, item)
        if item.timer is not None:
            item.timer.cancel()
        self._record(item, state, error)
        self._wake_joiners()

    def _record(self, item: _Item, state: ExecutionState, error: BaseException | None) -> None:
        item.state = state
        item.error = error
        item.finished_at = anyio.current_time()
        self._counts[state] += 1
        self._reports.append(item.report())
        item.done.set()

    def _wake_joiners(self) -> None:
        if self._idle is not None and not self._waiting and not self._running:
            self._idle.set()
            self._idle = None
