"""Parallel backups on one host: 40 simulated VMs with incremental backup chains.

A host runs a random mix of take-backup, delete-backup and restore commands
through one :class:`jobctl.host.CommandExecutor`. Each command says which
entities it needs instead of the host serializing everything:

=============  ===================================  ===========================
command        needs                                 so that
=============  ===================================  ===========================
take-backup    ``vm`` shared, ``chain`` exclusive    backups of different VMs
                                                     overlap; one chain grows
                                                     one backup at a time
delete-backup  ``chain`` exclusive                   deletes overlap across
                                                     chains, run in order in one
                                                     (they merge shared parents)
restore        ``vm`` exclusive, ``chain`` shared    a restore has its VM alone
=============  ===================================  ===========================

At most 6 backups run at once (``kind_limits``), so deletes and restores
still find workers. Each VM is a :class:`jobctl.Domain` with an in-memory
monitor (:class:`jobctl.testing.ScriptedMonitor`); a backup is a BACKUP
async job on its domain and a restore a RESTORE async job, and both are
begun with ``timeout=0``: if the entity locks ever let two jobs of one VM
overlap, the domain refuses at once and the command fails, so a clean run
also shows the locks kept the domains free of contention.

Time: the work is modelled with ``anyio.sleep`` (a backup copies for 2-20
minutes) on trio's ``MockClock``, which jumps ahead whenever every task
waits. The whole host day runs in well under a second of wall time and the
makespans printed are virtual.

The same commands are then run one at a time, in submission order, without
the executor, as the reference: the parallel run must end in the same state
with the same per-command results, and a conflict monitor independent of
the entity locks checks on every start that no two conflicting commands ever
overlapped. Run::

    python examples/parallel_backups.py [--vms 40] [--commands 200] [--workers 8]
        [--backup-cap 6] [--seed 1] [--critical-first]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import anyio
import attrs
from trio.testing import MockClock

from jobctl import AsyncJob, Domain, Job
from jobctl.host import (
    Command,
    CommandContext,
    CommandExecutor,
    Entity,
    ExecutionState,
    ExecutorSummary,
    LockMode,
    Need,
)
from jobctl.testing import ScriptedMonitor

TAKE: Final = "take-backup"
DELETE: Final = "delete-backup"
RESTORE: Final = "restore"
KIND_OF: Final = {TAKE: "backup", DELETE: "delete", RESTORE: "restore"}
#: Seconds of (virtual) work per action: uniform between the bounds.
DURATION: Final = {TAKE: (120.0, 1200.0), DELETE: (30.0, 300.0), RESTORE: (120.0, 600.0)}
WEIGHTS: Final = {TAKE: 5, DELETE: 3, RESTORE: 2}
#: Steps in which long work reports progress.
STEPS: Final = 4

Progress = Callable[[Mapping[str, Any]], None]


# -- the simulated host ---------------------------------------------------------


@attrs.frozen
class Backup:
    """One backup in a chain: full when ``parent`` is None, else incremental."""

    id: str
    parent: str | None
    data: str


class NoBackupError(Exception):
    """There is no backup to delete or restore from."""


class SimVM:
    """A VM: its domain, its disk contents (``data``) and its backup chain."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.domain = Domain(name, monitor=ScriptedMonitor(), wait_timeout=0)
        self.data = f"{name}:installed"
        self.chain: list[Backup] = []
        self.taken = 0


@attrs.frozen
class Op:
    """One host command of the workload."""

    index: int
    action: str
    vm: str
    duration: float

    @property
    def name(self) -> str:
        return f"{self.action} {self.vm}"

    def needs(self) -> tuple[Need, ...]:
        vm, chain = Entity("vm", self.vm), Entity("chain", self.vm)
        if self.action == TAKE:
            return (vm.shared(), chain.exclusive())
        if self.action == DELETE:
            return (chain.exclusive(),)
        return (vm.exclusive(), chain.shared())


def vm_names(count: int) -> list[str]:
    return [f"vm-{number:02d}" for number in range(count)]


