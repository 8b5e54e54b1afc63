"""Fault injection: scripted, seeded and drawn by Hypothesis."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from jobctl_simulators.qemu import (
    Die,
    Drop,
    ErrorReply,
    Fault,
    FaultPlan,
    FaultRule,
    Garbage,
    Latency,
    SimulatedHost,
    SimulatedQemu,
    Stall,
)
from jobctl_simulators.qemu.strategies import fault_plans

from .conftest import trio_virtual_time
from .helpers import client
from .rawqmp import RawQmp

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> Any:
    return trio_virtual_time()


@pytest.mark.anyio
async def test_latency_delays_the_reply_not_the_events() -> None:
    async with SimulatedQemu(faults=FaultPlan([FaultRule(Latency(2.0), "stop")])) as vm:
        qmp = await client(vm)
        start = anyio.current_time()
        await qmp.send({"execute": "stop"})
        assert (await qmp.receive())["event"] == "STOP"
        assert anyio.current_time() == start
        assert await qmp.receive() == {"return": {}}
        assert anyio.current_time() - start == pytest.approx(2.0)
        assert list(vm.faults.injected) == [("stop", Latency(2.0))]
        assert vm.faults.injected_total == 1
        await qmp.aclose()


@pytest.mark.anyio
async def test_stall_freezes_every_monitor() -> None:
    async with SimulatedQemu(faults=FaultPlan([FaultRule(Stall(3.0), "stop")])) as vm:
        a, b = await client(vm), await client(vm)
        start = anyio.current_time()
        await a.send({"execute": "stop"})
        await anyio.wait_all_tasks_blocked()
        await b.command("query-status")
        assert anyio.current_time() - start == pytest.approx(3.0)
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(("execute", "state"), [(True, "paused"), (False, "running")])
async def test_drop_closes_the_connection_instead_of_answering(execute: bool, state: str) -> None:
    host = SimulatedHost()
    async with SimulatedQemu(host=host, faults=FaultPlan([FaultRule(Drop(execute), "stop")])) as vm:
        qmp = await client(vm)
        await qmp.send({"execute": "stop"})
        if execute:  # what the command caused was sent before the connection broke
            assert (await qmp.receive())["event"] == "STOP"
        assert await qmp.at_eof()  # but never the reply
        assert vm.run_state == state
        [record] = [r for r in host.detector.records() if r.command == "stop"]
        assert record.answered_at is None
        other = await client(vm, "qmp0")  # the monitor is free again
        assert (await other.command("query-status"))["status"] == state
        await qmp.aclose()
        await other.aclose()


@pytest.mark.anyio
async def test_garbage_instead_of_the_reply() -> None:
    async with SimulatedQemu(
        faults=FaultPlan([FaultRule(Garbage(b"}{ not json\n"), "cont")])
    ) as vm:
        qmp = await client(vm)
        await qmp.send({"execute": "cont"})
        assert await qmp.receive_line() == b"}{ not json"  # (the newline is the delimiter)
        assert (await qmp.command("query-status"))["running"] is True  # the connection lives on
        await qmp.aclose()


@pytest.mark.anyio
async def test_error_reply_instead_of_running() -> None:
    plan = FaultPlan([FaultRule(ErrorReply("boom", "DeviceNotActive"), "stop", nth=2)])
    async with SimulatedQemu(faults=plan) as vm:
        qmp = await client(vm)
        await qmp.command("stop")
        await qmp.command("cont")
        _, reply = await qmp.execute("stop", id=1)
        assert reply == {"id": 1, "error": {"class": "DeviceNotActive", "desc": "boom"}}
        assert vm.run_state == "running"
        await qmp.command("stop")  # only the 2nd time
        await qmp.aclose()


@pytest.mark.anyio
async def test_die_closes_every_connection() -> None:
    async with SimulatedQemu(faults=FaultPlan([FaultRule(Die(-15), "query-status")])) as vm:
        a, b = await client(vm), await client(vm)
        await a.send({"execute": "query-status"})
        assert await a.at_eof()
        assert await b.at_eof()
        assert await vm.wait_exited() == -15
        with pytest.raises(ConnectionRefusedError):
            await vm.add_monitor().connect_memory()
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_rules_added_while_running() -> None:
    async with SimulatedQemu() as vm:
        qmp = await client(vm)
        vm.faults.add(FaultRule(ErrorReply(), None, nth=2))
        await qmp.command("query-status")
        assert "error" in (await qmp.execute("query-status"))[1]
        await qmp.command("query-status")
        await qmp.aclose()


def test_random_plans_are_reproducible() -> None:
    def draw(seed: int) -> list[Fault | None]:
        injector = FaultPlan.random(seed, probability=0.3).injector()
        return [injector.decide(name) for name in ["query-status", "stop", "cont"] * 20]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert sum(fault is not None for fault in draw(7)) in range(5, 30)
    never = FaultPlan.random(1, probability=1.0).injector()
    assert never.decide("qmp_capabilities") is None  # negotiation is spared by default


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("query-migrate#3=drop", FaultRule(Drop(), "query-migrate", 3)),
        ("*=latency:0.2", FaultRule(Latency(0.2))),
        ("stop=drop:before", FaultRule(Drop(execute=False), "stop")),
        ("migrate=error:boom", FaultRule(ErrorReply("boom"), "migrate")),
        ("quit=die:-6", FaultRule(Die(-6), "quit")),
        ("cont=garbage", FaultRule(Garbage(), "cont")),
        ("*=stall:0.35", FaultRule(Stall(0.35))),
    ],
)
def test_rule_specs(spec: str, rule: FaultRule) -> None:
    assert FaultRule.parse(spec) == rule


@pytest.mark.parametrize(
    "spec",
    [
        "stop",
        "=drop",
        "stop#x=drop",
        "stop#0=drop",
        "stop=explode",
        "stop=latency:-1",
        "stop=latency:x",
    ],
)
def test_bad_rule_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"fault spec|FaultRule"):
        FaultRule.parse(spec)


def test_invalid_values() -> None:
    with pytest.raises(ValueError, match="seconds"):
        Latency(float("nan"))
    with pytest.raises(ValueError, match="probability"):
        FaultPlan(probability=2)
    with pytest.raises(ValueError, match="empty"):
        Garbage(b"")


SCRIPT = [
    "query-status",
    "stop",
    "cont",
    "query-migrate",
    "query-status",
    "stop",
    "cont",
    "query-status",
]


@given(plan=fault_plans(sorted(set(SCRIPT)), max_seconds=2.0))
def test_every_fault_has_its_documented_effect(plan: FaultPlan) -> None:
    """Whatever faults a plan injects, each command's outcome is the one its
    fault documents, and nothing hangs."""

    async def scenario() -> None:
        async with SimulatedQemu(faults=plan) as vm:
            qmp = await client(vm)
            for command in SCRIPT:
                injected = len(vm.faults.injected)
                start = anyio.current_time()
                await qmp.send({"execute": command})
                outcome = await observe(qmp)
                fault = (
                    vm.faults.injected[injected][1] if len(vm.faults.injected) > injected else None
                )
                elapsed = anyio.current_time() - start
                if isinstance(fault, Die):
                    assert outcome == "eof"
                    assert await vm.wait_exited() == -9
                    break
                if isinstance(fault, Drop):
                    assert outcome == "eof"
                    await qmp.aclose()
                    qmp = await client(vm, "qmp0")
                elif isinstance(fault, Garbage):
                    assert outcome == "garbage"
                elif isinstance(fault, ErrorReply):
                    assert outcome == "error"
                else:
                    assert outcome == "return"
                    if isinstance(fault, Latency | Stall):
                        assert elapsed >= fault.seconds - 1e-9
                    else:
                        assert elapsed == 0
            await qmp.aclose()

    trio.run(scenario, clock=MockClock(autojump_threshold=0))


async def observe(qmp: RawQmp) -> str:
    with anyio.fail_after(60):
        while True:
            try:
                line = await qmp.receive_line()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return "eof"
            if line + b"\n" == Garbage().data:
                return "garbage"
            message = json.loads(line)
            if "return" in message:
                return "return"
            if "error" in message:
                return "error"


@given(seed=st.integers(0, 2**32), probability=st.floats(0, 1))
def test_random_plans_never_hang(seed: int, probability: float) -> None:
    async def scenario() -> None:
        async with SimulatedQemu(faults=FaultPlan.random(seed, probability)) as vm:
            qmp = await client(vm)
            for command in SCRIPT:
                if vm.exit_status is not None:
                    break
                await qmp.send({"execute": command})
                if await observe(qmp) == "eof":
                    await qmp.aclose()
                    if vm.exit_status is not None or not vm.alive:
                        break
                    qmp = await client(vm, "qmp0")
            await qmp.aclose()

    trio.run(scenario, clock=MockClock(autojump_threshold=0))


@pytest.mark.anyio
async def test_command_latency_delays_every_reply_and_adds_to_a_latency_fault() -> None:
    plan = FaultPlan([FaultRule(Latency(2.0), "stop")])
    async with SimulatedQemu(faults=plan, command_latency=0.5) as vm:
        qmp = await client(vm)  # negotiation: 0.5 s
        start = anyio.current_time()
        await qmp.command("query-status")
        assert anyio.current_time() - start == pytest.approx(0.5)
        start = anyio.current_time()
        await qmp.command("stop")
        assert anyio.current_time() - start == pytest.approx(2.5)
        assert vm.faults.injected_total == 1  # plain latency is no fault
        await qmp.aclose()
    with pytest.raises(ValueError, match="command_latency"):
        SimulatedQemu(command_latency=-1.0)


def test_the_fault_history_is_bounded() -> None:
    injector = FaultPlan([FaultRule(Latency(0.1))]).injector(history=3)
    for n in range(10):
        assert injector.decide(f"c{n}") == Latency(0.1)
    assert [command for command, _ in injector.injected] == ["c7", "c8", "c9"]
    assert injector.injected_total == 10
    with pytest.raises(ValueError, match="history"):
        FaultPlan().injector(history=-1)
