"""jobctl.testing on trio and on asyncio, both in virtual time.

* The virtual asyncio loop (:class:`jobctl.testing.VirtualEventLoop`): its
  clock jumps to the next timer, real I/O still gets through, timeouts fire
  at their virtual time, as on trio's autojumping ``MockClock``.
* The suite's whole-scenario properties (``_suite.py``) on asyncio, with the
  scripted monitor and over the simulated QEMU; every drawn example replays
  the same trace twice in a row.
* The user example (``test_user_example.py``, the one in the README), copied
  as is into a project of its own, catches a flow that talks to the monitor
  behind the core's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl import AsyncJob, Domain, Job, TraceKind
from jobctl.qmp import QMPError
from jobctl.testing import (
    BACKENDS,
    AsyncJobPlan,
    Backend,
    Commands,
    DomainPlan,
    ErrorReply,
    FaultRule,
    RegularJobPlan,
    Scenario,
    ScriptedMonitor,
    ScriptedReplyError,
    SimulatedVM,
    VirtualEventLoop,
    Window,
    drawn_monitor_faults,
    fault_plan,
    open_simulated_vm,
    run_scenario,
    run_virtual,
    virtual_backend,
)
from jobctl.testing.pytest_plugin import simulated_faults
from jobctl_simulators.qemu import FaultPlan, Latency, Stall

from ._suite import PROPERTIES, normalized

REPO = Path(__file__).resolve().parents[2]

__all__ = ["simulated_faults"]  # the plugin's fixture, for the tests below

# -- the virtual asyncio loop --------------------------------------------------


def on_virtual_asyncio(fn: Callable[[], Awaitable[Any]]) -> Any:
    """``fn()`` on a :class:`VirtualEventLoop` through anyio, as
    ``run_virtual(backend="asyncio")`` does."""
    return anyio.run(fn, backend="asyncio", backend_options={"loop_factory": VirtualEventLoop})


def test_the_clock_starts_at_zero_and_jumps_to_each_timer() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await anyio.sleep(seconds)
        woke.append((name, anyio.current_time()))

    async def main() -> float:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, "three", 3.0)
            tg.start_soon(sleeper, "one", 1.0)
            tg.start_soon(sleeper, "two", 2.0)
        return start

    assert on_virtual_asyncio(main) == 0.0
    assert woke == [("one", 1.0), ("two", 2.0), ("three", 3.0)]


def test_a_sleep_of_1000_virtual_seconds_takes_no_real_time() -> None:
    async def main() -> float:
        await anyio.sleep(1000)
        return anyio.current_time()

    real = time.monotonic()
    assert on_virtual_asyncio(main) == 1000.0
    assert time.monotonic() - real < 60  # a bound against hangs: real time would take 1000 s


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_socketpair_io_is_delivered_before_the_clock_jumps(backend: Backend) -> None:
    """A reader waits on a real socket, a timer is pending, the bytes are
    sent: they are read at once, before the clock jumps to the timer (the
    loop polls its real selector first)."""
    got: list[tuple[bytes, float]] = []

    async def main() -> None:
        left, right = socket.socketpair()
        async with (
            await anyio.abc.UNIXSocketStream.from_socket(left) as a,
            await anyio.abc.UNIXSocketStream.from_socket(right) as b,
            anyio.create_task_group() as tg,
        ):
            waiting = [anyio.Event(), anyio.Event()]

            async def reader() -> None:
                for event in waiting:
                    event.set()  # and, without yielding, wait in the selector
                    got.append((await b.receive(), anyio.current_time()))

            tg.start_soon(anyio.sleep, 10.0)  # the timer the clock could jump to
            tg.start_soon(reader)
            for event, chunk in zip(waiting, (b"ping", b"pong"), strict=True):
                await event.wait()
                await a.send(chunk)

    run_virtual(main, backend=backend)
    assert got == [(b"ping", 0.0), (b"pong", 0.0)]


def test_with_no_timer_the_loop_waits_on_the_real_selector() -> None:
    """Nothing ready, no timer: the loop blocks until real I/O (here the
    worker thread's wake-up) arrives, and the clock does not move."""

    async def main() -> tuple[int, float]:
        return await anyio.to_thread.run_sync(lambda: 42), anyio.current_time()

    assert on_virtual_asyncio(main) == (42, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_clock_jumps_while_a_thread_works_as_on_trio(backend: Backend) -> None:
    """Only the loop's tasks count: a timeout around a thread's work fires
    at its virtual time, as under trio's autojumping clock."""
    release = threading.Event()

    async def main() -> float:
        try:
            with anyio.fail_after(5.0):
                await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)
        except TimeoutError:
            return anyio.current_time()
        finally:
            release.set()
        raise AssertionError("the thread was released before the timeout")

    assert run_virtual(main, backend=backend) == 5.0


async def timeouts() -> list[tuple[str, float]]:
    """When each kind of timeout fires, in virtual time."""
    seen: list[tuple[str, float]] = []
    with anyio.move_on_after(2.5) as scope:
        await anyio.sleep(10.0)
    seen.append((f"move_on_after cancelled={scope.cancelled_caught}", anyio.current_time()))
    with anyio.CancelScope(deadline=7.0) as scope:
        await anyio.sleep_forever()
    seen.append((f"deadline cancelled={scope.cancelled_caught}", anyio.current_time()))
    try:
        with anyio.fail_after(3.0):
            await anyio.Event().wait()
    except TimeoutError:
        seen.append(("fail_after raised TimeoutError", anyio.current_time()))
    with anyio.fail_after(3.0):  # does not fire: the work ends first
        await anyio.sleep(2.0)
    seen.append(("fail_after let the work finish", anyio.current_time()))
    with anyio.move_on_after(1.0) as outer:
        with anyio.move_on_after(5.0) as inner:
            await anyio.sleep(10.0)
    seen.append((f"nested outer={outer.cancelled_caught} inner={inner.cancelled_caught}", 0.0))
    seen.append(("after the nested scopes", anyio.current_time()))
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancellations_and_timeouts_fire_at_their_virtual_time(backend: Backend) -> None:
    assert run_virtual(timeouts, backend=backend) == [
        ("move_on_after cancelled=True", 2.5),
        ("deadline cancelled=True", 7.0),
        ("fail_after raised TimeoutError", 10.0),
        ("fail_after let the work finish", 12.0),
        ("nested outer=True inner=False", 0.0),
        ("after the nested scopes", 13.0),
    ]


def test_asyncio_timeouts_of_its_own_fire_at_their_virtual_time() -> None:
    async def main() -> tuple[float, float]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 4.0)
        loop = asyncio.get_running_loop()
        first = loop.time()
        fired = loop.create_future()
        loop.call_at(first + 0.25, fired.set_result, None)
        await fired
        return first, loop.time()

    assert on_virtual_asyncio(main) == (4.0, 4.25)


