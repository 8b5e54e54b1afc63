"""Headless Chromium driven over the DevTools protocol (trio).

The flags are what Chromium needs to run as root in a sandboxed container.
DevTools listens on a port Chromium picks (``--remote-debugging-port=0``)
and names in ``DevToolsActivePort``; its websocket is spoken with
trio-websocket.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, final

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class DevToolsError(RuntimeError):
    pass


@final
class Page:
    """One browser tab, attached in flat mode."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = 0
        self.session: str | None = None
        #: Uncaught JavaScript exceptions seen so far (after Runtime.enable).
        self.exceptions: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        request: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if self.session is not None:
            request["sessionId"] = self.session
        await self._ws.send_message(json.dumps(request))
        while True:
            reply = json.loads(await self._ws.get_message())
            if reply.get("method") == "Runtime.exceptionThrown":
                details = reply["params"]["exceptionDetails"]
                self.exceptions.append(
                    details.get("exception", {}).get("description", str(details))
                )
            if reply.get("id") != self._ids:
                continue  # an event
            if "error" in reply:
                raise DevToolsError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png")
        await trio.Path(path).write_bytes(base64.b64decode(result["data"]))


async def _devtools_url(profile: Path, process: trio.Process) -> str:
    active = profile / "DevToolsActivePort"
    # Chromium writes the file once it listens; there is no other signal.
    while not active.exists() or len(active.read_text().splitlines()) < 2:
        if process.returncode is not None:
            raise DevToolsError(f"chromium exited with status {process.returncode}")
        await trio.sleep(0.05)
    port, path = active.read_text().splitlines()[:2]
    return f"ws://127.0.0.1:{port}{path}"


async def _stop(process: trio.Process) -> None:
    """Stop Chromium and every process it started (its own process group)."""
    group = process.pid  # started in a new session: its group id is its pid
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        with trio.move_on_after(grace):
            await process.wait()
            # Helpers (zygote, crash handler) may outlive the browser a moment.
            while True:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    return
                await trio.sleep(0.05)


@asynccontextmanager
async def open_page(
    chromium: str, url: str, *, width: int = 1400, height: int = 800
) -> AsyncIterator[Page]:
    """Start Chromium, open ``url`` in a tab, yield it; stop Chromium after."""
    profile = tempfile.mkdtemp(prefix="jobctl-chromium-")
    try:
        command = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ]
        process = await trio.lowlevel.open_process(
            [*command, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            with trio.fail_after(60):
                devtools = await _devtools_url(Path(profile), process)
            async with open_websocket_url(devtools, max_message_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                target = await page.call("Target.createTarget", url="about:blank")
                attached = await page.call(
                    "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                page.session = attached["sessionId"]
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                await page.call("Runtime.enable")
                await page.call("Page.navigate", url=url)
                yield page
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process)
    finally:
        shutil.rmtree(profile)
