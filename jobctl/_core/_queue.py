"""A wait queue, filed in lanes: first come, first served (or by rank).

Every item joins the back of a lane; the queue remembers the order in which
items arrived across all lanes. The holder asks for the earliest item among
the lanes that are open right now, so items of a closed lane cost nothing
while closed: for a domain, waiters parked behind the async job; for entity
locks, the requests of an executor that has no free worker.

A queue made with a ``rank`` serves the lowest rank first (a rank is a
negated priority) and, among equal ranks, the earliest arrival. Without
one every item has rank 0: plain first-come-first-served.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar, final

__all__ = ["WaitQueue"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)


@final
class _Lane(Generic[T]):
    """One lane: its ranks, lowest first, and per rank its items in arrival
    order, each mapped to its arrival number. No rank is empty."""

    __slots__ = ("by_rank", "ranks")

    def __init__(self) -> None:
        self.ranks: list[int] = []
        self.by_rank: dict[int, dict[T, int]] = {}

    def entries(self) -> Iterator[tuple[int, int, T]]:
        """(rank, arrival, item) of every item, in the lane's order."""
        by_rank = self.by_rank
        return ((rank, seq, item) for rank in self.ranks for item, seq in by_rank[rank].items())


@final
class WaitQueue(Generic[K, T]):
    """Items filed in lanes by key, served by (rank, arrival).

    ``push`` and ``remove`` are O(1) (plus a bisect of the lane's ranks when
    a rank appears in or leaves it: never, without a ``rank``); ``first_in``
    and ``last_in`` O(1); ``first`` O(number of lanes asked), whatever the
    number of items queued. Iteration gives every item in queue order
    (O(n log n): for snapshots, not hot paths).

    An item may be filed in several lanes, once in each (entity locks file
    a request under every entity it needs); ``len`` and iteration count each
    filing. ``rank(item)`` must not change while the item is queued.
    """

    __slots__ = ("_lanes", "_len", "_rank", "_seq")

    def __init__(self, rank: Callable[[T], int] | None = None) -> None:
        # No lane is empty: the last item out takes its lane along.
        self._lanes: dict[K, _Lane[T]] = {}
        self._rank = rank
        self._len = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        entries = [entry for lane in self._lanes.values() for entry in lane.entries()]
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        return (item for _, _, item in entries)

    def count(self, key: K) -> int:
        """How many items wait in lane ``key``."""
        lane = self._lanes.get(key)
        return 0 if lane is None else sum(map(len, lane.by_rank.values()))

    def push(self, key: K, item: T) -> None:
        """Add ``item`` to lane ``key``, behind every item of its rank."""
        rank = 0 if self._rank is None else self._rank(item)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        items = lane.by_rank.get(rank)
        if items is None:
            items = lane.by_rank[rank] = {}
            bisect.insort(lane.ranks, rank)
        elif item in items:
            raise ValueError(f"{item!r} is queued already")
        items[item] = next(self._seq)
        self._len += 1

    def remove(self, key: K, item: T) -> bool:
        """Take ``item`` out of lane ``key``; False if it was not there."""
        lane = self._lanes.get(key)
        if lane is None:
            return False
        rank = 0 if self._rank is None else self._rank(item)
        items = lane.by_rank.get(rank)
        if items is None or items.pop(item, None) is None:
            return False
        if not items:
            del lane.by_rank[rank]
            del lane.ranks[bisect.bisect_left(lane.ranks, rank)]
            if not lane.ranks:
                del self._lanes[key]
        self._len -= 1
        return True

    def first_in(self, key: K) -> T | None:
        """The earliest item of lane ``key``, or None."""
        lane = self._lanes.get(key)
        if lane is None:
            return None
        return next(iter(lane.by_rank[lane.ranks[0]]))

    def last_in(self, key: K) -> T | None:
        """The latest item of lane ``key`` (served after all the others), or None."""
        lane = self._lanes.get(key)
        if lane is None:
            return None
        return next(reversed(lane.by_rank[lane.ranks[-1]]))

    def first(self, keys: Iterable[K]) -> T | None:
        """The earliest item among lanes ``keys``, or None."""
        best: T | None = None
        best_at = (0, -1)
        for key in keys:
            lane = self._lanes.get(key)
            if lane is None:
                continue
            rank = lane.ranks[0]
            item, seq = next(iter(lane.by_rank[rank].items()))
            if best is None or (rank, seq) < best_at:
                best, best_at = item, (rank, seq)
        return best

    def ahead_of(self, key: K, item: T) -> Iterator[T]:
        """The items of lane ``key`` served before ``item``, earliest first.

        If ``item`` is not in that lane: those it would wait behind if it
        were pushed now (every item of its rank and below). Stop early to
        pay only for what you read.
        """
        lane = self._lanes.get(key)
        if lane is None:
            return
        rank = 0 if self._rank is None else self._rank(item)
        for lane_rank in lane.ranks:
            if lane_rank > rank:
                return
            for other in lane.by_rank[lane_rank]:
                if other == item:
                    return
                yield other

    def in_order(self, is_open: Callable[[K], bool] | None = None) -> Iterator[T]:
        """Every item, in queue order, lane by lane as each lane's turn comes.

        ``is_open(key)`` is asked before each item of lane ``key`` is
        served; once it is False the lane is left, and its other items cost
        nothing (lanes may close while you walk, not reopen). O(log lanes)
        per item served. Do not push or remove while walking: collect what
        to remove, then remove it.
        """
        heads: list[tuple[int, int, int, T]] = []
        walks: list[tuple[K, Iterator[tuple[int, int, T]]]] = []
        for key, lane in self._lanes.items():
            entries = lane.entries()
            rank, seq, item = next(entries)
            heads.append((rank, seq, len(walks), item))
            walks.append((key, entries))
        heapq.heapify(heads)
        while heads:
            _, _, index, item = heads[0]
            key, walk = walks[index]
            if is_open is not None and not is_open(key):
                heapq.heappop(heads)
                continue
            yield item
            following = next(walk, None)
            if following is None:
                heapq.heappop(heads)
            else:
                rank, seq, item = following
                heapq.heapreplace(heads, (rank, seq, index, item))
