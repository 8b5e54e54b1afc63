"""A pipe used as a bell between the loop thread and caller threads."""

from __future__ import annotations

import os
from contextlib import suppress
from typing import final

__all__ = ["Bell"]


@final
class Bell:
    """One side rings (a byte into a pipe), the other waits for it.

    A pipe rather than a lock or the loop's own wake-up socket: Linux wakes
    a pipe's reader as a *synchronous* wake-up (the writer is about to wait
    itself), so the scheduler may run the woken thread on the writer's CPU
    and a round trip between two threads can stay on one core; a futex
    wake-up gives no such hint. :meth:`ring` never blocks (the write end is
    non-blocking; a full pipe is ringing already). With ``blocking_wait``
    the read end blocks in :meth:`wait` (a caller thread waiting for its
    reply); without it the loop waits for :meth:`fileno` to be readable and
    empties it with :meth:`clear`. Closed by :meth:`close` or when dropped.
    """

    __slots__ = ("_read", "_write")

    def __init__(self, *, blocking_wait: bool) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        os.set_blocking(self._read, blocking_wait)

    def fileno(self) -> int:
        """The read end, to wait for it to be readable."""
        return self._read

    def ring(self) -> None:
        """Write one byte (from any thread, at once); nothing once closed."""
        write = self._write
        if write >= 0:
            with suppress(BlockingIOError):  # full: the reader has plenty to wake for
                os.write(write, b"\0")

    def wait(self) -> None:
        """Read one byte, blocking until it comes (``blocking_wait`` only)."""
        os.read(self._read, 1)

    def clear(self) -> None:
        """Read every byte there is, without blocking."""
        with suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        read, write = self._read, self._write
        self._read = self._write = -1
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)

    def __del__(self) -> None:
        self.close()
