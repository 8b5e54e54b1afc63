"""The host's command executor for plain threads."""

from __future__ import annotations

from typing import Generic, TypeVar, final

from jobctl.host import Command, CommandExecutor, CommandHandle, CommandReport, ExecutionState

from ._loop import EventLoopThread

__all__ = ["BlockingCommand", "BlockingExecutor"]

T = TypeVar("T")


@final
class BlockingExecutor:
    """A running :class:`jobctl.host.CommandExecutor` seen from plain threads.

    Run the executor in the loop (``with loop.enter(CommandExecutor(...)) as
    ex:``) and wrap it: :meth:`submit` queues a command from any thread and
    returns a :class:`BlockingCommand` at once. Thread-safety: every method
    may be called from any thread but the loop's, by many threads at once;
    each runs in the loop, so the executor's admission (entity locks, kind
    caps, priorities, the bounded queue) orders threads as it orders tasks.
    """

    __slots__ = ("_executor", "_loop")

    def __init__(self, loop: EventLoopThread, executor: CommandExecutor) -> None:
        self._loop = loop
        self._executor = executor

    @property
    def executor(self) -> CommandExecutor:
        """The wrapped executor (use it only inside the loop)."""
        return self._executor

    def submit(self, command: Command[T]) -> BlockingCommand[T]:
        """:meth:`jobctl.host.CommandExecutor.submit`: queue ``command``
        (never blocks for the command; raises what ``submit`` raises)."""
        return BlockingCommand(self._loop, self._loop.run_sync(self._executor.submit, command))


@final
class BlockingCommand(Generic[T]):
    """A submitted command's handle for plain threads (any thread may use it)."""

    __slots__ = ("_handle", "_loop")

    def __init__(self, loop: EventLoopThread, handle: CommandHandle[T]) -> None:
        self._loop = loop
        self._handle = handle

    @property
    def id(self) -> int:
        """The command's id (immutable, safe from any thread)."""
        return self._handle.id

    def result(self) -> T:
        """Block until the command has ended; its result, or what
        :meth:`jobctl.host.CommandHandle.result` raises."""
        return self._loop.call(self._handle.result)

    def wait(self) -> CommandReport:
        """Block until the command has ended; its report (never raises it)."""
        return self._loop.call(self._handle.wait)

    def cancel(self) -> None:
        """:meth:`jobctl.host.CommandHandle.cancel`, in the loop."""
        self._loop.run_sync(self._handle.cancel)

    def state(self) -> ExecutionState:
        """The command's state, read in the loop thread."""
        return self._loop.run_sync(lambda: self._handle.state)
