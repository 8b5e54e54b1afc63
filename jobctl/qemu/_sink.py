"""A save file's receiving end: a unix socket that writes one migration stream to a file.

QEMU saves a VM by migrating it; the manager gives it somewhere to migrate
to (libvirt passes a descriptor). Here QEMU connects to a private unix
socket (``unix:PATH`` works on every QEMU and on the simulator) and the
sink copies what arrives into the file, so no shell runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final

import anyio
import anyio.abc

from jobctl._groups import unwrap_single

__all__ = ["SaveSink", "open_save_sink"]


@final
class SaveSink:
    """Where QEMU sends a save (:attr:`uri`); :meth:`wait` until it is written."""

    def __init__(self, uri: str, path: str) -> None:
        self.uri = uri
        self.path = path
        #: Whether the stream arrived and the file was opened for it.
        self.opened = False
        #: Bytes written to the file so far.
        self.written = 0
        #: Why writing failed, if it did.
        self.error: OSError | None = None
        self._done = anyio.Event()
        # Whether the file may exist: set before it is opened, since the
        # open (on a worker thread) creates it before it returns.
        self._touched = False
        self._scope = anyio.CancelScope()

    @property
    def done(self) -> bool:
        """Whether the stream ended (or writing failed)."""
        return self._done.is_set()

    async def wait(self) -> None:
        """Wait until QEMU closed the stream and the file is written."""
        await self._done.wait()

    async def discard(self) -> None:
        """Stop receiving, wait until the receiver has stopped, then remove
        what was written: a failed save leaves no partial file, even when the
        stream arrived while the save was being given up (the file's open,
        on a worker thread, may create it after a caller has looked)."""
        self._scope.cancel()
        await self._done.wait()
        if self._touched:
            await anyio.Path(self.path).unlink(missing_ok=True)

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        try:
            with self._scope:
                async with listener:
                    stream = await listener.accept()
                async with stream:
                    self._touched = True
                    async with await anyio.open_file(self.path, "wb") as file:
                        self.opened = True
                        async for chunk in stream:
                            await file.write(chunk)
                            self.written += len(chunk)
        except OSError as exc:
            self.error = exc
        finally:
            self._done.set()


@asynccontextmanager
async def open_save_sink(path: str | os.PathLike[str]) -> AsyncIterator[SaveSink]:
    """A sink that writes the one stream it accepts to ``path``.

    Leaving the block closes the socket (a stream still arriving is cut
    off) and removes it.
    """
    directory = tempfile.mkdtemp(prefix="jobctl-save-")
    try:
        socket_path = os.path.join(directory, "save.sock")
        listener = await anyio.create_unix_listener(socket_path)
        sink = SaveSink(f"unix:{socket_path}", os.fspath(path))
        async with unwrap_single(), anyio.create_task_group() as tg:
            tg.start_soon(sink._serve, listener)
            try:
                yield sink
            finally:
                tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
