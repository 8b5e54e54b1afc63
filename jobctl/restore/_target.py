"""Where a restore writes: the target protocol and a real-file target."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Protocol, Self, final

__all__ = ["FileTarget", "RestoreTarget"]


class RestoreTarget(Protocol):
    """Where a restore writes its chunks: one disk image, one writer.

    ``write`` and ``flush`` are blocking; the pipeline calls them from a
    worker thread, one call at a time, never two at once. ``flush`` is called
    once, after the last write, and makes the writes durable.

    ``skip_zeros`` says whether chunks known to be all zeros may be left
    unwritten because the target already reads as zeros there (a fresh sparse
    file, a zeroed device).
    """

    @property
    def skip_zeros(self) -> bool:
        """True if the target already reads as zeros where nothing was
        written, so all-zero chunks may be left unwritten."""

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at byte ``offset``, all of it (blocking)."""

    def flush(self) -> None:
        """Make every write so far durable (blocking); called once, last."""


@final
class FileTarget:
    """A :class:`RestoreTarget` on a real file or block device, written with
    ``os.pwrite`` and made durable with ``os.fsync``.

    Make one with :meth:`create` (a new sparse file: zero chunks are skipped)
    or :meth:`open` (an existing file or device: zero chunks are written).
    Close it with :meth:`close` or a ``with`` block; the pipeline does not.
    Both constructors block; call them through ``anyio.to_thread.run_sync``
    from async code when the file system may be slow.
    """

    __slots__ = ("_fd", "path", "skip_zeros")

    def __init__(self, fd: int, path: str, *, skip_zeros: bool) -> None:
        self._fd = fd
        self.path = path
        self.skip_zeros = skip_zeros

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int) -> Self:
        """Create a new file of ``size`` bytes, all of it a hole.

        Raises ``FileExistsError`` if ``path`` exists: only a fresh file is
        known to read as zeros where nothing is written.
        """
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        name = os.fspath(path)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(name)
            raise
        return cls(fd, name, skip_zeros=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open an existing file or block device for writing, keeping its
        contents; every chunk, zero or not, is written."""
        name = os.fspath(path)
        return cls(os.open(name, os.O_WRONLY | os.O_CLOEXEC), name, skip_zeros=False)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: a write or flush then raises ``ValueError``."""
        return self._fd < 0

    def write(self, offset: int, data: bytes) -> None:
        """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less
        than asked; this repeats until it is all written)."""
        fd = self._checked_fd()
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def flush(self) -> None:
        """Make every write durable (``os.fsync``)."""
        os.fsync(self._checked_fd())

    def close(self) -> None:
        """Close the file; closing twice is harmless. Does not flush."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<FileTarget {self.path!r} {state} skip_zeros={self.skip_zeros}>"

    def _checked_fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self.path!r}: FileTarget is closed")
        return self._fd
