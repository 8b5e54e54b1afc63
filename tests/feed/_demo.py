"""``jobctl demo --serve`` as a subprocess, for the browser test and the README picture."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class DemoError(RuntimeError):
    pass


async def _page_url(stderr: trio.abc.ReceiveStream) -> str:
    """The page's address, from the demo's ``timeline page URL`` line."""
    seen = b""
    while chunk := await stderr.receive_some():
        seen += chunk
        found = re.search(rb"timeline page (http://\S+)", seen)
        if found:
            return found.group(1).decode()
    raise DemoError(f"jobctl demo --serve never named its page; it said: {seen.decode()!r}")


@asynccontextmanager
async def serving_demo(*options: str) -> AsyncIterator[tuple[str, trio.Process]]:
    """Run ``jobctl demo --serve`` on free ports with ``options``; yield the
    page's URL and the process; stop it (SIGINT, then SIGKILL) after."""
    command = [sys.executable, "-m", "jobctl", "demo", "--serve"]
    command += ["--ws-port", "0", "--http-port", "0", *options]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        with trio.fail_after(60):
            url = await _page_url(process.stderr)
        yield url, process
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()