def test_the_virtual_loop_selects_on_a_real_selector() -> None:
    loop = VirtualEventLoop()
    try:
        assert loop.time() == 0.0
        left, right = socket.socketpair()
        with left, right:
            key = loop._selector.register(right, selectors.EVENT_READ)  # type: ignore[attr-defined]
            assert loop._selector.get_key(right) == key  # type: ignore[attr-defined]
            left.send(b"x")
            assert loop._selector.select(30.0) == [(key, selectors.EVENT_READ)]  # type: ignore[attr-defined]
            assert loop.time() == 0.0  # ready I/O: no jump
            right.recv(1)
            assert loop._selector.select(30.0) == []  # type: ignore[attr-defined]
            assert loop.time() == 30.0  # nothing ready: jumped by the timeout
            loop._selector.unregister(right)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_an_unknown_backend_is_refused_by_name() -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(
        ValueError, match=r"backend must be one of \('trio', 'asyncio'\), not 'curio'"
    ):
        run_virtual(nothing, backend="curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not 'curio'"):
        run_scenario(Scenario((DomainPlan("vm"),)), backend="curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not 'asyncio '"):
        virtual_backend("asyncio ")  # type: ignore[arg-type]


# -- the suite's properties on asyncio ---------------------------------------------


#: Each property of the suite with the scripted monitor, and the one that
#: ``test_simulated.py`` runs on trio over the simulated QEMU.
ON_ASYNCIO = [(name, False) for name in sorted(PROPERTIES)] + [("scenarios", True)]


@pytest.mark.parametrize(
    ("name", "simulated"),
    ON_ASYNCIO,
    ids=[f"{name}-{'simulated' if sim else 'scripted'}" for name, sim in ON_ASYNCIO],
)
@given(data=st.data())
def test_the_suite_holds_on_asyncio_and_replays(name: str, simulated: bool, data: Any) -> None:
    """Each whole-scenario property of the suite, on asyncio: the drawn
    scenario keeps the invariants, and running it again gives the same trace."""
    scenario, schedule = data.draw(PROPERTIES[name], label="example")
    first = run_scenario(scenario, schedule, simulated=simulated, backend="asyncio")
    again = run_scenario(scenario, schedule, simulated=simulated, backend="asyncio", check=False)
    assert first.backend == "asyncio"
    assert normalized(first.events) == normalized(again.events)
    assert first.outcomes == again.outcomes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_destroy_pre_empts_an_async_job_that_has_not_resumed_yet(backend: Backend) -> None:
    """asyncio wakes the async job (it begins when the exclusive job ends)
    and runs the DESTROY before the job's task resumes: the request must
    still cut the job off. trio's schedule takes another path; the outcome
    is the same."""
    plan = DomainPlan(
        "vm",
        jobs=(
            RegularJobPlan("m", Job.MODIFY, hold=0.5),
            RegularJobPlan("kill", Job.DESTROY, start=0.5),
        ),
        async_jobs=(AsyncJobPlan("a", AsyncJob.SAVE, steps=(Commands(1), Window(1.0))),),
        latency=(0.5,),
    )
    result = run_scenario(Scenario((plan,)), backend=backend)
    got = {o.owner: o.result for o in result.outcomes}
    assert got == {"m": "ok", "kill": "ok", "a": "destroyed"}
    of_a = [e.kind for e in result.events if e.owner == "a"]
    assert TraceKind.DESTROY_REQUEST in of_a
    after = of_a[of_a.index(TraceKind.DESTROY_REQUEST) :]
    assert TraceKind.COMMAND_SENT not in after, after
    if backend == "asyncio":  # the schedule that reaches the race
        assert of_a[: of_a.index(TraceKind.DESTROY_REQUEST)] == [
            TraceKind.JOB_WAIT,
            TraceKind.ASYNC_BEGIN,
        ]


