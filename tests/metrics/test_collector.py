"""The collector's families and values, against scripted domain runs in virtual time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import anyio
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.registry import DuplicateTimeseries

from jobctl import (
    AsyncJob,
    Domain,
    Job,
    JobAbortedError,
    JobBusyError,
    JobTimeoutError,
    MonitorSession,
    TraceHub,
    TraceKind,
)
from jobctl.metrics import (
    DEFAULT_LATENCY_BUCKETS,
    MAX_BUCKETS,
    DomainNameTakenError,
    JobMetrics,
    MetricsConfigError,
    MetricsError,
    MetricsLoopError,
    UnknownDomainError,
)
from jobctl.testing import ErrorReply, FaultRule, ScriptedMonitor, ScriptedReplyError

from ._support import exposition, scraped, value

pytestmark = pytest.mark.anyio

#: Every family the collector exports (as the exposition names them, counters with _total).
FAMILIES = {
    "jobctl_jobs_begun",
    "jobctl_jobs_begun_by_kind",
    "jobctl_job_waits",
    "jobctl_job_wait_timeouts",
    "jobctl_job_wait_cancellations",
    "jobctl_job_refusals",
    "jobctl_barrier_waits",
    "jobctl_barrier_wait_seconds",
    "jobctl_aborts",
    "jobctl_destroys",
    "jobctl_monitor_commands",
    "jobctl_monitor_replies",
    "jobctl_monitor_command_seconds",
    "jobctl_job_waiters",
    "jobctl_job_oldest_wait_seconds",
    "jobctl_regular_jobs",
    "jobctl_monitor_held",
    "jobctl_barrier_pending_jobs",
    "jobctl_async_job_running",
    "jobctl_async_job_interruptible",
    "jobctl_async_job_seconds",
    "jobctl_async_job",
    # A VM's observed state (tests/metrics/test_observed.py).
    "jobctl_vm_status",
    "jobctl_vm_running",
    "jobctl_vm_migration",
    "jobctl_vm_migration_transferred_bytes",
    "jobctl_vm_migration_remaining_bytes",
    "jobctl_vm_migration_total_bytes",
    "jobctl_vm_migration_passes",
    "jobctl_vm_migration_dirty_bytes_per_second",
    "jobctl_vm_migration_expected_downtime_seconds",
    "jobctl_vm_migration_downtime_seconds",
    "jobctl_vm_block_read_bytes",
    "jobctl_vm_block_written_bytes",
    "jobctl_vm_block_reads",
    "jobctl_vm_block_writes",
    "jobctl_vm_block_flushes",
    "jobctl_vm_job_phase_seconds",
    "jobctl_vm_observation_age_seconds",
}


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


@contextmanager
def exported(hub: TraceHub) -> Iterator[tuple[CollectorRegistry, JobMetrics]]:
    registry = CollectorRegistry()
    with JobMetrics(hub) as metrics:
        registry.register(metrics)
        yield registry, metrics


async def scripted_run(dom: Domain) -> None:
    """A query with two commands; a MODIFY that makes one request refused,
    one time out and one wait; a migration whose barrier waits 3 s for the
    query that began in its section, then aborted through its hook (one
    command); a save pre-empted by DESTROY."""
    async with dom.job(Job.QUERY, owner="stats") as job, job.monitor() as mon:
        await mon.execute("query-status")
        await mon.execute("query-block")

    async def modify() -> None:
        async with dom.job(Job.MODIFY):
            await anyio.sleep(1)

    async def query(hold: float = 0.0) -> None:
        async with dom.job(Job.QUERY):
            await anyio.sleep(hold)

    async with anyio.create_task_group() as tg:
        tg.start_soon(modify)
        await settle()
        with pytest.raises(JobBusyError):
            async with dom.job(Job.QUERY, nowait=True):
                pass
        with pytest.raises(JobTimeoutError):
            async with dom.job(Job.QUERY, timeout=0.5):
                pass
        tg.start_soon(query)

    async def hook(session: MonitorSession) -> None:
        await session.execute("migrate_cancel")

    leave, second_section = anyio.Event(), anyio.Event()

    async def migration() -> None:
        with pytest.raises(JobAbortedError):
            async with dom.async_job(AsyncJob.MIGRATION_OUT) as ajob:
                await ajob.set_phase("perform")
                ajob.set_abort_hook(hook)
                async with ajob.interruptible():
                    await leave.wait()
                # The barrier: the query that began in the section holds it 3 s.
                async with ajob.interruptible():
                    second_section.set()
                    await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(migration)
        await settle()
        tg.start_soon(query, 3.0)
        await settle()
        leave.set()
        await second_section.wait()
        await dom.abort("operator")

    async def save() -> None:
        with pytest.raises(JobAbortedError):
            async with dom.async_job(AsyncJob.SAVE):
                await anyio.sleep(100)

    async with anyio.create_task_group() as tg:
        tg.start_soon(save)
        await settle()
        async with dom.job(Job.DESTROY):
            pass


async def test_the_families_and_values_match_a_scripted_run() -> None:
    hub = TraceHub()
    dom = Domain("vm-1", monitor=ScriptedMonitor(latency=[0.003, 0.02, 0.2]), trace=hub)
    with exported(hub) as (registry, metrics):
        metrics.add(dom)
        began = trio.current_time()
        await scripted_run(dom)
        stats = dom.statistics()
        # What the run did, counted by hand ...
        assert (stats.busy, stats.timeouts, stats.aborts, stats.destroys) == (1, 1, 1, 1)
        assert (stats.commands, stats.barrier_waits) == (3, 1)
        # ... and what the scrape says: the domain's own counters.
        d = {"domain": "vm-1"}
        expected = {
            ("jobctl_jobs_begun_total", "regular"): stats.begins,
            ("jobctl_jobs_begun_total", "async"): stats.async_begins,
        }
        for (name, kind), count in expected.items():
            assert value(registry, name, **d, type=kind) == count
        assert (stats.begins, stats.async_begins) == (6, 2)
        for name, count in [
            ("jobctl_job_waits_total", stats.waits),
            ("jobctl_job_wait_timeouts_total", 1),
            ("jobctl_job_wait_cancellations_total", 0),
            ("jobctl_barrier_waits_total", 1),
            ("jobctl_aborts_total", 1),
            ("jobctl_destroys_total", 1),
            ("jobctl_monitor_commands_total", 3),
        ]:
            assert value(registry, name, **d) == count, name
        assert stats.waits >= 2  # the timed-out query and the one that began late
        assert value(registry, "jobctl_job_refusals_total", **d, reason="busy") == 1
        assert value(registry, "jobctl_job_refusals_total", **d, reason="queue_full") == 0
        seconds = value(registry, "jobctl_barrier_wait_seconds_total", **d)
        assert seconds == pytest.approx(stats.barrier_wait_time) == pytest.approx(3.0)
        # From the trace: the jobs by kind, the replies.
        by_kind = {
            kind: value(registry, "jobctl_jobs_begun_by_kind_total", **d, kind=kind)
            for kind in ("query", "modify", "abort", "destroy", "migration_out", "save", "backup")
        }
        assert by_kind == {
            "query": 3,
            "modify": 1,
            "abort": 1,
            "destroy": 1,
            "migration_out": 1,
            "save": 1,
            "backup": None,  # never begun: no series
        }
        assert value(registry, "jobctl_monitor_replies_total", **d, outcome="ok") == 3
        # Idle at the end: every gauge at rest, no async job info.
        for name in (
            "jobctl_job_waiters",
            "jobctl_job_oldest_wait_seconds",
            "jobctl_regular_jobs",
            "jobctl_monitor_held",
            "jobctl_barrier_pending_jobs",
            "jobctl_async_job_running",
            "jobctl_async_job_interruptible",
            "jobctl_async_job_seconds",
        ):
            assert value(registry, name, **d) == 0, name
        assert "jobctl_async_job_info{" not in exposition(registry)
        # Virtual time: two replies, the MODIFY, the barrier, the hook's command.
        assert trio.current_time() - began == pytest.approx(0.023 + 1.0 + 3.0 + 0.2)
        # One scrape's families are the whole set, each named as documented.
        names = {family.name for family in registry.collect()}
        assert names == FAMILIES
        # Scrapes leave the domain as it was: its last async job is still
        # there for its owner to read.
        completed = dom.info().completed_async_job
        assert completed is not None and completed.outcome == "destroyed"


async def test_the_gauges_show_the_domain_now() -> None:
    hub = TraceHub()
    dom = Domain("vm-1", monitor=ScriptedMonitor(latency=5.0), trace=hub, wait_timeout=None)
    with exported(hub) as (registry, metrics):
        metrics.add(dom)
        d = {"domain": "vm-1"}
        in_section = anyio.Event()
        leave = anyio.Event()

        async def backup() -> None:
            async with dom.async_job(AsyncJob.BACKUP, owner="backup") as ajob:
                await ajob.set_phase("copy")
                async with ajob.interruptible():
                    in_section.set()
                    await leave.wait()

        async def query() -> None:
            async with dom.job(Job.QUERY) as job, job.monitor() as mon:
                await mon.execute("query-block")

        async with anyio.create_task_group() as tg:
            tg.start_soon(backup)
            await in_section.wait()
            await anyio.sleep(2)
            tg.start_soon(query)
            await settle()
            assert value(registry, "jobctl_async_job_running", **d) == 1
            assert value(registry, "jobctl_async_job_interruptible", **d) == 1
            assert value(registry, "jobctl_async_job_seconds", **d) == pytest.approx(2)
            assert value(registry, "jobctl_async_job_info", **d, kind="backup", phase="copy") == 1
            assert value(registry, "jobctl_regular_jobs", **d) == 1
            assert value(registry, "jobctl_monitor_held", **d) == 1
            # A MODIFY is not allowed in the backup's section: it waits.
            tg.start_soon(modify_briefly, dom)
            await anyio.sleep(1)
            assert value(registry, "jobctl_job_waiters", **d) == 1
            assert value(registry, "jobctl_job_oldest_wait_seconds", **d) == pytest.approx(1)
            # The section closes while the query's command is on the wire:
            # the barrier waits for the query.
            leave.set()
            await settle()
            assert value(registry, "jobctl_async_job_interruptible", **d) == 0
            assert value(registry, "jobctl_barrier_pending_jobs", **d) == 1
        assert value(registry, "jobctl_async_job_running", **d) == 0
        assert value(registry, "jobctl_job_waiters", **d) == 0


async def modify_briefly(dom: Domain) -> None:
    async with dom.job(Job.MODIFY):
        pass


async def test_the_histogram_counts_each_command_by_its_monitor_time() -> None:
    hub = TraceHub()
    latencies = [0.0003, 0.003, 0.003, 0.2, 7.0, 40.0, 100.0, 7.0]
    # The 5th command gets an error reply (after its latency, 7 s).
    monitor = ScriptedMonitor(latency=latencies, faults=[FaultRule(ErrorReply(), nth=5)])
    dom = Domain("vm-1", monitor=monitor, trace=hub, wait_timeout=None)
    other = Domain("vm-2", monitor=ScriptedMonitor(latency=0.001), trace=hub)
    with exported(hub) as (registry, metrics):
        metrics.add(dom)
        async with dom.job(Job.QUERY) as job, job.monitor() as mon:
            for _ in range(4):
                await mon.execute("query-status")
            with pytest.raises(ScriptedReplyError):
                await mon.execute("query-status")
            await mon.execute("query-status")  # 40 s
            await mon.execute("query-status")  # 100 s: past the last bound
            # The caller gives up after 1 s: the time is its own, not the monitor's.
            with anyio.move_on_after(1):
                await mon.execute("query-status")
        # Another domain's commands on the same hub count for it only, and it
        # is not exported.
        async with other.job(Job.QUERY) as job, job.monitor() as mon:
            await mon.execute("query-status")

        d = {"domain": "vm-1"}

        def bucket(le: str) -> float | None:
            return value(registry, "jobctl_monitor_command_seconds_bucket", **d, le=le)

        assert [bucket(le) for le in ("0.0005", "0.001", "0.0025", "0.005")] == [1, 1, 1, 3]
        assert [bucket(le) for le in ("0.1", "0.25", "5.0", "10.0", "30.0", "60.0")] == [
            3,
            4,
            4,
            5,
            5,
            6,
        ]
        assert bucket("+Inf") == 7
        assert value(registry, "jobctl_monitor_command_seconds_count", **d) == 7
        total = value(registry, "jobctl_monitor_command_seconds_sum", **d)
        assert total == pytest.approx(sum(latencies[:7]))
        replies = {
            outcome: value(registry, "jobctl_monitor_replies_total", **d, outcome=outcome)
            for outcome in ("ok", "error", "cancelled")
        }
        assert replies == {"ok": 6, "error": 1, "cancelled": 1}
        assert value(registry, "jobctl_monitor_commands_total", **d) == 8
        assert value(registry, "jobctl_monitor_commands_total", domain="vm-2") is None
        assert metrics.buckets == DEFAULT_LATENCY_BUCKETS


async def test_custom_buckets_and_counts_since_the_domain_was_added() -> None:
    hub = TraceHub()
    dom = Domain("vm-1", monitor=ScriptedMonitor(latency=0.5), trace=hub)
    async with dom.job(Job.QUERY) as job, job.monitor() as mon:
        await mon.execute("before")  # before the domain was added
    registry = CollectorRegistry()
    with JobMetrics(hub, buckets=[1, 2]) as metrics:
        registry.register(metrics)
        metrics.add(dom)
        async with dom.job(Job.QUERY) as job, job.monitor() as mon:
            await mon.execute("after")
        d = {"domain": "vm-1"}
        text = exposition(registry)
        assert 'le="1.0"' in text and 'le="2.0"' in text and 'le="0.5"' not in text
        assert value(registry, "jobctl_monitor_command_seconds_count", **d) == 1
        assert value(registry, "jobctl_jobs_begun_by_kind_total", **d, kind="query") == 1
        # The domain's own counters count from its start.
        assert value(registry, "jobctl_monitor_commands_total", **d) == 2
        assert value(registry, "jobctl_jobs_begun_total", **d, type="regular") == 2


async def test_domains_and_vms_come_and_go() -> None:
    hub = TraceHub()
    first, second = Domain("vm-1", trace=hub), Domain("vm-2", trace=hub)
    with exported(hub) as (registry, metrics):
        metrics.add(first)
        metrics.add(second)
        assert metrics.domains == ("vm-1", "vm-2")
        with pytest.raises(DomainNameTakenError, match="'vm-1'"):
            metrics.add(Domain("vm-1", trace=hub))
        with pytest.raises(TypeError, match=r"a jobctl\.Domain or a VM"):
            metrics.add("vm-3")  # type: ignore[arg-type]
        metrics.remove("vm-1")
        assert value(registry, "jobctl_job_waiters", domain="vm-1") is None
        assert value(registry, "jobctl_job_waiters", domain="vm-2") == 0
        metrics.remove(second)
        with pytest.raises(UnknownDomainError, match="'vm-2'"):
            metrics.remove(second)
        assert not metrics.domains
        assert {family.name for family in registry.collect()} == FAMILIES
        assert all(not family.samples for family in registry.collect())
    assert not hub.active  # closing it unsubscribed


async def test_a_registry_knows_the_names_without_a_scrape() -> None:
    hub = TraceHub()
    registry = CollectorRegistry()
    with exported(hub) as (_, metrics):
        metrics.add(Domain("vm-1", trace=hub))
        registry.register(metrics)
        with JobMetrics(hub) as twin, pytest.raises(DuplicateTimeseries):
            registry.register(twin)


async def test_odd_trace_events_never_break_the_listener() -> None:
    hub = TraceHub()
    dom = Domain("vm-1", trace=hub)
    with exported(hub) as (registry, metrics):
        metrics.add(dom)
        hub.emit("vm-1", TraceKind.COMMAND_ANSWERED, 7, "QUERY", None, {"outcome": "odd"})
        hub.emit("vm-1", TraceKind.COMMAND_ANSWERED, 7, "QUERY", None, {"outcome": "ok"})
        hub.emit("vm-1", TraceKind.JOB_BEGIN, 8, "NOT_A_KIND")
        hub.emit("vm-1", TraceKind.JOB_BEGIN, 9, None)
        assert hub.failed_listeners == 0
        # A reply without a command sent is counted, not timed.
        assert value(registry, "jobctl_monitor_replies_total", domain="vm-1", outcome="ok") == 1
        assert value(registry, "jobctl_monitor_command_seconds_count", domain="vm-1") == 0
        (by_kind,) = (f for f in registry.collect() if f.name == "jobctl_jobs_begun_by_kind")
        assert by_kind.samples == []


async def test_a_scrape_from_another_thread_reads_in_the_loop() -> None:
    hub = TraceHub()
    dom = Domain("vm-1", monitor=ScriptedMonitor(latency=0.003), trace=hub)
    with exported(hub) as (registry, metrics):
        metrics.add(dom)
        async with dom.job(Job.QUERY) as job, job.monitor() as mon:
            await mon.execute("query-status")
        here = exposition(registry)
        there = await anyio.to_thread.run_sync(exposition, registry)
        assert scraped(there) == scraped(here)
        key = ("jobctl_monitor_commands_total", (("domain", "vm-1"),))
        assert scraped(there)[key] == 1


def test_once_the_loop_has_ended_a_scrape_gets_no_samples() -> None:
    registry = CollectorRegistry()

    async def run() -> None:
        hub = TraceHub()
        metrics = JobMetrics(hub)
        metrics.add(Domain("vm-1", trace=hub))
        registry.register(metrics)
        assert value(registry, "jobctl_job_waiters", domain="vm-1") == 0

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    # In the loop's thread, after it, and from another thread.
    assert all(not family.samples for family in registry.collect())
    with ThreadPoolExecutor(1) as pool:
        families = pool.submit(lambda: list(registry.collect())).result()
    assert families and all(not family.samples for family in families)


def test_it_is_made_in_an_event_loop() -> None:
    with pytest.raises(MetricsLoopError, match="inside the event loop"):
        JobMetrics(TraceHub())
    assert issubclass(MetricsLoopError, MetricsError)


@pytest.mark.parametrize(
    "buckets",
    [[], [0], [-1, 1], [1, 1], [2, 1], [math.nan], [math.inf], ["x"], range(1, MAX_BUCKETS + 2)],
)
async def test_bad_buckets_are_refused(buckets: list[float]) -> None:
    with pytest.raises(MetricsConfigError, match="bucket"):
        JobMetrics(TraceHub(), buckets=buckets)
