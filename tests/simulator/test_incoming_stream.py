"""An incoming migration over a real unix socket: bad streams and the socket file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl_simulators.qemu import SimulatedHost, SimulatedQemu

from .helpers import EVENTS_ON, client, names

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param  # real time: real sockets


async def _events_until_eof(qmp: Any) -> list[str]:
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while True:
            try:
                seen.append(await qmp.receive())
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return names([m for m in seen if "event" in m])


@pytest.mark.parametrize(
    "stream",
    [b"", b"\x00\xffQEVM garbage\n", b'{"sent": 5}\n', b'{"hello": {}}\n[1, 2]\n', b"no newline"],
    ids=["empty", "garbage", "no-hello", "bad-message", "cut-short"],
)
async def test_a_bad_incoming_stream_fails_at_once_and_exits_1(
    stream: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "in.sock"
    async with SimulatedQemu("dst", host=SimulatedHost(network=True), incoming="defer") as dst:
        d = await client(dst)
        await d.command("migrate-set-capabilities", EVENTS_ON)
        await d.command("migrate-incoming", {"uri": f"unix:{path}"})
        assert path.is_socket()
        async with await anyio.connect_unix(path) as source:
            if stream:
                await source.send(stream)
            await source.send_eof()
            assert await _events_until_eof(d) == ["MIGRATION:active", "MIGRATION:failed"]
        assert await dst.wait_exited() == 1
        assert not path.exists()
        await d.aclose()


async def test_the_socket_file_goes_once_the_source_connected(tmp_path: Path) -> None:
    path = tmp_path / "in.sock"
    async with SimulatedQemu("dst", host=SimulatedHost(network=True), incoming="defer") as dst:
        d = await client(dst)
        await d.command("migrate-set-capabilities", EVENTS_ON)
        await d.command("migrate-incoming", {"uri": f"unix:{path}"})
        async with await anyio.connect_unix(path) as source:
            await source.send(json.dumps({"hello": {"source": "test"}}).encode() + b"\n")
            await source.send(b'{"sent": 4096}\n{"done": {"running": true}}\n')
            with anyio.fail_after(10):
                await d.event("MIGRATION", status="completed")
        assert not path.exists() and dst.run_state == "running"
        assert (await d.command("query-migrate")) == {"status": "completed"}
        await d.aclose()


async def test_the_socket_file_goes_when_the_vm_exits(tmp_path: Path) -> None:
    path = tmp_path / "in.sock"
    async with SimulatedQemu("dst", host=SimulatedHost(network=True), incoming="defer") as dst:
        d = await client(dst)
        await d.command("migrate-incoming", {"uri": f"unix:{path}"})
        assert path.is_socket()
        await d.command("quit")
        assert await dst.wait_exited() == 0
        await d.aclose()
    assert not path.exists()
