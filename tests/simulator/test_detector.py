"""The concurrency detector."""

from __future__ import annotations

import anyio
import pytest

from jobctl_simulators.qemu import (
    CRASH_STATUS,
    ConcurrencyDetector,
    ConcurrencyViolationError,
    SimulatedHost,
    SimulatedQemu,
)

from .helpers import client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_one_command_at_a_time_is_clean() -> None:
    host = SimulatedHost(detector=ConcurrencyDetector(strict=True))
    async with SimulatedQemu(host=host) as vm:
        qmp = await client(vm)
        for _ in range(3):
            await qmp.command("query-status")
        await qmp.aclose()
    stats = host.detector.statistics()
    assert (stats.connections, stats.commands, stats.answered, stats.violations) == (1, 4, 4, 0)
    assert stats.max_in_flight == 1
    records = host.detector.records()
    assert [r.command for r in records] == [
        "qmp_capabilities",
        "query-status",
        "query-status",
        "query-status",
    ]
    assert all(r.answered_at is not None and r.answered_at >= r.arrived_at for r in records)
    assert all(r.overlapped is None for r in records)


async def test_pipelined_commands_are_counted() -> None:
    host = SimulatedHost()
    async with SimulatedQemu("vm1", host=host) as vm:
        qmp = await client(vm)
        await qmp.send(b'{"execute": "query-status"}{"execute": "stop"}{"execute": "bad-json"')
        await qmp.send(b"}")
        for _ in range(4):  # 3 replies and the STOP event
            await qmp.receive()
        await qmp.aclose()
    assert host.detector.violation_count == 2
    violations = host.detector.violations()
    assert [(v.connection, v.command, v.pending) for v in violations] == [
        ("vm1/qmp0#1", "stop", "query-status"),
        ("vm1/qmp0#1", "bad-json", "query-status"),
    ]
    assert host.detector.statistics().max_in_flight == 3


async def test_separate_connections_do_not_interfere() -> None:
    host = SimulatedHost()
    async with SimulatedQemu(host=host) as vm:
        a, b = await client(vm), await client(vm)
        vm.stall(0.05)
        await a.send({"execute": "query-status"})
        await b.send({"execute": "query-status"})
        await a.receive()
        await b.receive()
        await a.aclose()
        await b.aclose()
    assert host.detector.violation_count == 0


async def test_strict_mode_crashes_the_vm_and_fails_the_block() -> None:
    host = SimulatedHost(detector=ConcurrencyDetector(strict=True))
    vm = SimulatedQemu("strict", host=host)
    with pytest.raises(ConcurrencyViolationError) as info:
        async with vm:
            qmp = await client(vm)
            await qmp.send(b'{"execute": "query-status"}{"execute": "cont"}')
            await anyio.sleep_forever()  # cancelled by the crash
    assert (info.value.command, info.value.pending) == ("cont", "query-status")
    assert "strict/qmp0#1" in str(info.value)
    assert vm.exit_status == CRASH_STATUS
    assert vm.failure is info.value
    await qmp.aclose()


async def test_records_are_bounded() -> None:
    detector = ConcurrencyDetector(max_records=2)
    async with SimulatedQemu(host=SimulatedHost(detector=detector)) as vm:
        qmp = await client(vm)
        for _ in range(5):
            await qmp.command("query-status")
        await qmp.aclose()
    assert len(detector.records()) == 2
    assert detector.statistics().commands == 6
    with pytest.raises(ValueError, match="max_records"):
        ConcurrencyDetector(max_records=-1)
