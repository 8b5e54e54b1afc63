"""Test doubles for the restore pipeline: a source and a target that the test
holds at a gate, so it can look at the pipeline while they wait."""

from __future__ import annotations

import os
import threading

import anyio

from jobctl.restore import ChunkMap, MemoryTarget


def make_image(count: int, chunk_size: int, zero: set[int], tail: int = 0) -> bytes:
    """``count`` chunks (the last one ``tail`` bytes short), random except the
    ``zero`` ones. Random chunks are never all zero."""
    size = count * chunk_size - tail
    image = bytearray(os.urandom(size))
    for start in range(0, size, chunk_size):
        if start // chunk_size in zero:
            image[start : start + chunk_size] = bytes(len(image[start : start + chunk_size]))
        else:
            image[start] = 1  # never all zero
    return bytes(image)


class GatedSource:
    """A chunk source whose fetches wait until ``gate`` is set."""

    def __init__(self, image: bytes, chunk_size: int, zero: set[int]) -> None:
        self.chunk_map = ChunkMap(len(image), chunk_size, zero)
        self.image = image
        self.gate = anyio.Event()
        self.started: list[int] = []
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def fetch(self, index: int) -> bytes:
        self.started.append(index)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        except BaseException:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        start = self.chunk_map.offset(index)
        return self.image[start : start + self.chunk_map.length(index)]


class GatedTarget:
    """A memory target whose writes block (in the writer thread) until
    ``gate`` is set; ``entered`` is set once a write began, ``log`` records
    the end of each write."""

    def __init__(self, size: int, *, skip_zeros: bool = True) -> None:
        self.inner = MemoryTarget(size, skip_zeros=skip_zeros)
        self.skip_zeros = skip_zeros
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.log: list[str] = []

    def write(self, offset: int, data: bytes) -> None:
        self.entered.set()
        if not self.gate.wait(timeout=60):  # only a broken test gets here
            raise TimeoutError("GatedTarget's gate was never opened")
        self.inner.write(offset, data)
        self.log.append(f"wrote {offset}")

    def flush(self) -> None:
        self.inner.flush()