def make_workload(*, vms: int = 40, commands: int = 200, seed: int = 1) -> tuple[Op, ...]:
    """A seeded random mix of ``commands`` commands over ``vms`` VMs.

    It opens with a full backup of every VM but the last ``max(1, vms // 20)``
    (new VMs), then somebody asks to restore the newest VM, which was never
    backed up: that command fails and the others go on. After that a delete
    is only issued for a chain that will hold two backups or more by then
    (the retention policy keeps one).
    """
    rng = random.Random(seed)
    names = vm_names(vms)
    chain = dict.fromkeys(names, 0)  # chain lengths, in submission order
    actions = list(WEIGHTS)
    ops = []
    for index in range(commands):
        if index < vms - max(1, vms // 20):
            action, vm = TAKE, names[index]
        elif index == vms - max(1, vms // 20):
            action, vm = RESTORE, names[-1]
        else:
            action = rng.choices(actions, weights=[WEIGHTS[a] for a in actions])[0]
            vm = rng.choice(names)
            if action == DELETE and chain[vm] < 2:
                action = TAKE
        chain[vm] += {TAKE: 1, DELETE: -1, RESTORE: 0}[action]
        low, high = DURATION[action]
        ops.append(Op(index, action, vm, round(rng.uniform(low, high), 1)))
    return tuple(ops)


class Host:
    """The VMs of one host and the three operations on them."""

    def __init__(self, vms: int) -> None:
        self.vms = {name: SimVM(name) for name in vm_names(vms)}

    async def _work(self, seconds: float, progress: Progress, what: str) -> None:
        for step in range(1, STEPS + 1):
            await anyio.sleep(seconds / STEPS)
            progress({what: f"{100 * step // STEPS}%"})

    async def take_backup(self, op: Op, owner: str, progress: Progress) -> str:
        vm = self.vms[op.vm]
        async with vm.domain.async_job(AsyncJob.BACKUP, owner=owner, timeout=0) as job:
            parent = vm.chain[-1].id if vm.chain else None
            await job.set_phase("copy")
            async with job.monitor() as mon:
                await mon.execute(
                    "blockdev-backup",
                    {"device": "disk0", "sync": "full" if parent is None else "incremental"},
                )
            data = vm.data  # the point in time the backup captures
            async with job.interruptible():
                await self._work(op.duration, progress, "copied")
            await job.set_phase("finish")
            async with job.monitor() as mon:
                await mon.execute("query-jobs")
        vm.taken += 1
        backup = Backup(f"{vm.name}/b{vm.taken}", parent, data)
        vm.chain.append(backup)
        return backup.id

    async def delete_backup(self, op: Op, owner: str, progress: Progress) -> str:
        vm = self.vms[op.vm]
        if not vm.chain:
            raise NoBackupError(f"{vm.name}: no backup to delete")
        oldest = vm.chain[0]
        # Merge the oldest backup into its child (they share the parent file).
        await self._work(op.duration, progress, "merged")
        async with (
            vm.domain.job(Job.MODIFY, owner=owner, nowait=True) as job,
            job.monitor() as mon,
        ):
            await mon.execute("block-dirty-bitmap-remove", {"name": oldest.id})
        del vm.chain[0]
        if vm.chain:
            vm.chain[0] = attrs.evolve(vm.chain[0], parent=None)
        return oldest.id

    async def restore(self, op: Op, owner: str, progress: Progress) -> str:
        vm = self.vms[op.vm]
        if not vm.chain:
            raise NoBackupError(f"{vm.name}: no backup to restore from")
        newest = vm.chain[-1]
        async with vm.domain.async_job(AsyncJob.RESTORE, owner=owner, timeout=0) as job:
            await job.set_phase("restore")
            async with job.interruptible():
                await self._work(op.duration, progress, "restored")
            vm.data = f"{vm.name}:restored-from:{newest.id}"
        return newest.id

    def run(self, op: Op, owner: str, progress: Progress) -> Awaitable[str]:
        action = {TAKE: self.take_backup, DELETE: self.delete_backup, RESTORE: self.restore}
        return action[op.action](op, owner, progress)

    def state(self) -> dict[str, Any]:
        """Everything a run leaves behind, comparable between runs."""
        return {
            name: (vm.data, tuple(vm.chain), vm.taken, vm.domain.info().async_job)
            for name, vm in self.vms.items()
        }


class ConflictMonitor:
    """Checks, independently of the entity locks, that no two running
    commands conflict: every start is compared with everything running."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[Op, tuple[Need, ...]]] = {}
        self.violations: list[str] = []
        self.peak = 0

    def start(self, op: Op) -> None:
        needs = op.needs()
        for other, other_needs in self.running.values():
            if any(a.conflicts_with(b) for a in needs for b in other_needs):
                self.violations.append(
                    f"{op.name} #{op.index} overlapped {other.name} #{other.index}"
                )
        self.running[op.index] = (op, needs)
        self.peak = max(self.peak, len(self.running))

    def end(self, op: Op) -> None:
        del self.running[op.index]


Outcome = tuple[str, str]


def _outcome_of(error: BaseException | None, value: object) -> Outcome:
    if error is None:
        return ("ok", str(value))
    return (type(error).__name__, str(error))


@attrs.frozen
class RunResult:
    """What one run produced."""

    state: dict[str, Any]
    outcomes: tuple[Outcome, ...]
    makespan: float
    violations: tuple[str, ...]
    peak: int
    summary: ExecutorSummary | None = None


# -- the two runs -----------------------------------------------------------------


def critical_first(ops: Sequence[Op]) -> list[int]:
    """Priorities that start the longest chains of conflicting work first.

    Each command gets its critical path to the end: its duration plus the
    longest such path among the later commands it conflicts with ("highest
    level first"). A command so ranks at least as high as every later one it
    conflicts with, so conflicting commands still start in submission order
    and the results stay those of the sequential run.
    """
    after_any: dict[Entity, float] = {}  # longest path of a later user, any mode
    after_exclusive: dict[Entity, float] = {}  # ... of a later exclusive user
    levels = [0.0] * len(ops)
    for index in reversed(range(len(ops))):
        needs = ops[index].needs()
        level = ops[index].duration + max(
            (
                (after_any if need.mode is LockMode.EXCLUSIVE else after_exclusive).get(
                    need.entity, 0.0
                )
                for need in needs
            ),
            default=0.0,
        )
        for need in needs:
            after_any[need.entity] = max(after_any.get(need.entity, 0.0), level)
            if need.mode is LockMode.EXCLUSIVE:
                after_exclusive[need.entity] = max(after_exclusive.get(need.entity, 0.0), level)
        levels[index] = level
    return [round(level) for level in levels]


async def run_parallel(
    ops: Sequence[Op],
    *,
    vms: int,
    workers: int,
    backup_cap: int | None = 6,
    priorities: Sequence[int] | None = None,
) -> RunResult:
    """Run ``ops`` through one executor; return the host state and outcomes."""
    host = Host(vms)
    monitor = ConflictMonitor()

    def command(op: Op) -> Command[str]:
        async def body(ctx: CommandContext) -> str:
            monitor.start(op)
            try:
                return await host.run(op, ctx.label, ctx.set_progress)
            finally:
                monitor.end(op)

        priority = 0 if priorities is None else priorities[op.index]
        return Command(op.name, body, op.needs(), kind=KIND_OF[op.action], priority=priority)

    limits = {"backup": backup_cap} if backup_cap is not None else None
    began = anyio.current_time()
    async with CommandExecutor(workers=workers, kind_limits=limits, name="host") as executor:
        handles = [executor.submit(command(op)) for op in ops]
    makespan = anyio.current_time() - began
    outcomes = []
    for handle in handles:
        report = handle.report()
        assert report.state in (ExecutionState.SUCCEEDED, ExecutionState.FAILED), report
        outcomes.append(_outcome_of(report.error, None if report.error else await handle.result()))
    return RunResult(
        host.state(),
        tuple(outcomes),
        makespan,
        tuple(monitor.violations),
        monitor.peak,
        executor.summary(),
    )


async def run_sequential(ops: Iterable[Op], *, vms: int) -> RunResult:
    """The reference: the same commands one at a time, in submission order,
    with no executor and no entity locks."""
    host = Host(vms)
    began = anyio.current_time()
    outcomes = []
    for op in ops:
        try:
            value = await host.run(op, op.name, lambda _progress: None)
        except NoBackupError as error:
            outcomes.append(_outcome_of(error, None))
        else:
            outcomes.append(_outcome_of(None, value))
    return RunResult(host.state(), tuple(outcomes), anyio.current_time() - began, (), 1)


def run_virtual(main: Callable[[], Awaitable[RunResult]]) -> RunResult:
    """Run ``main`` on trio with a fresh virtual clock."""
    return anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )


def lower_bound(
    ops: Sequence[Op], outcomes: Sequence[Outcome], workers: int, backup_cap: int | None
) -> tuple[float, str]:
    """A makespan no schedule with the same results can beat, and what sets it.

    Counts the work of the commands that succeeded in the sequential run
    (the others take no time) and takes the largest of: the total /
    ``workers``; the backups' total / ``backup_cap``; and the critical path:
    the longest chain of commands each of which conflicts with the one
    before it, and so must run after it to give the sequential run's result.
    """
    work = [
        op.duration if outcome[0] == "ok" else 0.0
        for op, outcome in zip(ops, outcomes, strict=True)
    ]
    bounds = {"work / workers": sum(work) / workers}
    if backup_cap is not None:
        backups = sum(w for op, w in zip(ops, work, strict=True) if op.action == TAKE)
        bounds["backups / cap"] = backups / backup_cap
    # Per entity: when its last exclusive user ends, and its latest shared
    # user since then.
    exclusive_end: dict[Entity, float] = {}
    shared_end: dict[Entity, float] = {}
    path = 0.0
    for op, duration in zip(ops, work, strict=True):
        start = 0.0
        for need in op.needs():
            start = max(start, exclusive_end.get(need.entity, 0.0))
            if need.mode is LockMode.EXCLUSIVE:
                start = max(start, shared_end.get(need.entity, 0.0))
        end = start + duration
        for need in op.needs():
            if need.mode is LockMode.EXCLUSIVE:
                exclusive_end[need.entity] = end
                shared_end.pop(need.entity, None)
            else:
                shared_end[need.entity] = max(shared_end.get(need.entity, 0.0), end)
        path = max(path, end)
    bounds["critical path"] = path
    what = max(bounds, key=bounds.__getitem__)
    return bounds[what], what


# -- the report ---------------------------------------------------------------------


def clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def kind_table(summary: ExecutorSummary) -> list[str]:
    lines = [f"  {'kind':<9} {'commands':>8} {'failed':>6} {'queued mean/max':>17} {'ran mean':>9}"]
    for kind in sorted({report.kind for report in summary.reports}):
        reports = [report for report in summary.reports if report.kind == kind]
        queued = [report.queued_for or 0.0 for report in reports]
        ran = [report.ran_for for report in reports if report.ran_for is not None]
        failed = sum(report.state is ExecutionState.FAILED for report in reports)
        mean_ran = sum(ran) / len(ran) if ran else 0.0
        lines.append(
            f"  {kind:<9} {len(reports):>8} {failed:>6} "
            f"{clock(sum(queued) / len(queued)):>8}/{clock(max(queued)):>8} {clock(mean_ran):>9}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vms", type=int, default=40)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--backup-cap", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--critical-first",
        action="store_true",
        help="priority = critical path to the end (longest chains of conflicting work first)",
    )
    args = parser.parse_args(argv)
    if min(args.vms, args.commands, args.workers, args.backup_cap) < 1:
        parser.error("--vms, --commands, --workers and --backup-cap must be >= 1")

    ops = make_workload(vms=args.vms, commands=args.commands, seed=args.seed)
    wall = time.perf_counter()
    parallel = run_virtual(
        lambda: run_parallel(
            ops,
            vms=args.vms,
            workers=args.workers,
            backup_cap=args.backup_cap,
            priorities=critical_first(ops) if args.critical_first else None,
        )
    )
    wall = time.perf_counter() - wall
    sequential = run_virtual(lambda: run_sequential(ops, vms=args.vms))
    assert parallel.summary is not None

    counts = {action: sum(op.action == action for op in ops) for action in WEIGHTS}
    same = parallel.state == sequential.state and parallel.outcomes == sequential.outcomes
    print(
        f"parallel_backups: {args.vms} VMs, {len(ops)} commands "
        f"({', '.join(f'{n} {a}' for a, n in counts.items())}), seed {args.seed}"
    )
    print(
        f"executor: {args.workers} workers, at most {args.backup_cap} backups at once, "
        f"{'critical path first' if args.critical_first else 'equal priorities'}; "
        f"peak {parallel.peak} commands running together"
    )
    print(*kind_table(parallel.summary), sep="\n")
    print(
        f"virtual makespan: parallel {clock(parallel.makespan)}, sequential "
        f"{clock(sequential.makespan)}: speedup {sequential.makespan / parallel.makespan:.2f}x "
        f"with {args.workers} workers (ideal: sequential / workers = "
        f"{clock(sequential.makespan / args.workers)})"
    )
    bound, what = lower_bound(ops, sequential.outcomes, args.workers, args.backup_cap)
    print(
        f"lower bound for any schedule: {clock(bound)} ({what}); "
        f"the parallel run is {parallel.makespan / bound:.3f}x of it"
    )
    print(f"wall time of the parallel run: {wall:.2f} s")
    print(f"conflicting commands that overlapped: {len(parallel.violations)}")
    for violation in parallel.violations:
        print(f"  {violation}")
    print(f"result equals the sequential run's (state and every command's outcome): {same}")
    print(parallel.summary.format())
    return 0 if same and not parallel.violations else 1


if __name__ == "__main__":
    sys.exit(main())
