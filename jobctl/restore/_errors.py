"""The exceptions of the restore pipeline."""

from __future__ import annotations

from typing import final

__all__ = ["ChunkSizeError", "DiskRestoreError", "RestoreConfigError"]


@final
class DiskRestoreError(Exception):
    """A disk restore failed at one chunk; the rest of it was cancelled.

    Only the first failure is reported. ``index`` is the chunk it came from
    (``None`` if the final flush failed), ``cause`` (also ``__cause__``) is
    the exception the source, the target or the progress callback raised.
    """

    def __init__(self, index: int | None, cause: Exception) -> None:
        where = "at the final flush" if index is None else f"at chunk {index}"
        super().__init__(f"restore failed {where}: {type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause
        self.__cause__ = cause


@final
class ChunkSizeError(ValueError):
    """A chunk source returned a chunk whose length is not the chunk's length
    in the chunk map. Reported as the cause of a :class:`DiskRestoreError`."""

    def __init__(self, index: int, *, expected: int, actual: int) -> None:
        super().__init__(f"chunk {index} has {actual} bytes, expected {expected}")
        self.index = index
        self.expected = expected
        self.actual = actual


@final
class RestoreConfigError(ValueError):
    """A restore setting is out of range, whether passed to a call or read
    from an environment variable (the message names which)."""
