"""One event loop thread that many caller threads share."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack
from types import TracebackType
from typing import Any, TypeVar, final

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.lowlevel import EventLoopToken

from ._errors import LoopNotRunningError, LoopThreadError

__all__ = ["EventLoopStatistics", "EventLoopThread"]

T = TypeVar("T")


@attrs.frozen
class EventLoopStatistics:
    """Counters of an :class:`EventLoopThread`: ``calls`` blocking calls and
    ``submitted`` futures since it started, ``in_flight`` of those still
    running in the loop; ``refused`` calls made from the loop thread itself
    (each raised :class:`LoopThreadError`)."""

    backend: str
    running: bool
    calls: int
    submitted: int
    refused: int
    in_flight: int


@final
class EventLoopThread:
    """A context manager that runs one event loop in its own thread, for
    callers that are plain threads (anyio's blocking portal).

    ``with EventLoopThread("trio") as loop:`` starts the thread (``backend``
    is ``"trio"`` or ``"asyncio"``, ``backend_options`` as for
    :func:`anyio.run`); leaving the block waits for the tasks still running
    in it, then stops the thread.

    Thread-safety: every method may be called from any thread except the
    loop thread itself, where it raises :class:`LoopThreadError` at once
    (it would deadlock). :meth:`call` blocks until the async function has
    returned in the loop; :meth:`submit` returns a
    :class:`concurrent.futures.Future` at once, and cancelling that future
    cancels the task in the loop (its cancel scope), so the work is undone
    as an async cancellation would undo it. jobctl's objects (``Domain``,
    ``VM``, hosts) belong to the loop: touch them only through this thread
    (the ``Blocking*`` wrappers do).
    """

    __slots__ = (
        "_backend",
        "_backend_options",
        "_calls",
        "_counter_lock",
        "_drained",
        "_in_flight",
        "_loop_ident",
        "_portal",
        "_refused",
        "_stack",
        "_submitted",
        "_token",
    )

    def __init__(
        self, backend: str = "trio", backend_options: dict[str, Any] | None = None
    ) -> None:
        if backend not in ("trio", "asyncio"):
            raise ValueError(f"backend is 'trio' or 'asyncio', not {backend!r}")
        self._backend = backend
        self._backend_options = backend_options
        self._portal: BlockingPortal | None = None
        self._stack: ExitStack | None = None
        self._loop_ident: int | None = None
        self._token: EventLoopToken | None = None
        self._counter_lock = threading.Lock()
        self._calls = 0
        self._submitted = 0
        self._refused = 0
        #: Submitted tasks not yet finished (raised in the caller's thread,
        #: lowered in the loop, under the counter lock).
        self._in_flight = 0
        #: Set (in the loop) when ``_in_flight`` falls to 0 while a drain waits.
        self._drained: anyio.Event | None = None

    @property
    def backend(self) -> str:
        """``"trio"`` or ``"asyncio"``."""
        return self._backend

    def __enter__(self) -> EventLoopThread:
        if self._portal is not None:
            raise LoopNotRunningError("this EventLoopThread is running already")
        with ExitStack() as stack:
            portal = stack.enter_context(
                start_blocking_portal(self._backend, self._backend_options)
            )
            self._loop_ident = portal.call(_thread_ident)
            self._token = portal.call(anyio.lowlevel.current_token)
            self._portal = portal
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._stack
        self._portal = None
        self._token = None
        self._stack = None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)

    def in_loop_thread(self) -> bool:
        """Whether the calling thread is the loop thread (safe from any thread)."""
        return self._loop_ident is not None and threading.get_ident() == self._loop_ident

    def _checked(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            raise LoopNotRunningError("the EventLoopThread is not running (enter it first)")
        if threading.get_ident() == self._loop_ident:
            with self._counter_lock:
                self._refused += 1
            raise LoopThreadError(
                "a blocking jobctl call from the event loop thread would deadlock; "
                "await the async API there instead"
            )
        return portal

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``await func(*args)`` in the loop and return its result (or
        raise its error) in the calling thread. Blocks until it is done.

        One round trip (``anyio.from_thread.run`` on the loop's token): on
        trio the call runs as a system task, on asyncio as a task."""
        self._checked()
        with self._counter_lock:
            self._calls += 1
        return anyio.from_thread.run(func, *args, token=self._token)

    def submit(self, func: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
        """Start ``func(*args)`` as a task in the loop and return its future
        at once. ``future.cancel()`` cancels the task (it ends as the async
        call ends when cancelled); ``future.result()`` waits for it."""
        portal = self._checked()
        with self._counter_lock:
            self._submitted += 1
            self._in_flight += 1
        try:
            return portal.start_task_soon(self._tracked, func, *args)
        except BaseException:
            self._settle()
            raise

    async def _tracked(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await func(*args)
        finally:
            self._settle()

    def _settle(self) -> None:
        with self._counter_lock:
            self._in_flight -= 1
            done = self._in_flight == 0
        if done and self._drained is not None and self.in_loop_thread():
            self._drained.set()
            self._drained = None

    def drain(self) -> None:
        """Block until every task started by :meth:`submit` has finished.

        A cancelled future is done at once, while its task may still be
        cleaning up in the loop (a cancelled migration cancels QEMU's
        migration first); after ``drain()`` every such clean-up is over.
        """
        self.call(self._drain)

    async def _drain(self) -> None:
        with self._counter_lock:
            pending = self._in_flight > 0
        if pending:
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()
        else:
            await anyio.lowlevel.checkpoint()

    def run_sync(self, func: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``func(*args)`` in the loop thread (to read
        loop-owned state, such as ``Domain.info()``, consistently)."""
        self._checked()
        with self._counter_lock:
            self._calls += 1
        return anyio.from_thread.run_sync(func, *args, token=self._token)

    def enter(self, manager: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]:
        """The async context manager ``manager`` as a plain one: entered and
        exited in one task in the loop, so its cancel scopes stay whole
        (``with loop.enter(open_simulated_host("a")) as host:``)."""
        return self._checked().wrap_async_context_manager(manager)

    def statistics(self) -> EventLoopStatistics:
        """The counters, read under a lock (safe from any thread)."""
        with self._counter_lock:
            return EventLoopStatistics(
                backend=self._backend,
                running=self._portal is not None,
                calls=self._calls,
                submitted=self._submitted,
                refused=self._refused,
                in_flight=self._in_flight,
            )


def _thread_ident() -> int:
    return threading.get_ident()
