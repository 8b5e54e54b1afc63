"""Monitors: one client at a time, several per VM, real sockets, memory streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl_simulators.qemu import SimulatedHost, SimulatedQemu, memory_stream_pair

from .helpers import client
from .rawqmp import RawQmp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param  # real clocks: these tests move bytes through the kernel


async def test_a_second_client_waits_for_the_first() -> None:
    async with SimulatedQemu() as vm:
        monitor = vm.add_monitor()
        first = RawQmp(await monitor.connect_memory())
        await first.negotiate()
        second = RawQmp(await monitor.connect_memory())
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.05) as waited:
            await second.greeting()
        assert waited.cancelled_caught  # no greeting while the first is connected
        await first.command("stop")
        await first.aclose()
        await second.negotiate()
        assert (await second.command("query-status"))["status"] == "paused"
        assert monitor.connections == 2
        await second.aclose()


async def test_events_reach_every_monitor() -> None:
    async with SimulatedQemu() as vm:
        a, b, c = await client(vm), await client(vm), await client(vm)
        events, _ = await a.execute("stop")
        assert [e["event"] for e in events] == ["STOP"]
        assert (await b.receive())["event"] == "STOP"
        assert (await c.receive())["event"] == "STOP"
        assert vm.statistics().open_connections == 3
        for qmp in (a, b, c):
            await qmp.aclose()


async def test_unix_and_tcp_listeners(tmp_path: Path) -> None:
    async with SimulatedQemu() as vm:
        path = tmp_path / "qmp.sock"
        path.touch()  # a stale file that is not a socket is left alone...
        with pytest.raises(OSError):
            await vm.add_monitor("bad").serve_unix(path)
        path.unlink()
        address = await vm.add_monitor("unix").serve_unix(path)
        assert address == f"unix:{path}"
        host, port = await vm.add_monitor("tcp").serve_tcp("127.0.0.1", 0)
        async with await RawQmp.unix(str(path)) as over_unix:
            await over_unix.negotiate()
            async with RawQmp(await anyio.connect_tcp(host, port)) as over_tcp:
                await over_tcp.negotiate()
                await over_unix.command("stop")
                assert (await over_tcp.receive())["event"] == "STOP"
                await over_tcp.command("quit")
                assert await over_unix.event("SHUTDOWN")
                assert await over_unix.at_eof()
        assert await vm.wait_exited() == 0
    assert not path.exists()  # the listener removed its socket


async def test_several_vms_in_one_host() -> None:
    host = SimulatedHost()
    async with SimulatedQemu("a", host=host) as a, SimulatedQemu("b", host=host) as b:
        assert dict(host.vms) == {"a": a, "b": b}
        assert host.vm("a") is a
        with pytest.raises(ValueError, match="already runs"):
            async with SimulatedQemu("a", host=host):
                pass
        qa, qb = await client(a), await client(b)
        await qa.command("stop")
        assert (await qb.command("query-status"))["status"] == "running"
        await qa.aclose()
        await qb.aclose()
    assert dict(host.vms) == {}
    with pytest.raises(LookupError, match="no simulated VM 'a'"):
        host.vm("a")


async def test_quit_flushes_shutdown_then_closes_every_connection() -> None:
    async with SimulatedQemu() as vm:
        a, b = await client(vm), await client(vm)
        events, reply = await a.execute("quit", id="q")
        assert ([e["event"] for e in events], reply) == (["SHUTDOWN"], {"return": {}, "id": "q"})
        assert events[0]["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert (await b.receive())["event"] == "SHUTDOWN"
        assert await a.at_eof()
        assert await b.at_eof()
        assert await vm.wait_exited() == 0
        assert not vm.alive
        await a.aclose()
        await b.aclose()


async def test_start_paused_and_leaving_the_block_kills() -> None:
    vm = SimulatedQemu(start_paused=True)
    async with vm:
        qmp = await client(vm)
        assert (await qmp.command("query-status"))["status"] == "prelaunch"
        assert [e["event"] for e in (await qmp.execute("stop"))[0]] == []
        assert [e["event"] for e in (await qmp.execute("cont"))[0]] == ["RESUME"]
        await qmp.aclose()
    assert vm.exit_status == -9
    with pytest.raises(Exception, match="already started"):
        async with vm:
            pass


async def test_memory_stream_pair_behaves_like_a_socket() -> None:
    a, b = memory_stream_pair()
    await a.send(b"hello")
    assert await b.receive(2) == b"he"
    assert await b.receive() == b"llo"
    await a.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    await b.send(b"half-closed: the other way still works")
    assert await a.receive() == b"half-closed: the other way still works"
    await b.aclose()
    with pytest.raises(anyio.EndOfStream):
        await a.receive()
    with pytest.raises(ValueError):
        await a.receive(0)
    await a.aclose()
    c, d = memory_stream_pair()
    await d.aclose()
    with pytest.raises(anyio.BrokenResourceError):
        await c.send(b"x")
    await c.aclose()


async def test_event_listeners_and_statistics() -> None:
    async with SimulatedQemu() as vm:
        seen: list[str] = []
        remove = vm.add_event_listener(lambda event: seen.append(event["event"]))
        qmp = await client(vm)
        await qmp.command("stop")
        remove()
        await qmp.command("cont")
        assert seen == ["STOP"]
        stats = vm.statistics()
        assert (stats.run_state, stats.monitors, stats.connections, stats.open_connections) == (
            "running",
            1,
            1,
            1,
        )
        assert (stats.commands, stats.events, stats.faults_injected) == (3, 2, 0)
        await qmp.aclose()
