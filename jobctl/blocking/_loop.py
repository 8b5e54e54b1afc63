"""One event loop thread that many caller threads share."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack, suppress
from types import TracebackType
from typing import Any, TypeVar, final

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._bell import Bell
from ._errors import LoopNotRunningError, LoopThreadError

__all__ = ["EventLoopStatistics", "EventLoopThread"]

T = TypeVar("T")


@attrs.frozen
class EventLoopStatistics:
    """Counters of an :class:`EventLoopThread`: ``calls`` blocking calls and
    ``submitted`` futures since it started, ``in_flight`` of those futures
    still running in the loop; ``refused`` calls made from the loop thread
    itself (each raised :class:`LoopThreadError`); ``thread_tasks``, the
    caller threads' tasks alive in the loop (one per live thread that has
    made a :meth:`~EventLoopThread.call`; a thread's ends after the thread
    does)."""

    backend: str
    running: bool
    calls: int
    submitted: int
    refused: int
    in_flight: int
    thread_tasks: int


@final
class _Reply:
    """One call's outcome, left by the loop for the thread that waits.
    Answered once: a second answer (the closing loop sweeping what is left)
    is ignored. Each answer rings the thread's reply bell once."""

    __slots__ = ("_bell", "done", "error", "value")

    def __init__(self, bell: Bell) -> None:
        self._bell = bell
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def succeed(self, value: Any) -> None:
        if not self.done:
            self.value = value
            self.done = True
            self._bell.ring()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self.done = True
            self._bell.ring()


#: One call for a thread's task: ``func(*args)``, awaited if ``awaited``.
_Call = tuple[Callable[..., Any], tuple[Any, ...], bool, _Reply]


@final
class _Mailbox:
    """Between one caller thread and its task in the loop: the calls given
    and not started yet, a door bell (the thread rings, the task waits for
    it) and a reply bell (the task rings, the thread waits). Four file
    descriptors, closed when both the thread and its task are gone."""

    __slots__ = ("calls", "closed", "door", "reply", "scope")

    def __init__(self) -> None:
        #: One call, unless the thread gave up waiting for an earlier call
        #: (an interrupt) and called again: then they run in order.
        self.calls: deque[_Call] = deque()
        #: The thread has ended (or the loop is closing): end when idle.
        self.closed = False
        self.door = Bell(blocking_wait=False)
        self.reply = Bell(blocking_wait=True)
        #: The task's cancel scope (set and used in the loop thread).
        self.scope: anyio.CancelScope | None = None

    def close(self) -> None:
        self.closed = True
        self.door.ring()

    def cancel(self) -> None:
        """Cancel the call under way and end the task (in the loop thread):
        its thread has given up waiting for the call."""
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()


@final
class _ThreadSeat:
    """A caller thread's handle on its mailbox, kept in a thread-local:
    when the thread ends it is dropped, and the task told to end."""

    __slots__ = ("box",)

    def __init__(self) -> None:
        self.box = _Mailbox()

    def __del__(self) -> None:
        self.box.close()


