"""An asyncio event loop on virtual time, like trio's ``MockClock(autojump_threshold=0)``.

:class:`VirtualEventLoop` is a :class:`asyncio.SelectorEventLoop` whose
:meth:`~VirtualEventLoop.time` is a virtual clock, starting at 0. The loop
only ever blocks in its selector; there the clock decides:

* the loop passes timeout 0 (callbacks are ready): poll the real selector;
* otherwise poll the real selector with timeout 0 first: real I/O that is
  ready (a socketpair, a pipe, a thread's ``call_soon_threadsafe``) is
  delivered and no virtual time passes;
* nothing ready and a timer pending (the loop passes a finite timeout, the
  time to its earliest timer): jump the clock by that timeout, so the timer
  is due, and return no events;
* nothing ready and no timer (timeout None): block on the real selector,
  as a plain loop would, until real I/O arrives.

So sleeps and timeouts take no real time, and time only moves when every
task is blocked, exactly as under trio's autojumping clock (which jumps the
same way, by the time to the next deadline). Like it, the clock jumps even
while a thread or a real process is busy on the loop's behalf: code that
waits for real work with a timeout sees the timeout first.

This is the few lines of the idea behind the ``looptime`` project and
asyncio's own test loop, written here rather than depended on: ``looptime``
is a pytest plugin that patches running loops, more than a loop factory
needs. Use it through anyio (``anyio.run(fn, backend="asyncio",
backend_options={"loop_factory": VirtualEventLoop})``) or
:func:`~jobctl.testing.run_virtual` with ``backend="asyncio"``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["VirtualEventLoop"]


@final
class _JumpingSelector(selectors.BaseSelector):
    """A real selector whose blocking waits on a timer become clock jumps."""

    __slots__ = ("_loop", "_real")

    def __init__(self, loop: VirtualEventLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:
            return self._real.select(None)
        self._loop._jump(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()


@final
class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock is virtual: it starts at 0 and, whenever
    the loop would wait for its next timer with nothing ready, jumps straight
    to it. Real I/O is still polled first and delivered as usual."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        """The virtual clock (seconds since the loop was made)."""
        return self._virtual_now

    def _jump(self, seconds: float) -> None:
        self._virtual_now += seconds