# -- simulated VMs: the drawn load's monitor, the fixture's drawn latencies -------


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return virtual_backend(request.param)


async def command_times(dom: Domain, count: int) -> list[float | str]:
    """How long each of ``count`` commands took, or the error it raised."""
    times: list[float | str] = []
    async with dom.job(Job.QUERY, owner="timer") as job, job.monitor() as mon:
        for _ in range(count):
            start = anyio.current_time()
            try:
                await mon.execute("query-status")
            except QMPError as exc:
                times.append(type(exc).__name__)
            else:
                times.append(round(anyio.current_time() - start, 9))
    return times


@pytest.mark.anyio
async def test_load_gives_the_vm_the_loads_monitor_and_queue_limits() -> None:
    load = DomainPlan(
        "vm",
        latency=(0.5, 1.0),
        faults=(FaultRule(ErrorReply(), nth=3),),
        wait_timeout=5.0,
        max_queued=2,
    )
    async with open_simulated_vm("vm", load=load) as vm:
        assert (vm.domain.wait_timeout, vm.domain.max_queued) == (5.0, 2)
        assert await command_times(vm.domain, 4) == [0.5, 1.0, "GenericError", 1.0]
    async with open_simulated_vm("vm") as vm:  # no load: answers at once, the defaults
        assert (vm.domain.wait_timeout, vm.domain.max_queued) == (30.0, 0)
        assert await command_times(vm.domain, 2) == [0.0, 0.0]


async def replies(dom: Domain, commands: list[str]) -> list[float | str]:
    """How long each command took, or the kind of error it raised."""
    times: list[float | str] = []
    async with dom.job(Job.QUERY, owner="timer") as job, job.monitor() as mon:
        for command in commands:
            start = anyio.current_time()
            try:
                await mon.execute(command)
            except (QMPError, ScriptedReplyError):
                times.append("error")
            else:
                times.append(round(anyio.current_time() - start, 9))
    return times


@pytest.mark.anyio
async def test_a_plans_faults_hit_the_same_commands_on_both_monitors() -> None:
    load = DomainPlan(
        "vm",
        faults=(
            FaultRule(ErrorReply(), command="query-status", nth=2),
            FaultRule(Stall(1.0), nth=2),
        ),
    )
    commands = ["query-status", "query-version", "query-version", "query-status", "query-status"]
    expected = [0.0, 1.0, 0.0, "error", 0.0]
    async with open_simulated_vm("vm", load=load) as vm:
        assert await replies(vm.domain, commands) == expected
    monitor = ScriptedMonitor(latency=load.latency, faults=load.faults)
    assert await replies(Domain("vm", monitor=monitor), commands) == expected


def test_a_rule_of_every_command_spares_the_simulators_handshake() -> None:
    plan = fault_plan(faults=[FaultRule(Stall(1.0))])
    assert [rule.nth for rule in plan.rules] == list(range(2, 258))


@pytest.mark.anyio
async def test_load_and_what_it_sets_are_not_given_together() -> None:
    with pytest.raises(TypeError, match=r"open_simulated_vm\('vm'\).*also give faults, max_queued"):
        async with open_simulated_vm("vm", load=DomainPlan("vm"), faults=FaultPlan(), max_queued=1):
            pass


def expected_times(plan: FaultPlan, count: int) -> list[float]:
    """What the first ``count`` commands after the handshake take under ``plan``."""
    by_nth = {rule.nth: rule.fault for rule in plan.rules}
    return [getattr(by_nth.get(n + 2), "seconds", 0.0) for n in range(count)]


