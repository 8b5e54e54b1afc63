"""The demo: migrations of VMs with a disk back and forth between two hosts,
while domstats runs against each VM in a tight loop.

This is the concurrency test of the interruptible-job design: every domstats
is a QUERY job that may begin only inside the migration's interruptible
sections, and the monitor must never see two commands at once. The report
counts jobs and failures, domstats latencies when idle and during a job,
the barrier waits, and monitor violations (from the simulator's detector,
and from the trace).

:func:`run_demo` is the logic, on any pair of hosts; the tests drive it in
virtual time. :func:`open_demo_hosts` gives the hosts ``jobctl demo`` uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, final

import anyio
import attrs

from jobctl._core._domain import Domain
from jobctl._core._errors import JobError
from jobctl._core._trace import TraceEvent, TraceHub, TraceKind
from jobctl.qemu._backup import BackupTarget, backup
from jobctl.qemu._domstats import domstats
from jobctl.qemu._errors import FlowError
from jobctl.qemu._latency import LatencyHistogram, LatencySummary
from jobctl.qemu._lifecycle import destroy, start
from jobctl.qemu._machine import Host, MachineSpec
from jobctl.qemu._migration import MigrationOptions, migrate
from jobctl.qemu._restore import restore
from jobctl.qemu._save import save
from jobctl.qemu._vm import VM
from jobctl.qmp import QMPError
from jobctl.testing import INVARIANTS, REAL_TIME_INSTANT, InvariantChecker

__all__ = [
    "JOBS",
    "NOUNS",
    "DemoConfig",
    "DemoCounters",
    "DemoHosts",
    "DemoReport",
    "open_demo_hosts",
    "run_demo",
]

#: The jobs the demo can repeat, and what the report calls them.
NOUNS: Final = {"migrate": "migrations", "backup": "backups", "save": "saves"}
JOBS: Final = tuple(NOUNS)
_MiB: Final = 1 << 20
#: How many failure messages a report keeps.
_FAILURES_KEPT: Final = 10


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _job(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in JOBS:
        raise ValueError(f"job must be one of {', '.join(JOBS)}, not {value!r}")


@final
@attrs.frozen
class DemoConfig:
    """What the demo does: ``migrations`` jobs of kind ``job`` per VM, on
    ``domains`` VMs at once, each with ``ram_mib`` of RAM and a disk of
    ``disk_mib``; migrations limited to ``bandwidth`` MiB/s (QEMU's
    ``max-bandwidth``)."""

    migrations: int = attrs.field(default=100, validator=_at_least_one)
    domains: int = attrs.field(default=1, validator=_at_least_one)
    job: str = attrs.field(default="migrate", validator=_job)
    ram_mib: int = attrs.field(default=64, validator=_at_least_one)
    disk_mib: int = attrs.field(default=64, validator=_at_least_one)
    bandwidth: int = attrs.field(default=1024, validator=_at_least_one)
    #: How often a job leaves its section to poll QEMU for progress.
    poll_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    #: Seconds of domstats alone before the first job: the idle baseline.
    idle_time: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))

    @property
    def total(self) -> int:
        return self.migrations * self.domains


@final
class DemoCounters:
    """Live counts while the demo runs (the progress bar reads them)."""

    __slots__ = ("completed", "domstats", "failed", "total")

    def __init__(self) -> None:
        self.total = 0
        self.completed = 0
        self.failed = 0
        self.domstats = 0


@final
@attrs.frozen
class DemoReport:
    """What the demo measured. Latencies are in seconds."""

    job: str
    backend: str
    domains: int
    requested: int
    completed: int
    failed: int
    failures: tuple[str, ...]
    domstats_calls: int
    domstats_errors: int
    #: domstats that found the VM gone from where it asked (it had just
    #: migrated, or was saved and not yet restored).
    domstats_moved: int
    idle: LatencySummary
    during: LatencySummary
    barrier: LatencySummary
    #: The simulator's concurrency detector (None on real QEMU).
    violations_simulator: int | None
    violations_trace: int
    violation_examples: tuple[str, ...]
    monitor_commands: int
    duration: float

    @property
    def violations(self) -> int:
        return self.violations_trace + (self.violations_simulator or 0)

    @property
    def ok(self) -> bool:
        """No violation, no failure, every job done."""
        return (
            not self.violations
            and not self.failed
            and not self.domstats_errors
            and self.completed == self.requested
        )

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "ok": self.ok,
            "job": self.job,
            "backend": self.backend,
            "domains": self.domains,
            "jobs": {
                "requested": self.requested,
                "completed": self.completed,
                "failed": self.failed,
                "failures": list(self.failures),
            },
            "domstats": {
                "calls": self.domstats_calls,
                "errors": self.domstats_errors,
                "moved": self.domstats_moved,
                "idle": self.idle.as_dict(),
                "during_job": self.during.as_dict(),
            },
            "barrier_waits": self.barrier.as_dict(),
            "violations": {
                "simulator": self.violations_simulator,
                "trace": self.violations_trace,
                "examples": list(self.violation_examples),
            },
            "monitor_commands": self.monitor_commands,
            "duration_s": round(self.duration, 3),
        }

    def describe(self) -> str:
        """The report as text, one fact per line."""
        noun = NOUNS[self.job]
        simulator = (
            "not measurable (real QEMU has no detector; the trace checker below still counts)"
            if self.violations_simulator is None
            else str(self.violations_simulator)
        )
        lines = [
            f"{noun}: {self.completed}/{self.requested} completed, {self.failed} failed "
            f"({self.domains} VM(s), {self.backend}, {self.duration:.1f} s)",
            f"domstats calls: {self.domstats_calls} ({self.domstats_errors} errors, "
            f"{self.domstats_moved} found the VM just moved)",
            f"domstats latency idle:       {self.idle.describe()}",
            f"domstats latency during job: {self.during.describe()}",
            f"barrier waits:               {self.barrier.describe()}",
            f"monitor commands: {self.monitor_commands}",
            f"monitor violations (simulator's detector): {simulator}",
            f"invariant violations (trace checker, all {len(INVARIANTS)}): {self.violations_trace}",
        ]
        lines += [f"  {example}" for example in self.violation_examples]
        lines += [f"failure: {failure}" for failure in self.failures]
        lines.append("result: OK" if self.ok else "result: FAILED")
        return "\n".join(lines)


@final
class _Pair:
    """One VM, seen from both hosts; ``current`` is where it runs."""

    def __init__(self, name: str, here: VM, there: VM) -> None:
        self.name = name
        self.current = here
        self.other = there
        #: A job runs on the VM now.
        self.busy = False
        self.done = anyio.Event()
        self._placed = anyio.Event()

    def swap(self) -> None:
        """The VM migrated."""
        self.current, self.other = self.other, self.current
        self.placed()

    def placed(self) -> None:
        """The VM runs again (after a migration or a restore)."""
        self._placed.set()
        self._placed = anyio.Event()

    async def wait_placed(self, vm: VM) -> None:
        """Wait until the VM, which was not running on ``vm``, runs
        somewhere again, or the demo is done."""
        again = self.current is not vm or (vm.machine is not None and not vm.machine.stopped)
        if again or self.done.is_set():
            await anyio.lowlevel.checkpoint()
            return
        placed = self._placed
        async with anyio.create_task_group() as tg:

            async def until_done() -> None:
                await self.done.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_done)
            await placed.wait()
            tg.cancel_scope.cancel()


#: How many trace violations the report describes.
_VIOLATIONS_SHOWN: Final = 5


@final
class _Samples:
    def __init__(self) -> None:
        self.idle = LatencyHistogram()
        self.during = LatencyHistogram()
        self.barrier = LatencyHistogram()
        self.failures: list[str] = []
        self.errors = 0
        self.moved = 0
        self.commands = 0

    def on_trace(self, event: TraceEvent) -> None:
        if event.kind is TraceKind.COMMAND_SENT:
            self.commands += 1
        elif event.kind is TraceKind.BARRIER_END:
            waited = event.detail.get("waited")
            if isinstance(waited, float | int):
                self.barrier.add(float(waited))

    def fail(self, message: str) -> None:
        if len(self.failures) < _FAILURES_KEPT:
            self.failures.append(message)


async def _set_up(
    index: int,
    config: DemoConfig,
    hosts: tuple[Host, Host],
    hub: TraceHub,
    on_vm: Callable[[VM], object] | None,
) -> _Pair:
    name = f"vm{index + 1}"
    here, there = (VM(Domain(f"{name}@{host.name}", trace=hub), host) for host in hosts)
    if on_vm is not None:
        on_vm(here)
        on_vm(there)
    disk = await hosts[0].create_disk(name, config.disk_mib)
    backup_disk = None
    if config.job == "backup":
        backup_disk = await hosts[0].create_disk(f"{name}-backup", config.disk_mib)
    spec = MachineSpec(ram_mib=config.ram_mib, disk=disk, backup_disk=backup_disk)
    await start(here, spec, owner="demo")
    return _Pair(name, here, there)


async def _work(
    pair: _Pair,
    config: DemoConfig,
    counters: DemoCounters,
    samples: _Samples,
    scratch: Path,
) -> None:
    interval = config.poll_interval
    options = MigrationOptions(bandwidth=config.bandwidth * _MiB, poll_interval=interval)
    try:
        await anyio.sleep(config.idle_time)
        for number in range(1, config.migrations + 1):
            pair.busy = True
            try:
                vm = pair.current
                if config.job == "migrate":
                    await migrate(vm, pair.other, options, owner="demo")
                    pair.swap()
                elif config.job == "backup":
                    target = BackupTarget(vm.running_machine().spec.backup_node)
                    await backup(vm, target, owner="demo", poll_interval=interval)
                else:
                    path = str(scratch / f"{pair.name}.save")
                    spec = vm.running_machine().spec
                    await save(vm, path, owner="demo", poll_interval=interval)
                    await restore(vm, spec, path, owner="demo")
                    pair.placed()
                counters.completed += 1
            except (JobError, FlowError, QMPError) as exc:
                counters.failed += 1
                samples.fail(f"{pair.name} {config.job} #{number}: {type(exc).__name__}: {exc}")
                if pair.current.machine is None:
                    counters.failed += config.migrations - number
                    return
            finally:
                pair.busy = False
    finally:
        pair.done.set()


async def _domstats_loop(pair: _Pair, counters: DemoCounters, samples: _Samples) -> None:
    while not pair.done.is_set():
        vm = pair.current
        during = pair.busy
        began = anyio.current_time()
        try:
            stats = await domstats(vm.domain, owner="domstats")
        except (JobError, FlowError, QMPError) as exc:
            samples.errors += 1
            samples.fail(f"{pair.name} domstats: {type(exc).__name__}: {exc}")
            await pair.wait_placed(vm)
            continue
        latency = anyio.current_time() - began
        (samples.during if during or pair.busy else samples.idle).add(latency)
        counters.domstats += 1
        if stats.state == "shutoff":
            samples.moved += 1
            await pair.wait_placed(vm)


async def run_demo(
    config: DemoConfig,
    hosts: tuple[Host, Host],
    *,
    hub: TraceHub | None = None,
    counters: DemoCounters | None = None,
    simulator_violations: Callable[[], int] | None = None,
    backend: str = "simulator",
    on_vm: Callable[[VM], object] | None = None,
) -> DemoReport:
    """Run the demo on ``hosts`` (VMs start on the first) and report.

    Job failures are counted, not raised. ``hub`` (default: a new one) gets
    every domain's trace; ``counters`` shows progress while it runs;
    ``simulator_violations`` reads the simulator's detector at the end.
    ``on_vm`` is called with each VM (each host's view of it) as it is made,
    before its first job (``jobctl.metrics.JobMetrics.add``, say).
    """
    hub = TraceHub() if hub is None else hub
    counters = DemoCounters() if counters is None else counters
    counters.total = config.total
    # Every isolation invariant, checked live on the trace (the only check on
    # real QEMU, which cannot tell whether a client overlapped commands).
    checker = InvariantChecker(instant=REAL_TIME_INSTANT)
    samples = _Samples()
    scratch = Path(tempfile.mkdtemp(prefix="jobctl-demo-"))
    try:
        with hub.subscribe(checker.feed), hub.subscribe(samples.on_trace):
            pairs = [
                await _set_up(index, config, hosts, hub, on_vm) for index in range(config.domains)
            ]
            began = anyio.current_time()
            try:
                async with anyio.create_task_group() as tg:
                    for pair in pairs:
                        tg.start_soon(_work, pair, config, counters, samples, scratch)
                        tg.start_soon(_domstats_loop, pair, counters, samples)
                duration = anyio.current_time() - began
            finally:
                with anyio.CancelScope(shield=True):
                    for pair in pairs:
                        await destroy(pair.current, owner="demo")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    checker.finish()
    violations = checker.violations
    return DemoReport(
        job=config.job,
        backend=backend,
        domains=config.domains,
        requested=config.total,
        completed=counters.completed,
        failed=counters.failed,
        failures=tuple(samples.failures),
        domstats_calls=counters.domstats,
        domstats_errors=samples.errors,
        domstats_moved=samples.moved,
        idle=samples.idle.summary(),
        during=samples.during.summary(),
        barrier=samples.barrier.summary(),
        violations_simulator=None if simulator_violations is None else simulator_violations(),
        violations_trace=len(violations),
        violation_examples=tuple(
            f"invariant {v.invariant} ({v.title}) on {v.domain}: {v.message}"
            for v in violations[:_VIOLATIONS_SHOWN]
        ),
        monitor_commands=samples.commands,
        duration=duration,
    )


@final
@attrs.frozen
class DemoHosts:
    """The two hosts of a demo run and where to read violations."""

    hosts: tuple[Host, Host]
    backend: str
    simulator_violations: Callable[[], int] | None


@asynccontextmanager
async def open_demo_hosts(
    *, qemu: bool = False, command_latency: float = 0.0
) -> AsyncIterator[DemoHosts]:
    """Two hosts that can migrate between each other: simulated (sharing one
    simulated network; each command takes ``command_latency`` seconds, which
    virtual time needs) or, with ``qemu``, real QEMU (sharing a temporary
    storage directory). Everything is stopped and removed on exit."""
    from jobctl.testing._host_pair import open_host_pair

    async with open_host_pair(
        ("host-a", "host-b"), qemu=qemu, command_latency=command_latency
    ) as pair:
        sim = pair.simulator
        if sim is None:
            yield DemoHosts(pair.hosts, "qemu", None)
        else:
            yield DemoHosts(pair.hosts, "simulator", lambda: sim.detector.violation_count)
