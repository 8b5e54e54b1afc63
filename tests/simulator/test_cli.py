"""``python -m jobctl_simulators.qemu`` as a process, with real sockets."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from jobctl_simulators.qemu._cli import build_parser, parse_size

from .helpers import EVENTS_ON
from .rawqmp import RawQmp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> Any:
    return "trio"  # real time: processes and sockets


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[tuple[Process, list[str]]]:
    """Start the CLI; yield it with the addresses it printed; kill it at the end."""
    process = await anyio.open_process(
        [sys.executable, "-m", "jobctl_simulators.qemu", *args],
        cwd=Path(__file__).parents[2],
    )
    try:
        assert process.stdout is not None
        reader = BufferedByteReceiveStream(process.stdout)
        addresses = []
        with anyio.fail_after(20):
            for _ in range(sum(arg in ("--qmp", "-qmp") for arg in args)):
                line = (await reader.receive_until(b"\n", 1000)).decode()
                assert line.startswith("QMP ")
                addresses.append(line.removeprefix("QMP "))
        yield process, addresses
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()


async def connect(address: str) -> RawQmp:
    if address.startswith("unix:"):
        return await RawQmp.unix(address.removeprefix("unix:"))
    host, _, port = address.removeprefix("tcp:").rpartition(":")
    return RawQmp(await anyio.connect_tcp(host, int(port)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_quit_over_unix_and_tcp(tmp_path: Path) -> None:
    path = tmp_path / "vm.qmp"
    async with simulator(
        "-qmp", f"unix:{path},server=on,wait=off", "--qmp", "tcp:127.0.0.1:0", "-name", "x"
    ) as (
        process,
        addresses,
    ):
        assert addresses[0] == f"unix:{path}"
        assert addresses[1].startswith("tcp:127.0.0.1:") and not addresses[1].endswith(":0")
        async with await connect(addresses[0]) as a, await connect(addresses[1]) as b:
            await a.negotiate()
            await b.negotiate()
            await a.command("quit")
            assert (await b.receive())["event"] == "SHUTDOWN"
        with anyio.fail_after(10):
            assert await process.wait() == 0


async def test_sigterm_shuts_down_like_qemu(tmp_path: Path) -> None:
    async with simulator("--qmp", f"unix:{tmp_path}/vm.qmp") as (process, [address]):
        async with await connect(address) as qmp:
            await qmp.negotiate()
            process.send_signal(signal.SIGTERM)
            event = await qmp.event("SHUTDOWN")
            assert event["data"] == {"guest": False, "reason": "host-signal"}
        with anyio.fail_after(10):
            assert await process.wait() == 0


async def test_die_fault_kills_the_process(tmp_path: Path) -> None:
    async with simulator("--qmp", f"unix:{tmp_path}/vm.qmp", "--fault", "stop=die") as (
        process,
        [address],
    ):
        async with await connect(address) as qmp:
            await qmp.negotiate()
            await qmp.send({"execute": "stop"})
            assert await qmp.at_eof()
        with anyio.fail_after(10):
            assert await process.wait() == -signal.SIGKILL


async def test_strict_violation_exits_3(tmp_path: Path) -> None:
    async with simulator("--qmp", f"unix:{tmp_path}/vm.qmp", "--strict") as (process, [address]):
        async with await connect(address) as qmp:
            await qmp.negotiate()
            await qmp.send(b'{"execute": "query-status"}{"execute": "query-status"}')
            with anyio.fail_after(10):
                assert await process.wait() == 3
        assert process.stderr is not None
        stderr = (await process.stderr.receive()).decode()
        assert "concurrency violation on vm/qmp0#1" in stderr


async def test_migration_between_two_processes(tmp_path: Path) -> None:
    uri = f"tcp:127.0.0.1:{free_port()}"
    async with (
        simulator("--qmp", f"unix:{tmp_path}/src.qmp", "-m", "256") as (_, [src_address]),
        simulator("--qmp", f"unix:{tmp_path}/dst.qmp", "-incoming", "defer") as (
            dst,
            [dst_address],
        ),
        await connect(src_address) as s,
        await connect(dst_address) as d,
    ):
        await s.negotiate()
        await d.negotiate()
        for qmp in (s, d):
            await qmp.command("migrate-set-capabilities", EVENTS_ON)
        await d.command("migrate-incoming", {"uri": uri})
        await s.command("migrate-set-parameters", {"max-bandwidth": 1 << 30})
        await s.command("migrate", {"uri": uri})
        with anyio.fail_after(20):
            await s.event("MIGRATION", status="completed")
            await d.event("MIGRATION", status="completed")
        assert (await d.command("query-status"))["status"] == "running"
        assert (await s.command("query-status"))["status"] == "postmigrate"
        assert (await s.command("query-migrate"))["ram"]["total"] == 256 << 20
        assert dst.returncode is None


async def test_cancelled_cross_process_migration_makes_the_destination_exit_1(
    tmp_path: Path,
) -> None:
    uri = f"unix:{tmp_path}/migrate.sock"
    async with (
        simulator("--qmp", f"unix:{tmp_path}/src.qmp") as (_, [src_address]),
        simulator("--qmp", f"unix:{tmp_path}/dst.qmp", "-incoming", "defer") as (
            dst,
            [dst_address],
        ),
        await connect(src_address) as s,
        await connect(dst_address) as d,
    ):
        await s.negotiate()
        await d.negotiate()
        await d.command("migrate-set-capabilities", EVENTS_ON)
        await d.command("migrate-incoming", {"uri": uri})
        await s.command("migrate-set-parameters", {"max-bandwidth": 1000})
        await s.command("migrate", {"uri": uri})
        with anyio.fail_after(20):
            await d.event("MIGRATION", status="active")
            await s.command("migrate_cancel")
            await d.event("MIGRATION", status="failed")
            assert await dst.wait() == 1
        assert (await s.command("query-status"))["status"] == "running"


def test_parsing() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("64", "M") == 64 << 20
    assert parse_size("4096") == 4096
    parser = build_parser()
    args = parser.parse_args(
        ["-qmp", "unix:/x,server=on,wait=off", "--disk", "d0,size=1G,device=vd0", "-S"]
    )
    assert (args.qmp, args.disk[0].size, args.disk[0].device, args.start_paused) == (
        ["unix:/x"],
        1 << 30,
        "vd0",
        True,
    )
    for bad in (
        ["--qmp", "udp:x"],
        ["--disk", "d0,colour=red"],
        ["--fault", "x=boom"],
        ["-m", "lots"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_main_is_public() -> None:
    import jobctl_simulators.qemu
    from jobctl_simulators.qemu import _cli

    assert jobctl_simulators.qemu.main is _cli.main
    args = build_parser().parse_args(["-qmp", "unix:/x", "--command-latency", "0.25"])
    assert args.command_latency == 0.25
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--command-latency", bad])
