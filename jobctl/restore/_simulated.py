"""A simulated chunk store and an in-memory target, for tests, examples and benchmarks."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import final

import anyio
import attrs

from ._chunks import ChunkMap

__all__ = [
    "MemoryTarget",
    "MemoryTargetStatistics",
    "SimulatedChunkStore",
    "SimulatedStoreStatistics",
]


@final
@attrs.frozen
class SimulatedStoreStatistics:
    """``fetches``: how many times each chunk was fetched; ``in_flight``: fetches
    running now; ``max_in_flight``: the most that ever ran at once."""

    fetches: collections.Counter[int]
    in_flight: int
    max_in_flight: int


@final
class SimulatedChunkStore:
    """A :class:`ChunkSource` over an image held in memory.

    Its chunk map marks every all-zero chunk as zero. Each fetch sleeps
    ``latency(index)`` seconds of the event loop's clock (a number is the same
    latency for every chunk), then returns a copy of the chunk.
    """

    def __init__(
        self,
        image: bytes,
        chunk_size: int,
        *,
        latency: float | Callable[[int], float] = 0.0,
    ) -> None:
        layout = ChunkMap(len(image), chunk_size)
        zero = frozenset(
            i
            for i in range(layout.count)
            if image.count(0, layout.offset(i), layout.offset(i) + layout.length(i))
            == layout.length(i)
        )
        self._map = ChunkMap(len(image), chunk_size, zero)
        self._image = image
        self._latency = latency if callable(latency) else (lambda _: latency)
        self._fetches: collections.Counter[int] = collections.Counter()
        self._in_flight = 0
        self._max_in_flight = 0

    @property
    def chunk_map(self) -> ChunkMap:
        """The image's chunk layout, every all-zero chunk marked zero (so a
        restore never fetches one).
        """
        return self._map

    async def fetch(self, index: int) -> bytes:
        """Chunk ``index`` after its latency. Raises ``IndexError`` for a
        chunk the image does not have."""
        start, length = self._map.offset(index), self._map.length(index)
        self._fetches[index] += 1
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            await anyio.sleep(self._latency(index))
        finally:
            self._in_flight -= 1
        return self._image[start : start + length]

    def statistics(self) -> SimulatedStoreStatistics:
        """The store's counters now (see :class:`SimulatedStoreStatistics`): a
        snapshot, its ``fetches`` a copy.
        """
        return SimulatedStoreStatistics(
            fetches=collections.Counter(self._fetches),
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
        )


@final
@attrs.frozen
class MemoryTargetStatistics:
    """``writes``: calls to ``write``; ``max_writers``: the most ``write``
    calls that ever overlapped (1 when the one-writer rule held);
    ``flushes``: calls to ``flush``."""

    writes: int
    max_writers: int
    flushes: int


@final
class MemoryTarget:
    """A :class:`RestoreTarget` that writes into a ``bytearray`` (``data``).

    Each write blocks for ``write_cost`` seconds of real time (``time.sleep``),
    like a device with that cost per write. It starts all zeros, so by
    default zero chunks may be skipped.
    """

    def __init__(self, size: int, *, skip_zeros: bool = True, write_cost: float = 0.0) -> None:
        if write_cost < 0:
            raise ValueError(f"write_cost must not be negative, got {write_cost}")
        self.data = bytearray(size)
        self.skip_zeros = skip_zeros
        self._write_cost = write_cost
        self._lock = threading.Lock()
        self._writers = 0
        self._max_writers = 0
        self._writes = 0
        self._flushes = 0

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` to ``offset``. Raises ``ValueError`` past the end."""
        if offset < 0 or offset + len(data) > len(self.data):
            raise ValueError(
                f"write of {len(data)} bytes at {offset} is outside the target "
                f"({len(self.data)} bytes)"
            )
        with self._lock:
            self._writers += 1
            self._max_writers = max(self._max_writers, self._writers)
        try:
            if self._write_cost:
                time.sleep(self._write_cost)
            self.data[offset : offset + len(data)] = data
        finally:
            with self._lock:
                self._writers -= 1
                self._writes += 1

    def flush(self) -> None:
        """Count the flush (:attr:`data` is already as durable as memory gets):
        :meth:`statistics` shows how often the pipeline flushed.
        """
        with self._lock:
            self._flushes += 1

    def statistics(self) -> MemoryTargetStatistics:
        """The target's counters now (see :class:`MemoryTargetStatistics`), read
        under its lock: safe while writes run in other threads.
        """
        with self._lock:
            return MemoryTargetStatistics(
                writes=self._writes, max_writers=self._max_writers, flushes=self._flushes
            )
