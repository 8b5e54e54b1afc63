"""What a restore reads: the chunk map of an image and the source of its chunks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, final

import attrs

__all__ = ["ChunkMap", "ChunkSource"]


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _not_negative(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def _indices(values: Iterable[int]) -> frozenset[int]:
    return frozenset(values)


@final
@attrs.frozen
class ChunkMap:
    """The layout of an image: ``size`` bytes cut into chunks of ``chunk_size``
    bytes (the last one may be shorter), and which of them are all zeros.

    Chunks in ``zero`` are never fetched. The constructor checks that every
    index in ``zero`` names a chunk of the image.
    """

    size: int = attrs.field(validator=_not_negative)
    chunk_size: int = attrs.field(validator=_positive)
    zero: frozenset[int] = attrs.field(default=frozenset(), converter=_indices)

    def __attrs_post_init__(self) -> None:
        bad = sorted(i for i in self.zero if not 0 <= i < self.count)
        if bad:
            raise ValueError(
                f"zero chunk indices out of range 0..{self.count - 1}: {bad[:5]}"
                + (" ..." if len(bad) > 5 else "")
            )

    @property
    def count(self) -> int:
        """How many chunks the image has."""
        return -(-self.size // self.chunk_size)

    def offset(self, index: int) -> int:
        """Where chunk ``index`` starts in the image."""
        self._check(index)
        return index * self.chunk_size

    def length(self, index: int) -> int:
        """How many bytes chunk ``index`` has."""
        self._check(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def data_chunks(self) -> Iterable[int]:
        """The indices of the chunks that are not known to be zero, in order."""
        return (i for i in range(self.count) if i not in self.zero)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"chunk index {index} out of range 0..{self.count - 1}")


class ChunkSource(Protocol):
    """Where a restore reads chunks from: a backup store, over a network or
    from a cache.

    ``fetch`` may be called for several chunks at once (up to the restore's
    fetch concurrency) and is never called for a chunk the map marks zero.
    It must return exactly ``chunk_map.length(index)`` bytes.
    """

    @property
    def chunk_map(self) -> ChunkMap:
        """The image's chunks: their sizes, and which are known to be all
        zeros (never fetched). It does not change while a restore runs."""
        ...

    async def fetch(self, index: int) -> bytes:
        """Chunk ``index``'s bytes, exactly ``chunk_map.length(index)`` of
        them (the restore fails with :class:`ChunkSizeError` otherwise); an
        exception fails the restore, naming the chunk."""
        ...