@final
class _ThreadTasks:
    """The task group of the caller threads' tasks, entered in the loop for
    as long as the :class:`EventLoopThread` runs; its exit tells every
    thread task to end when its current call is over, and waits for them."""

    __slots__ = ("_closing", "_group", "live")

    def __init__(self) -> None:
        self._group: TaskGroup | None = None
        self._closing = False
        #: The mailbox of every live thread task, to close them all at exit.
        self.live: set[_Mailbox] = set()

    async def __aenter__(self) -> _ThreadTasks:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._closing = True
        for box in list(self.live):
            box.close()
        assert self._group is not None
        if exc_info[0] is not None:
            # The block was left with an error: stop the calls under way
            # (their threads get LoopNotRunningError); the error itself
            # goes on from the caller's block, not through this group.
            self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)
        return None

    def start(self, box: _Mailbox) -> None:
        """Start the task of a thread's mailbox (in the loop thread)."""
        if self._closing:
            raise LoopNotRunningError("the EventLoopThread is closing")
        if box not in self.live:
            self.live.add(box)
            assert self._group is not None
            self._group.start_soon(self._serve, box)

    async def _serve(self, box: _Mailbox) -> None:
        # The task that waits for the door bell runs the call and rings the
        # reply itself: no hand-off to another task in between (measured,
        # that hop makes the round trip several times dearer).
        calls, door = box.calls, box.door
        try:
            with anyio.CancelScope() as scope:
                box.scope = scope
                while True:
                    if not calls:
                        if box.closed:
                            return
                        await anyio.wait_readable(door.fileno())
                        door.clear()
                        continue
                    func, args, awaited, reply = calls.popleft()
                    try:
                        value = await func(*args) if awaited else func(*args)
                    except anyio.get_cancelled_exc_class() as exc:
                        if self._closing:  # the loop closes with an error
                            reply.fail(
                                LoopNotRunningError("the EventLoopThread stopped during the call")
                            )
                            raise
                        if scope.cancel_called:  # its thread gave up waiting: over
                            reply.fail(exc)
                            raise
                        # Not ours (an asyncio CancelledError raised by hand,
                        # or a task.cancel() from outside): the caller gets
                        # it and this task ends quietly (letting it escape
                        # would cancel the whole group); the thread's next
                        # call starts anew. Closed before the answer: woken,
                        # the thread must not give its next call to this task.
                        box.closed = True
                        reply.fail(exc)
                        return
                    except BaseException as exc:
                        reply.fail(exc)
                    else:
                        reply.succeed(value)
                    del func, args, reply
        finally:
            box.closed = True
            self.live.discard(box)
            while calls:
                calls.popleft()[3].fail(LoopNotRunningError("the EventLoopThread is closing"))


