"""A first-come-first-served wait queue, filed in lanes.

Every item joins the back of one lane; the queue remembers the order in
which items arrived across all lanes. The holder asks for the earliest item
among the lanes that are open right now, so items of a closed lane (for a
domain: waiters parked behind the async job) cost nothing while closed.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar, final

__all__ = ["WaitQueue"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)


@final
class WaitQueue(Generic[K, T]):
    """FIFO order over items filed in lanes by key.

    ``push`` and ``remove`` are O(1); ``first`` is O(number of lanes asked),
    whatever the number of items queued. Iteration gives every item in
    arrival order (O(n log n): for snapshots, not hot paths).
    """

    __slots__ = ("_lanes", "_len", "_seq")

    def __init__(self) -> None:
        # Each lane maps its items, in arrival order, to their arrival number.
        self._lanes: dict[K, dict[T, int]] = {}
        self._len = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        entries = [(seq, item) for lane in self._lanes.values() for item, seq in lane.items()]
        entries.sort(key=lambda entry: entry[0])
        return (item for _, item in entries)

    def count(self, key: K) -> int:
        """How many items wait in lane ``key``."""
        lane = self._lanes.get(key)
        return 0 if lane is None else len(lane)

    def push(self, key: K, item: T) -> None:
        """Add ``item`` at the back of lane ``key`` (and of the whole queue)."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = {}
        if item in lane:
            raise ValueError(f"{item!r} is queued already")
        lane[item] = next(self._seq)
        self._len += 1

    def remove(self, key: K, item: T) -> bool:
        """Take ``item`` out of lane ``key``; False if it was not there."""
        lane = self._lanes.get(key)
        if lane is None or lane.pop(item, None) is None:
            return False
        self._len -= 1
        return True

    def first_in(self, key: K) -> T | None:
        """The earliest item of lane ``key``, or None."""
        lane = self._lanes.get(key)
        if not lane:
            return None
        return next(iter(lane))

    def first(self, keys: Iterable[K]) -> T | None:
        """The earliest item among lanes ``keys``, or None."""
        best: T | None = None
        best_seq = -1
        for key in keys:
            lane = self._lanes.get(key)
            if not lane:
                continue
            item = next(iter(lane))
            seq = lane[item]
            if best is None or seq < best_seq:
                best, best_seq = item, seq
        return best