@pytest.mark.anyio
async def test_the_fixture_vm_answers_after_latencies_drawn_per_test(
    simulated_vm: SimulatedVM, simulated_faults: FaultPlan, request: pytest.FixtureRequest
) -> None:
    times = await command_times(simulated_vm.domain, 12)
    assert times == expected_times(simulated_faults, 12)
    assert len(set(times)) > 2  # drawn, not one latency for all
    seed = zlib.crc32(request.node.nodeid.encode())
    assert simulated_faults == drawn_monitor_faults(seed)  # the same every run
    assert drawn_monitor_faults(seed + 1) != simulated_faults
    assert not {type(rule.fault) for rule in simulated_faults.rules} - {Latency, Stall}


class TestAFaultPlanOfYourOwn:
    @pytest.fixture
    def simulated_faults(self) -> FaultPlan:
        return FaultPlan([FaultRule(Latency(2.0))])

    @pytest.mark.anyio
    async def test_overrides_the_drawn_one(self, simulated_vm: SimulatedVM) -> None:
        assert await command_times(simulated_vm.domain, 3) == [2.0, 2.0, 2.0]


# -- the user example, copied as is ---------------------------------------------

#: A flow as it must not be written: it polls the migration with the
#: domain's QMP client directly, behind the core's back, from inside its
#: interruptible section, where queries may be using the monitor.
BEHIND_THE_CORES_BACK = """

async def migrate(dom: Domain, uri: str, *, poll: float = 0.1) -> str:  # noqa: F811
    async with dom.async_job(
        AsyncJob.MIGRATION_OUT, allowed={Job.QUERY, Job.ABORT}, owner="migrate"
    ) as ajob:
        ajob.set_abort_hook(lambda mon: mon.execute("migrate_cancel"))
        await ajob.set_phase("perform")
        async with ajob.monitor() as mon:
            await mon.execute("migrate", {"uri": uri})
        while True:
            async with ajob.interruptible():
                await anyio.sleep(poll)
                assert dom.monitor is not None
                info = await dom.monitor.execute("query-migrate")
            if info["status"] == "completed":
                return "completed"
            if info["status"] in ("failed", "cancelled"):
                raise MigrationFailed(info["status"])
"""


#: The copy's conftest: the plugin, as the docs say, and a profile that
#: draws the same examples every run and stops at the first failing one
#: instead of shrinking it (shrinking time is not what this test is about).
CONFTEST = """\
from hypothesis import Phase, settings

pytest_plugins = ["jobctl.testing.pytest_plugin"]
settings.register_profile(
    "found", phases=[Phase.explicit, Phase.generate], database=None, derandomize=True
)
settings.load_profile("found")
"""


def run_copied_example(tmp_path: Path, flow: str) -> dict[str, str]:
    """Copy test_user_example.py into a project of its own (the conftest
    the docs ask for), with ``flow`` appended, run pytest on it, and return
    each test's outcome: "passed", or its failure or error message."""
    example = (Path(__file__).parent / "test_user_example.py").read_text()
    (tmp_path / "test_copied.py").write_text(example + flow)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYPOTHESIS_PROFILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml=out.xml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not (tmp_path / "out.xml").exists():
        raise AssertionError(f"pytest did not run:\n{proc.stdout}\n{proc.stderr}")
    outcomes: dict[str, str] = {}
    for case in ET.parse(tmp_path / "out.xml").iter("testcase"):
        problems = [
            f"{p.tag}: {p.get('message', '')}" for p in case if p.tag in ("failure", "error")
        ]
        outcomes[case.get("name", "?")] = " / ".join(problems) or "passed"
    return outcomes


def test_the_copied_example_catches_a_flow_behind_the_cores_back(tmp_path: Path) -> None:
    """With the monitor's latency drawn by default (the fixture) and passed
    on from the drawn load (``load=``), both tests of the example catch a
    flow that bypasses ``job.monitor()``, on both backends, from the
    simulated QEMU's side: it saw two commands in flight."""
    outcomes = run_copied_example(tmp_path, BEHIND_THE_CORES_BACK)
    assert sorted(outcomes) == sorted(
        f"test_migration_{test}[{backend}]"
        for test in ("with_a_stats_poller", "under_any_load")
        for backend in BACKENDS
    )
    for name, outcome in outcomes.items():
        if "stats_poller" in name:
            assert "saw commands sent while another was unanswered" in outcome, (name, outcome)
        else:
            assert "violation_count" in outcome, (name, outcome)


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_readme_shows_the_example_as_it_is() -> None:
    """The code of the README's jobctl.testing section is the example file's, verbatim."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("### Testing your own flows: `jobctl.testing`")
    section = readme[start : readme.index("\n## ", start)]
    example = (Path(__file__).parent / "test_user_example.py").read_text()
    blocks = python_blocks(section)
    assert len(blocks) == 2
    for block in blocks:
        assert block in example, block
    assert "def test_migration_under_any_load(" in blocks[1]
