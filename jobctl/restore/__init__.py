"""Restore a disk image from a backup store: concurrent fetches, one writer.

A restore reads an image as chunks from a :class:`ChunkSource` and writes
them into one :class:`RestoreTarget`. :func:`restore_image` runs the pipeline
on its own; :func:`restore_disk` runs it as a domain's RESTORE async job.
"""

from jobctl._public import publish

from ._chunks import ChunkMap, ChunkSource
from ._errors import ChunkSizeError, DiskRestoreError, RestoreConfigError
from ._job import restore_disk
from ._pipeline import ProgressCallback, RestorePipeline, restore_image
from ._report import Bound, RestoreReport, RestoreStatistics
from ._settings import (
    DEFAULT_FETCH_CONCURRENCY,
    FETCH_CONCURRENCY_ENV,
    MAX_BUFFERED_ENV,
    RestoreSettings,
)
from ._simulated import (
    MemoryTarget,
    MemoryTargetStatistics,
    SimulatedChunkStore,
    SimulatedStoreStatistics,
)
from ._target import FileTarget, RestoreTarget

__all__ = [
    "DEFAULT_FETCH_CONCURRENCY",
    "FETCH_CONCURRENCY_ENV",
    "MAX_BUFFERED_ENV",
    "Bound",
    "ChunkMap",
    "ChunkSizeError",
    "ChunkSource",
    "DiskRestoreError",
    "FileTarget",
    "MemoryTarget",
    "MemoryTargetStatistics",
    "ProgressCallback",
    "RestoreConfigError",
    "RestorePipeline",
    "RestoreReport",
    "RestoreSettings",
    "RestoreStatistics",
    "RestoreTarget",
    "SimulatedChunkStore",
    "SimulatedStoreStatistics",
    "restore_disk",
    "restore_image",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
