"""The QMP client against a real QEMU (``-machine none``)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream

import jobctl
from jobctl.qmp import (
    CommandNotFoundError,
    DeviceNotActiveError,
    DeviceNotFoundError,
    GenericError,
    QMPClosedError,
    open_qmp_stream,
    open_qmp_unix,
)

from ._qemu import running_qemu

pytestmark = [pytest.mark.anyio, pytest.mark.qemu]


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Real time on both: a real process answers, so no virtual clock."""
    return request.param


async def test_greeting_and_query_status() -> None:
    async with running_qemu() as (path, _), open_qmp_unix(path, timeout=30) as qmp:
        assert qmp.greeting.version >= (7, 0, 0)
        assert "oob" in qmp.greeting.capabilities
        status = await qmp.execute("query-status", timeout=30)
        assert (status["status"], status["running"]) == ("running", True)
        assert isinstance(qmp, jobctl.Monitor)


async def test_error_classes() -> None:
    async with running_qemu() as (path, _), open_qmp_unix(path, timeout=30) as qmp:
        with pytest.raises(CommandNotFoundError) as not_found:
            await qmp.execute("no-such-command")
        assert not_found.value.error_class == "CommandNotFound"
        assert "no-such-command" in not_found.value.desc
        with pytest.raises(DeviceNotFoundError, match="nope"):
            await qmp.execute("device_del", {"id": "nope"})
        with pytest.raises(DeviceNotActiveError, match="nope"):
            await qmp.execute("block-job-cancel", {"device": "nope"})
        with pytest.raises(GenericError, match="unexpected"):
            await qmp.execute("query-status", {"bogus": 1})
        with pytest.raises(CommandNotFoundError, match="negotiation is already complete"):
            await qmp.execute("qmp_capabilities")
        assert (await qmp.execute("query-status"))["running"] is True


async def test_stop_and_cont_events_come_before_the_return() -> None:
    async with running_qemu() as (path, _), open_qmp_unix(path, timeout=30) as qmp:
        with qmp.subscribe({"STOP", "RESUME"}) as runstate:
            await qmp.execute("stop")
            assert runstate.receive_nowait().name == "STOP"  # already there
            assert (await qmp.execute("query-status"))["status"] == "paused"
            await qmp.execute("cont")
            assert runstate.receive_nowait().name == "RESUME"
        statistics = qmp.statistics()
        assert (statistics.events, statistics.events_dropped) == (2, 0)


async def test_pipelined_commands() -> None:
    async with running_qemu() as (path, _), open_qmp_unix(path, timeout=30) as qmp:
        results: list[Any] = []

        async def run() -> None:
            results.append(await qmp.execute("query-status", timeout=30))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(run)
        assert len(results) == 8
        assert all(result["running"] for result in results)
        assert qmp.statistics().replies == 9


class _Corrupting(ByteStream):
    """Replaces a request that mentions ``"corrupt"`` by one QEMU cannot take."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner

    async def send(self, item: bytes) -> None:
        await self.inner.send(b"[1]\n" if b'"corrupt"' in item else item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_error_without_id_fails_only_its_command() -> None:
    """QEMU answers input it cannot use with an error without id; the session survives."""
    async with running_qemu() as (path, _):
        stream = _Corrupting(await anyio.connect_unix(path))
        async with open_qmp_stream(stream, timeout=30) as qmp:
            with pytest.raises(GenericError, match="must be a JSON object") as info:
                await qmp.execute("query-status", {"corrupt": True}, timeout=30)
            assert info.value.command == "query-status"
            assert (await qmp.execute("query-status", timeout=30))["running"] is True
            assert qmp.statistics().stray_errors == 0
            assert not qmp.closed


async def test_quit_ends_the_session() -> None:
    async with running_qemu() as (path, process), open_qmp_unix(path, timeout=30) as qmp:
        with qmp.subscribe("SHUTDOWN") as shutdown:
            await qmp.execute("quit")
            event = await shutdown.receive()
            assert event.data["reason"] == "host-qmp-quit"
            with pytest.raises(QMPClosedError):
                await shutdown.receive()
        with pytest.raises(QMPClosedError):
            await qmp.execute("query-status")
        assert await process.wait() == 0
