"""Makespan and overhead of jobctl.host.CommandExecutor, for 1-16 workers.

Each row runs one workload on trio's ``MockClock`` (work is ``anyio.sleep``
in virtual time), so two things are measured in the same run:

* **makespan** (virtual seconds) against the ideal, total work / workers,
  and against a lower bound no schedule can beat when commands conflict;
* **overhead** (real wall time per command) against a baseline that runs
  the same sleeps on a bare task group with ``anyio.CapacityLimiter``
  (no entities, no queue, no reports): the ratio is what the executor
  costs on top of the event loop.

Workloads:

* ``independent``: 512 commands on 512 different VMs (no conflicts),
  durations 1-10 minutes, submitted in random order;
* ``independent LPT``: the same with ``priority`` = duration, so the
  longest commands start first (the classic longest-processing-time rule);
* ``backups mix``: examples/parallel_backups.py's 200 take-backup,
  delete-backup and restore commands on 40 VMs (conflicts on VMs and
  chains; no kind cap here, so the ideal is comparable);
* ``backups mix HLF``: the same with ``priority`` = the command's critical
  path to the end (highest level first); it keeps conflicting commands in
  submission order, so the results stay those of the sequential run;
* ``scale``: 4096 independent commands, to show the per-command cost as the
  queue grows.

Run: ``python bench/bench_executor.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType

import anyio
import attrs
from _spread import ratios, spread
from trio.testing import MockClock

from jobctl.host import Command, CommandContext, CommandExecutor, Entity, Need

WORKERS = (1, 2, 4, 8, 16)


@attrs.frozen
class Work:
    """One command of a workload: a name, its needs, how long it works."""

    name: str
    needs: tuple[Need, ...]
    duration: float
    priority: int = 0


@attrs.frozen
class Row:
    workload: str
    workers: int
    commands: int
    makespan: float
    ideal: float
    bound: float
    #: Real wall seconds of each repetition, executor and baseline interleaved.
    wall_executor: list[float]
    wall_baseline: list[float]
    #: Whether every repetition gave the same makespan (virtual time: it must).
    same_makespan: bool


def _load_example() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "examples" / "parallel_backups.py"
    spec = importlib.util.spec_from_file_location("parallel_backups_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def independent(count: int, seed: int, *, longest_first: bool = False) -> list[Work]:
    rng = random.Random(seed)
    works = []
    for n in range(count):
        duration = round(rng.uniform(60, 600), 1)
        priority = round(duration) if longest_first else 0
        works.append(
            Work(f"backup vm-{n}", (Entity("vm", str(n)).exclusive(),), duration, priority)
        )
    return works


def backups_mix(
    example: ModuleType, *, critical_first: bool = False
) -> tuple[list[Work], Callable[[int], float]]:
    """The example's workload, as plain work items (failing commands take no
    time, as in the example), and its lower bound for a worker count."""
    ops = example.make_workload(vms=40, commands=200, seed=1)
    sequential = example.run_virtual(lambda: example.run_sequential(ops, vms=40))
    priorities = example.critical_first(ops) if critical_first else [0] * len(ops)
    works = [
        Work(op.name, op.needs(), op.duration if outcome[0] == "ok" else 0.0, priority)
        for op, outcome, priority in zip(ops, sequential.outcomes, priorities, strict=True)
    ]

    def bound(workers: int) -> float:
        value, _ = example.lower_bound(ops, sequential.outcomes, workers, None)
        return float(value)

    return works, bound


def _virtual(main: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """(virtual result, wall seconds) of running ``main`` on a MockClock."""
    began = time.perf_counter()
    result = anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )
    return result, time.perf_counter() - began


async def run_executor(works: Sequence[Work], workers: int) -> float:
    def command(work: Work) -> Command[None]:
        async def body(ctx: CommandContext) -> None:
            await anyio.sleep(work.duration)

        return Command(work.name, body, work.needs, priority=work.priority)

    began = anyio.current_time()
    async with CommandExecutor(workers=workers, history=1) as executor:
        for work in works:
            executor.submit(command(work))
    summary = executor.summary()
    assert summary.ok, summary.format()
    return anyio.current_time() - began


async def run_baseline(works: Sequence[Work], workers: int) -> float:
    limiter = anyio.CapacityLimiter(workers)

    async def body(work: Work) -> None:
        async with limiter:
            await anyio.sleep(work.duration)

    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for work in works:
            tg.start_soon(body, work)
    return anyio.current_time() - began


def measure(
    name: str, works: Sequence[Work], workers: int, repeat: int, bound: float | None = None
) -> Row:
    executor_walls: list[float] = []
    baseline_walls: list[float] = []
    makespans: list[float] = []
    for r in range(repeat):
        # Alternate which side goes first, so both see the same machine.
        for side in ("executor", "baseline") if r % 2 == 0 else ("baseline", "executor"):
            if side == "executor":
                makespan, wall = _virtual(lambda: run_executor(works, workers))
                executor_walls.append(wall)
                makespans.append(makespan)
            else:
                _, wall = _virtual(lambda: run_baseline(works, workers))
                baseline_walls.append(wall)
    ideal = sum(work.duration for work in works) / workers
    return Row(
        name,
        workers,
        len(works),
        makespans[0],
        ideal,
        ideal if bound is None else bound,
        executor_walls,
        baseline_walls,
        len(set(makespans)) == 1,
    )


def table(rows: Sequence[Row]) -> str:
    header = (
        f"{'workload':<16} {'workers':>7} {'cmds':>5} {'makespan':>9} {'ideal':>9} "
        f"{'/ideal':>7} {'bound':>9} {'/bound':>7} {'us/cmd':>7} {'base us':>7} "
        f"{'overhead, median (min-max)':>28}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        per_exec = 1e6 * statistics.median(row.wall_executor) / row.commands
        per_base = 1e6 * statistics.median(row.wall_baseline) / row.commands
        overhead = spread(ratios(row.wall_executor, row.wall_baseline), unit="x")
        lines.append(
            f"{row.workload:<16} {row.workers:>7} {row.commands:>5} {row.makespan:>9.0f} "
            f"{row.ideal:>9.0f} {row.makespan / row.ideal:>7.3f} {row.bound:>9.0f} "
            f"{row.makespan / row.bound:>7.3f} {per_exec:>7.0f} {per_base:>7.0f} "
            f"{overhead:>28}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--repeat", type=int, default=5, help="repetitions, executor and baseline interleaved"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    example = _load_example()
    measure("warm-up", independent(256, seed=3), 4, 1)
    mix, mix_bound = backups_mix(example)
    rows: list[Row] = []
    plain = independent(512, seed=1)
    lpt = independent(512, seed=1, longest_first=True)
    for workers in WORKERS:
        rows.append(measure("independent", plain, workers, args.repeat))
    for workers in WORKERS:
        rows.append(measure("independent LPT", lpt, workers, args.repeat))
    for workers in WORKERS:
        rows.append(measure("backups mix", mix, workers, args.repeat, mix_bound(workers)))
    mix_hlf, _ = backups_mix(example, critical_first=True)
    for workers in WORKERS:
        rows.append(measure("backups mix HLF", mix_hlf, workers, args.repeat, mix_bound(workers)))
    rows.append(measure("scale", independent(4096, seed=2), 16, args.repeat))

    print(__doc__.splitlines()[0] if __doc__ else "")
    print(
        "makespan, ideal (= total work / workers) and bound in virtual seconds; bound = "
        "max(ideal, critical path of conflicting commands kept in submission order);"
    )
    print(
        "us/cmd = real wall microseconds per command (median of "
        f"{args.repeat}); base = bare task group + CapacityLimiter, same sleeps;"
        " overhead = executor / base, per repetition\n"
    )
    print(table(rows))
    worst = max(row.makespan / row.ideal for row in rows if row.workload != "backups mix")
    print(f"\nworst makespan / ideal without conflicts: {worst:.3f} (target <= 1.05)")
    same = all(row.same_makespan for row in rows)
    print(
        f"makespans over the {args.repeat} repetitions: "
        + ("identical in every row (virtual time)" if same else "DIFFERED (a bug: virtual time)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
