"""The example program, and ``jobctl demo --serve`` handing its trace to the feed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_migrates_with_domstats() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "migrate_with_domstats.py"), "--migrations", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("migration 1: vm1@a -> vm1@b in ")
    assert lines[1].startswith("migration 2: vm1@b -> vm1@a in ")
    assert re.fullmatch(r"domstats: \d+ calls, p99 [\d.]+ ms", lines[2])
    assert lines[3:] == [
        "monitor violations (simulator's detector): 0",
        "invariant violations (trace): 0",
    ]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_demo_serve_starts_the_feed(anyio_backend: Any) -> None:
    command = [sys.executable, "-m", "jobctl", "demo", "--migrations", "1", "--json"]
    command += ["--serve", "--feed-port", "0", "--port", "0"]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        seen = b""
        with trio.fail_after(60):
            while b"serving the feed until interrupted" not in seen:
                chunk = await process.stderr.receive_some()
                assert chunk, f"the demo ended early: {seen!r}"
                seen += chunk
        page = re.search(rb"timeline page (http://\S+)", seen)
        assert page is not None, seen
        status, body = await trio.to_thread.run_sync(_get, page.group(1).decode())
        assert status == 200 and "<html" in body.lower()
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await process.wait()
        out = b""
        while chunk := await process.stdout.receive_some():
            out += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
        await process.stderr.aclose()
    assert process.returncode == 0  # the report was OK; Ctrl-C only ended the serving
    assert b'"ok": true' in out
