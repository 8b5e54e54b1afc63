"""The demo's logic on the simulator, and ``jobctl demo``'s command line."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from jobctl.cli import main
from jobctl.demo import DemoConfig, DemoReport, run_demo
from jobctl.qemu import LatencySummary
from jobctl_simulators.qemu import ErrorReply, FaultPlan, FaultRule

from ._support import Cluster, cluster

QUICK = {"idle_time": 0.05, "poll_interval": 0.05}


async def demo(c: Cluster, **options: Any) -> DemoReport:
    return await run_demo(
        DemoConfig(**{**QUICK, **options}),
        (c.a, c.b),
        hub=c.trace.hub,
        simulator_violations=lambda: c.violations,
    )


@pytest.mark.anyio
async def test_migrations_with_domstats_in_a_tight_loop() -> None:
    async with cluster() as c:
        report = await demo(c, migrations=3)
    assert report.ok, report.describe()
    assert (report.requested, report.completed, report.failed) == (3, 3, 0)
    assert report.violations_simulator == 0 and report.violations_trace == 0
    assert report.idle.count > 0 and report.during.count > report.idle.count
    assert report.barrier.count > 0
    assert report.domstats_calls == report.idle.count + report.during.count
    assert report.domstats_moved <= 3
    assert report.monitor_commands > report.domstats_calls
    c.trace.check()
    json.dumps(report.as_dict())


@pytest.mark.anyio
async def test_several_vms_back_up_at_once() -> None:
    async with cluster() as c:
        report = await demo(c, migrations=2, domains=2, job="backup")
    assert report.ok, report.describe()
    assert (report.requested, report.completed, report.domains) == (4, 4, 2)
    assert "backups: 4/4 completed" in report.describe()
    c.trace.check()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])  # real time: sockets
async def test_saves_and_restores(anyio_backend: Any) -> None:
    async with cluster() as c:
        report = await demo(c, migrations=2, job="save")
    assert report.ok, report.describe()
    assert report.completed == 2 and report.domstats_moved >= 1
    c.trace.check()


@pytest.mark.anyio
async def test_a_failed_migration_is_counted_and_fails_the_run() -> None:
    refuse = FaultPlan((FaultRule(ErrorReply("host b is full"), "migrate-incoming"),))
    incoming = itertools.count()

    def first_incoming_only(name: str, is_incoming: bool) -> FaultPlan | None:
        return refuse if is_incoming and next(incoming) == 0 else None

    async with cluster(faults_b=first_incoming_only) as c:
        report = await demo(c, migrations=3)
    assert not report.ok
    assert (report.completed, report.failed) == (2, 1)
    assert "host b is full" in report.failures[0]
    assert "result: FAILED" in report.describe()
    c.trace.check()


def test_a_report_with_a_violation_is_not_ok() -> None:
    none = LatencySummary.of([])
    report = DemoReport(
        job="migrate",
        backend="qemu",
        domains=1,
        requested=1,
        completed=1,
        failed=0,
        failures=(),
        domstats_calls=0,
        domstats_errors=0,
        domstats_moved=0,
        idle=none,
        during=LatencySummary.of([0.001, 0.002, 0.003]),
        barrier=none,
        violations_simulator=None,
        violations_trace=1,
        violation_examples=("seq 7 on vm1@a: 'query-status' sent while 'migrate' was in flight",),
        monitor_commands=2,
        duration=1.0,
    )
    assert not report.ok and report.violations == 1
    text = report.describe()
    assert "monitor violations (simulator's detector): not measurable (" in text
    assert "None" not in text
    assert "invariant violations (trace checker, all 13): 1" in text and "in flight" in text
    assert report.as_dict()["domstats"]["during_job"] == {
        "count": 3,
        "p50_ms": 2.0,
        "p99_ms": 3.0,
        "max_ms": 3.0,
    }


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="job"):
        DemoConfig(job="dance")
    with pytest.raises(ValueError, match="migrations"):
        DemoConfig(migrations=0)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--migrations", "0"], "--migrations: expected a positive integer"),
        (["--domains", "x"], "--domains: expected a positive integer"),
        (["--job", "dance"], "--job: invalid choice"),
        (["--ram", "100000"], "--ram: at most 4096 MiB"),
        (["--serve", "--listen", "0.0.0.0"], "needs a token"),
        (["--serve-port", "70000"], "--serve-port: a port is 0"),
    ],
)
def test_bad_options_get_one_line(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(["demo", *argv])
    except SystemExit as exit:
        status = int(exit.code or 0)
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jobctl demo: error: ")
    assert complaint in err


def test_the_command_runs_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--migrations", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["backend"] == "simulator"
    assert report["jobs"] == {"requested": 2, "completed": 2, "failed": 0, "failures": []}
    assert report["violations"]["simulator"] == 0 and report["violations"]["trace"] == 0
