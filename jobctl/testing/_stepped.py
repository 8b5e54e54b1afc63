"""A trio run driven step by step from synchronous code.

Hypothesis's stateful testing (``RuleBasedStateMachine``) has no async
rules. :class:`SteppedRun` keeps one trio run alive across rules by running
it in trio's *guest mode*, with this object as the host loop: each call
(:meth:`~SteppedRun.run`, :meth:`~SteppedRun.advance`, ...) lets the run go
on until that call's work is done, then pauses it. Time is virtual
(``MockClock(autojump_threshold=0)``), so a rule that waits a minute takes
no real time, and between calls nothing moves.
"""

from __future__ import annotations

import contextlib
import queue
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, TypeVar, final

import outcome
import trio
import trio.lowlevel
import trio.testing

from jobctl.testing._runner import _seeded_scheduler

__all__ = ["SteppedRun", "SteppedRunError"]

T = TypeVar("T")

#: Real seconds the host waits for the guest before it calls the run stuck.
_STUCK_AFTER: Final = 30.0


class SteppedRunError(RuntimeError):
    """The stepped run is closed, or its background tasks failed (the
    ``__cause__`` holds their errors)."""


@final
class _Request:
    __slots__ = ("args", "fn", "result")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.result: outcome.Outcome[Any] | None = None


@final
class SteppedRun:
    """One trio run on virtual time, advanced by synchronous calls.

    Background tasks (:meth:`start_soon`) run whenever the run is going,
    that is during :meth:`run`, :meth:`call` and :meth:`advance`. Each
    request runs under a ``step_limit`` (virtual seconds), so a request that
    would wait forever fails with ``trio.TooSlowError`` instead of hanging.
    ``seed`` seeds trio's scheduler, so a sequence of calls replays the same
    interleaving every time. Close it (or use it as a context manager) to
    cancel what is left and end the run.
    """

    __slots__ = (
        "_callbacks",
        "_done",
        "_nursery",
        "_ready",
        "_reported",
        "_requests",
        "_seeding",
        "step_limit",
    )

    def __init__(self, *, seed: int = 0, step_limit: float = 3600.0) -> None:
        if not step_limit > 0:
            raise ValueError(f"step_limit must be > 0, not {step_limit!r}")
        self.step_limit = step_limit
        self._callbacks: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._requests: deque[_Request | None] = deque()
        self._done: outcome.Outcome[None] | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = False
        self._reported = False
        self._seeding: contextlib.AbstractContextManager[None] | None = _seeded_scheduler(seed)
        self._seeding.__enter__()
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self._callbacks.put,
            done_callback=self._finished,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        self._pump(None)

    # -- the guest -----------------------------------------------------------

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                # The host stops pumping once we are ready: the run pauses here.
                self._ready = True
                await trio.lowlevel.checkpoint()
                request = self._requests.popleft()
                if request is None:
                    nursery.cancel_scope.cancel()
                    return
                with trio.move_on_after(self.step_limit) as scope:
                    result = await outcome.acapture(request.fn, *request.args)
                    if isinstance(result, outcome.Error) and isinstance(
                        result.error, trio.Cancelled
                    ):
                        # Not the request's to keep: let it reach its cancel scope.
                        result.unwrap()
                if scope.cancelled_caught:
                    result = outcome.Error(
                        trio.TooSlowError(f"step still running after {self.step_limit} s")
                    )
                request.result = result

    def _finished(self, result: outcome.Outcome[None]) -> None:
        self._done = result

    # -- the host ------------------------------------------------------------

    def _pump(self, request: _Request | None) -> None:
        """Run the guest until it is ready for the next request (or done)."""
        while self._done is None and not self._ready:
            try:
                callback = self._callbacks.get(timeout=_STUCK_AFTER)
            except queue.Empty:
                raise SteppedRunError(
                    f"the guest run made no progress for {_STUCK_AFTER} real seconds"
                ) from None
            callback()
        done = self._done
        if done is None:
            return
        if self._seeding is not None:
            self._seeding.__exit__(None, None, None)
            self._seeding = None
        if isinstance(done, outcome.Error) and not self._reported:
            self._reported = True
            raise SteppedRunError("a task of the stepped run failed") from done.error
        if request is not None and request.result is None:
            raise SteppedRunError("the stepped run is closed")

    def _submit(self, request: _Request | None) -> None:
        if self._done is not None:
            if request is None:
                return
            raise SteppedRunError("the stepped run is closed")
        self._requests.append(request)
        self._ready = False
        self._pump(request)

    def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` inside the run, to completion, and return
        its result (or raise its error). Background tasks go on meanwhile."""
        request = _Request(async_fn, args)
        self._submit(request)
        assert request.result is not None
        result: T = request.result.unwrap()
        return result

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the synchronous ``fn(*args)`` inside the run (for trio objects
        that must be touched from the run, such as cancel scopes)."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper)

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Start a background task; it first runs during the next call. If it
        fails, the run ends and the next call raises :class:`SteppedRunError`."""

        async def spawn() -> None:
            assert self._nursery is not None
            self._nursery.start_soon(async_fn, *args)

        self.run(spawn)

    def advance(self, seconds: float) -> None:
        """Let the run go on for ``seconds`` of virtual time."""
        self.run(trio.sleep, seconds)

    def current_time(self) -> float:
        """The run's virtual clock."""
        return self.run(_now)

    @property
    def closed(self) -> bool:
        """Whether the run has ended (after :meth:`close`, or the trio run
        ended by itself): a new request then raises :class:`SteppedRunError`.
        """
        return self._done is not None

    def close(self) -> None:
        """Cancel every background task and end the run; raise
        :class:`SteppedRunError` if a background task had failed. Idempotent."""
        if self._done is None:
            self._submit(None)

    def __enter__(self) -> SteppedRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _now() -> float:
    return trio.current_time()
