"""The QMP client against the simulated QEMU, whose detector checks from the
server's side that an abandoned command holds back the next one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from jobctl.qmp import (
    GenericError,
    QMPClient,
    QMPClosedError,
    QMPProtocolError,
    QMPTimeoutError,
    open_qmp_stream,
)
from jobctl_simulators.qemu import ConcurrencyDetector, FaultPlan, SimulatedHost, SimulatedQemu

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def simulated(*faults: str) -> AsyncIterator[tuple[QMPClient, ConcurrencyDetector]]:
    """A client on a simulated VM with scripted ``faults``; the detector is
    strict, so a second command in flight crashes the VM and fails the test."""
    detector = ConcurrencyDetector(strict=True)
    host = SimulatedHost(detector=detector)
    async with SimulatedQemu("vm", host=host, faults=FaultPlan.parse(faults)) as vm:
        stream = await vm.add_monitor().connect_memory()
        async with open_qmp_stream(stream) as qmp:
            yield qmp, detector


async def test_commands_and_events() -> None:
    async with simulated() as (qmp, detector):
        assert (await qmp.execute("query-status"))["status"] == "running"
        with qmp.subscribe({"STOP", "RESUME"}) as runstate:
            await qmp.execute("stop")
            assert runstate.receive_nowait().name == "STOP"  # it came before the return
            await qmp.execute("cont")
            assert runstate.receive_nowait().name == "RESUME"
        assert detector.statistics().violations == 0


async def test_timed_out_command_holds_back_the_next() -> None:
    async with simulated("query-status#1=latency:0.5") as (qmp, detector):
        with pytest.raises(QMPTimeoutError, match="still in flight"):
            await qmp.execute("query-status", timeout=0.05)
        with anyio.fail_after(30):
            await qmp.execute("query-status")  # written only after the late reply
        statistics = detector.statistics()
        assert (statistics.violations, statistics.max_in_flight) == (0, 1)
        assert qmp.statistics().orphaned == 0


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("query-status=error:boom", GenericError, "boom"),
        ("query-status=garbage", QMPProtocolError, "bad JSON"),
        ("query-status=drop", QMPClosedError, "closed the connection"),
    ],
)
async def test_faults(fault: str, error: type[Exception], match: str) -> None:
    async with simulated(fault) as (qmp, _):
        with pytest.raises(error, match=match):
            await qmp.execute("query-status")
