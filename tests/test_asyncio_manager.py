"""examples/asyncio_manager.py: the asyncio manager served by uvicorn, started
on a free port and driven with real HTTP requests: a migration with domstats
polled while it runs, and an aborted one; on the simulator and real QEMU."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._requires import require_qemu

ROOT = Path(__file__).resolve().parent.parent
#: Slow enough (64 MiB at 4 MiB/s: 16 s) to abort in the middle.
SLOW = 4 << 20


#: The feed's line, read by manager() for the test that asked for a feed.
_feed_lines: list[str] = []


@contextmanager
def manager(*args: str) -> Iterator[httpx.Client]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "asyncio_manager.py"), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://"), (line, process.stderr)
        if "--feed-port" in args:
            _feed_lines.append(process.stdout.readline())
        with httpx.Client(base_url=line.split()[-1], timeout=30) as client:
            yield client
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Polls the manager (another process: nothing to wait on but its answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout} s")


def scenario(client: httpx.Client) -> None:
    listed = client.get("/domains").json()
    assert [(vm["name"], vm["host"]) for vm in listed] == [("vm1", "a")]
    assert client.get("/domains/nowhere").status_code == 404
    assert client.post("/domains/vm1/migrate?bandwidth=-1").status_code == 400

    # A migration, domstats polled while it runs.
    assert client.post(f"/domains/vm1/migrate?bandwidth={SLOW * 8}").status_code == 202
    assert client.post("/domains/vm1/migrate").status_code == 409
    seen: list[dict[str, Any]] = []

    def poll() -> bool:
        stats = client.get("/domains/vm1/domstats").json()
        if stats["migration"] is not None:
            seen.append(stats)
        return not client.get("/domains/vm1/migration").json()["migrating"]

    until(poll)
    last = client.get("/domains/vm1/migration").json()["last"]
    assert last["ok"], last
    assert last["result"]["progress"]["status"] == "completed"
    assert seen and seen[0]["migration"]["status"] == "active" and seen[0]["host"] == "a"
    info = client.get("/domains/vm1").json()
    assert info["host"] == "b"
    assert client.get("/domains/vm1/domstats").json()["state"] == "running"
    completed = info["info"]["completed_async_job"]
    assert completed["kind"] == "migration_in" and completed["outcome"] == "ok"

    # An aborted migration: the VM runs on where it was.
    assert client.post(f"/domains/vm1/migrate?bandwidth={SLOW}").status_code == 202
    until(lambda: client.get("/domains/vm1/domstats").json()["migration"] is not None)
    running = client.get("/domains/vm1").json()["info"]["async_job"]
    assert running["kind"] == "migration_out" and running["started"]["utc"].endswith("+00:00")
    assert client.post("/domains/vm1/abort").json() == {"aborted": True}
    until(lambda: not client.get("/domains/vm1/migration").json()["migrating"])
    last = client.get("/domains/vm1/migration").json()["last"]
    assert not last["ok"] and "JobAbortedError" in last["error"]
    info = client.get("/domains/vm1").json()
    assert info["host"] == "b" and info["info"]["completed_async_job"]["outcome"] == "aborted"
    assert client.get("/domains/vm1/domstats").json()["state"] == "running"


def test_the_asyncio_manager_on_the_simulator() -> None:
    with manager() as client:
        scenario(client)


@pytest.mark.qemu
def test_the_asyncio_manager_on_real_qemu() -> None:
    require_qemu()
    with manager("--qemu") as client:
        scenario(client)


def test_the_asyncio_manager_serves_the_live_feed() -> None:
    """The feed in an asyncio program's task group: a real websocket client
    sees the migration the HTTP API started."""
    import json
    import re

    from websockets.sync.client import connect

    with manager("--feed-port", "0") as client:
        # The line after "listening on": where the feed is.
        feed_line = _feed_lines.pop()
        found = re.search(r"\(websocket (ws://\S+)\)", feed_line)
        assert found is not None, feed_line
        with connect(found.group(1)) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"
            assert client.post(f"/domains/vm1/migrate?bandwidth={SLOW * 64}").status_code == 202
            seen: set[str] = set()
            while "async.begin" not in seen:
                message = json.loads(ws.recv(timeout=30))
                if message["type"] == "events":
                    seen |= {e["kind"] for e in message["events"] if e["domain"] == "vm1"}
        until(lambda: not client.get("/domains/vm1/migration").json()["migrating"])
