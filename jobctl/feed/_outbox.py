"""A client's bounded outbox: the producer never waits, the consumer learns of gaps."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar, final

import anyio
import anyio.lowlevel
import attrs

__all__ = ["Outbox", "OutboxStatistics", "Resync"]

T = TypeVar("T")


@final
@attrs.frozen
class Resync:
    """A marker in the stream: send a fresh snapshot here; ``dropped`` items
    were lost right before it (0 when the resync was asked for)."""

    dropped: int


@final
class _Gap:
    __slots__ = ("dropped",)

    def __init__(self, dropped: int) -> None:
        self.dropped = dropped


@final
@attrs.frozen
class OutboxStatistics:
    #: Items waiting to be taken.
    buffered: int
    capacity: int
    #: Items refused by :meth:`Outbox.put_nowait` since the outbox was made.
    dropped: int


@final
class Outbox(Generic[T]):
    """Holds at most ``capacity`` items for one consumer.

    :meth:`put_nowait` never blocks: when the outbox is full it drops the item
    and leaves a :class:`Resync` marker in its place, so the consumer meets
    the gap exactly where it happened, with the number of items lost there.
    Consecutive drops (and resync requests) share one marker, so the outbox
    holds at most ``2 * capacity + 1`` entries.
    """

    __slots__ = ("_capacity", "_dropped", "_entries", "_items", "_waiter")

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"an outbox's capacity must be an int of at least 1, not {capacity!r}")
        self._capacity = capacity
        self._entries: deque[T | _Gap] = deque()
        self._items = 0
        self._dropped = 0
        # The consumer's wake-up, while it waits (one consumer).
        self._waiter: anyio.Event | None = None

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def put_nowait(self, item: T) -> bool:
        """Queue ``item``; if full, drop it (count it) and return False."""
        if self._items >= self._capacity:
            self._dropped += 1
            self._gap().dropped += 1
            return False
        self._entries.append(item)
        self._items += 1
        self._wake()
        return True

    def resync_nowait(self) -> None:
        """Queue a :class:`Resync` marker (merged with one already at the end)."""
        self._gap()

    def _gap(self) -> _Gap:
        entries = self._entries
        if entries and isinstance(entries[-1], _Gap):
            return entries[-1]
        gap = _Gap(0)
        entries.append(gap)
        self._wake()
        return gap

    def get_nowait(self) -> T | Resync:
        """Take the oldest entry; raise :class:`anyio.WouldBlock` when empty."""
        if not self._entries:
            raise anyio.WouldBlock
        entry = self._entries.popleft()
        if isinstance(entry, _Gap):
            return Resync(entry.dropped)
        self._items -= 1
        return entry

    async def get(self) -> T | Resync:
        """Take the oldest entry, waiting for one. Always a checkpoint."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            entry = self.get_nowait()
        except anyio.WouldBlock:
            pass
        else:
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return entry
        while not self._entries:
            if self._waiter is None:
                self._waiter = anyio.Event()
            await self._waiter.wait()
        return self.get_nowait()

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(self._items, self._capacity, self._dropped)