@final
class EventLoopThread:
    """A context manager that runs one event loop in its own thread, for
    callers that are plain threads (anyio's blocking portal).

    ``with EventLoopThread("trio") as loop:`` starts the thread (``backend``
    is ``"trio"`` or ``"asyncio"``, ``backend_options`` as for
    :func:`anyio.run`); leaving the block waits for the tasks still running
    in it, then stops the thread; a call still waiting then raises
    :class:`LoopNotRunningError`.

    Thread-safety: every method may be called from any thread except the
    loop thread itself, where it raises :class:`LoopThreadError` at once
    (it would deadlock). :meth:`call` blocks until the async function has
    returned in the loop; :meth:`submit` returns a
    :class:`concurrent.futures.Future` at once, and cancelling that future
    cancels the task in the loop (its cancel scope), so the work is undone
    as an async cancellation would undo it. jobctl's objects (``Domain``,
    ``VM``, hosts) belong to the loop: touch them only through this thread
    (the ``Blocking*`` wrappers do).

    Each caller thread has one task of its own in the loop, started by its
    first :meth:`call` or :meth:`run_sync` (through the portal) and ended
    after the thread ends; it runs the thread's calls one after another, so
    what the core keys by task (the job a task holds, the monitor it holds)
    is keyed by thread, as a threaded manager expects. A call is one
    wake-up each way on two pipes of the thread's own (the task waits for
    its door pipe in the loop, the thread reads its reply pipe): four file
    descriptors per live caller thread. A call the thread gives up waiting
    for (a signal handler raised: Ctrl-C) is cancelled in the loop, as an
    async caller's cancellation would cancel it (a job or the monitor that
    it waited for is not taken; a flow undoes what it began), and the
    thread's next calls run at once in a new task of its own instead of
    waiting for that to unwind, so an abort after Ctrl-C gets through.
    anyio's ``from_thread.run`` spawns
    a task per call and waits on a queue; ``bench/bench_blocking.py``
    prints both.
    """

    __slots__ = (
        "_backend",
        "_backend_options",
        "_calls",
        "_closed",
        "_counter_lock",
        "_door",
        "_drained",
        "_in_flight",
        "_inbox",
        "_local",
        "_loop_ident",
        "_pending",
        "_portal",
        "_refused",
        "_soon",
        "_stack",
        "_submitted",
        "_tasks",
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
        self._tasks: _ThreadTasks | None = None
        #: The loop's own thread-safe "call this soon" (trio's
        #: ``TrioToken.run_sync_soon``, asyncio's ``call_soon_threadsafe``),
        #: for what must not wait for an answer (cancelling a given-up call).
        self._soon: Callable[..., object] | None = None
        self._local = threading.local()
        self._counter_lock = threading.Lock()
        self._calls = 0
        self._submitted = 0
        self._refused = 0
        #: Set when the loop is closing: no call is taken after it.
        self._closed = True
        #: Calls handed to the loop and not answered yet; those left when
        #: the loop has stopped are answered with LoopNotRunningError.
        self._pending: set[_Reply] = set()
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
            native: Any = portal.call(anyio.lowlevel.current_token).native_token
            self._soon = (
                native.run_sync_soon if self._backend == "trio" else native.call_soon_threadsafe
            )
            self._tasks = stack.enter_context(portal.wrap_async_context_manager(_ThreadTasks()))
            self._local = threading.local()
            self._portal = portal
            with self._counter_lock:
                self._closed = False
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._stack
        with self._counter_lock:
            self._closed = True
        self._portal = None
        self._stack = None
        try:
            if stack is not None:
                stack.__exit__(exc_type, exc, tb)
        finally:
            self._tasks = None
            self._soon = None
            with self._counter_lock:
                left = list(self._pending)
                self._pending.clear()
            for reply in left:
                reply.fail(LoopNotRunningError("the EventLoopThread stopped before the call ran"))

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

    def _hand_over(self, func: Callable[..., Any], args: tuple[Any, ...], awaited: bool) -> Any:
        """Give ``func(*args)`` to the calling thread's task and wait."""
        portal = self._checked()
        seat: _ThreadSeat | None = getattr(self._local, "seat", None)
        if seat is None or seat.box.closed:
            # This thread's first call, or its task ended (by someone
            # else's cancellation): a new task, started through the portal.
            seat = _ThreadSeat()
            try:
                portal.call(self._start, seat.box)
            except LoopNotRunningError:
                raise
            except RuntimeError as exc:  # the portal stopped under the call
                raise LoopNotRunningError("the EventLoopThread is closing") from exc
            self._local.seat = seat
        box = seat.box
        reply = _Reply(box.reply)
        with self._counter_lock:
            if self._closed:
                raise LoopNotRunningError("the EventLoopThread is closing")
            self._calls += 1
            self._pending.add(reply)
        try:
            box.calls.append((func, args, awaited, reply))
            box.door.ring()
            box.reply.wait()  # each answer rings once, and a mailbox's calls are one at a time
        except BaseException:
            if not reply.done:
                # Given up (a signal handler raised, Ctrl-C): the call is
                # cancelled in the loop, as a cancelled async call would be
                # (a job or monitor waited for is not taken). The thread's
                # next calls get a new task rather than wait for that
                # cancellation to unwind (an abort after Ctrl-C gets through).
                self._local.seat = None
                soon = self._soon
                if soon is not None:
                    with suppress(RuntimeError):  # the loop has stopped
                        soon(box.cancel)
            raise
        finally:
            with self._counter_lock:
                self._pending.discard(reply)
        error = reply.error
        if error is not None:
            reply.error = None  # no reference cycle through the traceback
            try:
                raise error
            finally:
                del error
        return reply.value

    def _start(self, box: _Mailbox) -> None:
        tasks = self._tasks
        if tasks is None:
            raise LoopNotRunningError("the EventLoopThread is closing")
        tasks.start(box)

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` in the loop and return its result (or
        raise its error) in the calling thread. Blocks until it is done.

        It runs in the calling thread's own task in the loop (made at its
        first call), so two calls of one thread are one task to the core,
        and calls of two threads are two tasks."""
        result: T = self._hand_over(func, args, True)
        return result

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
        loop-owned state, such as ``Domain.info()``, consistently), in the
        calling thread's task, as :meth:`call` runs a coroutine."""
        result: T = self._hand_over(func, args, False)
        return result

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
                thread_tasks=len(self._tasks.live) if self._tasks is not None else 0,
            )


def _thread_ident() -> int:
    return threading.get_ident()
