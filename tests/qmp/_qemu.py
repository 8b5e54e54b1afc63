"""A real QEMU (``-machine none``) whose QMP socket tests connect to."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import Process

from tests._requires import require_qemu


@asynccontextmanager
async def running_qemu() -> AsyncIterator[tuple[str, Process]]:
    """Start QEMU serving QMP on a unix socket; yields the socket's path and the process.

    The socket is bound and listening before QEMU starts (QEMU gets the
    listening descriptor), so connecting never races QEMU's start-up. The
    process is killed and reaped on exit; if the body failed, QEMU's stderr is
    attached to the error as a note.
    """
    binary = require_qemu()
    with tempfile.TemporaryDirectory(prefix="qemu", dir="/tmp") as tmp:
        path = os.path.join(tmp, "qmp.sock")
        log_path = os.path.join(tmp, "stderr.log")
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen(8)
            fd = listener.fileno()
            try:
                process = await anyio.open_process(
                    [
                        binary,
                        *("-machine", "none", "-nodefaults", "-display", "none"),
                        *("-chardev", f"socket,id=qmp,fd={fd},server=on,wait=off"),
                        *("-mon", "chardev=qmp,mode=control"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    pass_fds=[fd],
                )
            finally:
                os.close(log)
        try:
            yield path, process
        except Exception as exc:
            stderr = await anyio.Path(log_path).read_text(errors="replace")
            exc.add_note(f"QEMU stderr:\n{stderr}")
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()
