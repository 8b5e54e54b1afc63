"""QMP protocol behaviour of a simulated VM over a memory connection."""

from __future__ import annotations

import anyio
import pytest

from jobctl_simulators.qemu import COMMANDS, SimulatedHost, SimulatedQemu

from .conftest import trio_virtual_time
from .helpers import client, names
from .rawqmp import RawQmp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

NEGOTIATE_FIRST = {
    "error": {
        "class": "CommandNotFound",
        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
    }
}


async def test_greeting() -> None:
    async with SimulatedQemu(package="pkg") as vm:
        qmp = await client(vm, negotiate=False)
        assert await qmp.greeting() == {
            "QMP": {
                "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "pkg"},
                "capabilities": ["oob"],
            }
        }
        await qmp.aclose()


async def test_every_command_fails_before_negotiation() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm, negotiate=False)
        await qmp.greeting()
        for command in ("query-status", "quit", "no-such-command"):
            assert (await qmp.execute(command))[1] == NEGOTIATE_FIRST
        assert vm.run_state == "running"  # quit was refused
        # malformed requests are answered as such, even now
        await qmp.send({"foo": 1})
        assert (await qmp.receive())["error"]["desc"] == "QMP input member 'foo' is unexpected"
        await qmp.send({"exec-oob": "query-status"})
        assert (await qmp.receive())["error"]["desc"] == "QMP input member 'exec-oob' is unexpected"
        # argument errors of qmp_capabilities itself are GenericError
        _, reply = await qmp.execute("qmp_capabilities", {"enable": ["foo"]})
        assert reply["error"]["desc"] == "Parameter 'null' does not accept value 'foo'"
        assert (await qmp.execute("qmp_capabilities", id={"a": [1]}))[1] == {
            "return": {},
            "id": {"a": [1]},
        }
        assert (await qmp.execute("qmp_capabilities"))[1] == {
            "error": {
                "class": "CommandNotFound",
                "desc": "Capabilities negotiation is already complete, command ignored",
            }
        }
        await qmp.aclose()


async def test_errors_and_id_echo() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm)
        assert (await qmp.execute("foo", id=5))[1] == {
            "id": 5,
            "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"},
        }
        assert (await qmp.execute("migrate-cancel"))[1]["error"]["class"] == "CommandNotFound"
        assert (await qmp.execute("query-status", id="x"))[1] == {
            "return": {"status": "running", "singlestep": False, "running": True},
            "id": "x",
        }
        cases = [
            (
                b'{"execute": "query-status", "arguments": 5}',
                "QMP input member 'arguments' must be an object",
            ),
            (b'{"execute": 5}', "QMP input member 'execute' must be a string"),
            (b'{"id": 1}', "QMP input lacks member 'execute'"),
            (b"[1]", "QMP input must be a JSON object"),
            (b'{"execute": "x", "execute": "y"}', "JSON parse error, duplicate key"),
            (b"garbage\n", "JSON parse error, invalid keyword 'garbage'"),
        ]
        for data, desc in cases:
            await qmp.send(data)
            assert (await qmp.receive())["error"] == {"class": "GenericError", "desc": desc}
        # a parse error is answered without the id the client meant to send
        await qmp.send(b'{"execute": "query-status", "id": 7]')
        assert "id" not in await qmp.receive()
        await qmp.send({"execute": "query-status", "foo": 1, "id": 3})
        assert (await qmp.receive())["id"] == 3
        await qmp.aclose()


async def test_oob_negotiation_and_exec_oob() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm, negotiate=False)
        await qmp.greeting()
        assert await qmp.command("qmp_capabilities", {"enable": ["oob", "oob"]}) == {}
        await qmp.send({"exec-oob": "query-status", "id": 1})
        assert (await qmp.receive()) == {
            "id": 1,
            "error": {
                "class": "GenericError",
                "desc": "The command query-status does not support OOB",
            },
        }
        await qmp.send({"exec-oob": "query-status", "execute": "x", "id": 2})
        reply = await qmp.receive()
        assert reply["error"]["desc"] == "QMP input member 'execute' clashes with 'exec-oob'"
        await qmp.aclose()


async def test_pipelined_commands_are_answered_in_order() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm)
        await qmp.send(
            b'{"execute": "stop", "id": 1}{"execute": "cont", "id": 2}\n{"execute": "x", "id": 3}'
        )
        messages = [await qmp.receive() for _ in range(5)]
        assert [m.get("event", m.get("id")) for m in messages] == ["STOP", 1, "RESUME", 2, 3]
        assert vm.detector.violation_count == 2
        await qmp.aclose()


async def test_query_commands_and_version() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm)
        assert await qmp.command("query-commands") == [{"name": name} for name in COMMANDS]
        assert await qmp.command("query-version") == {
            "qemu": {"micro": 0, "minor": 2, "major": 7},
            "package": "simulated",
        }
        await qmp.aclose()


@pytest.mark.parametrize("anyio_backend", [trio_virtual_time()])
async def test_events_carry_the_hosts_clock() -> None:
    host = SimulatedHost(epoch=1_700_000_000.25)
    async with SimulatedQemu(host=host) as vm:
        qmp = await client(vm)
        events, _ = await qmp.execute("stop")
        assert events == [
            {"timestamp": {"seconds": 1_700_000_000, "microseconds": 250000}, "event": "STOP"}
        ]
        await qmp.aclose()


async def test_events_only_after_negotiation() -> None:
    async with SimulatedQemu() as vm:
        negotiated = await client(vm)
        waiting = RawQmp(await vm.add_monitor().connect_memory())
        await waiting.greeting()
        await negotiated.command("stop")
        await waiting.command("qmp_capabilities")  # the reply is the first message: no STOP
        await negotiated.command("cont")
        assert (await waiting.receive())["event"] == "RESUME"
        await negotiated.aclose()
        await waiting.aclose()


@pytest.mark.parametrize("anyio_backend", [trio_virtual_time()])
async def test_client_eof_drops_queued_commands() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm)
        vm.stall(1.0)
        await qmp.send({"execute": "stop"})
        await anyio.wait_all_tasks_blocked()  # stop waits for the main loop
        await qmp.send({"execute": "cont", "id": "dropped"})
        await qmp.stream.send_eof()
        events, reply = await qmp.until_reply()  # stop was running: it completes
        assert (names(events), reply) == (["STOP"], {"return": {}})
        assert await qmp.at_eof()  # and cont, queued behind it, was dropped
        await qmp.aclose()
        # the command that was running finished; the one queued behind it was dropped
        other = await client(vm)
        assert (await other.command("query-status"))["status"] == "paused"
        await other.aclose()
