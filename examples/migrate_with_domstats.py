"""Migrations with domstats in a tight loop: what ``jobctl demo`` runs, written out.

A VM with a disk migrates back and forth between two hosts (simulated QEMU,
or real QEMU with ``--qemu``) while another task gathers its domstats as fast
as it can. Each migration is a MIGRATION_OUT job on the source and a
MIGRATION_IN job on the destination; every domstats is a QUERY job, which
begins only inside the migration's interruptible sections. At the end: how
many queries got through, how long they took, and whether the monitor ever
saw two commands at once (the simulator's detector, and the trace).

Run: ``.venv/bin/python examples/migrate_with_domstats.py [--migrations N] [--qemu]``
"""

from __future__ import annotations

import argparse
import sys

import anyio

from jobctl import Domain, TraceHub
from jobctl.qemu import (
    VM,
    MachineSpec,
    MigrationOptions,
    destroy,
    domstats,
    migrate,
    start,
)
from jobctl.testing import (
    REAL_TIME_INSTANT,
    InvariantChecker,
    open_host_pair,
)


async def main(migrations: int, qemu: bool) -> int:
    trace = TraceHub()
    # Checks every isolation invariant on the trace (real time: "at once" within 0.5 s).
    checker = InvariantChecker(instant=REAL_TIME_INSTANT)
    latencies: list[float] = []
    with trace.subscribe(checker.feed):
        async with open_host_pair(qemu=qemu) as pair:
            a, b = pair.hosts
            # The same VM as each host sees it; it starts on host a.
            here = VM(Domain("vm1@a", trace=trace), a)
            there = VM(Domain("vm1@b", trace=trace), b)
            disk = await a.create_disk("vm1", 64)
            await start(here, MachineSpec(ram_mib=64, disk=disk))
            done = anyio.Event()

            async def stats_loop() -> None:
                while not done.is_set():
                    began = anyio.current_time()
                    stats = await domstats(here.domain)
                    latencies.append(anyio.current_time() - began)
                    if stats.state == "shutoff":  # the VM just left; ask where it went
                        await anyio.sleep(0.001)

            options = MigrationOptions(bandwidth=1 << 30)
            async with anyio.create_task_group() as tg:
                tg.start_soon(stats_loop)
                for number in range(1, migrations + 1):
                    result = await migrate(here, there, options)
                    here, there = there, here
                    print(
                        f"migration {number}: {result.source} -> {result.destination} in "
                        f"{result.duration * 1000:.0f} ms (downtime {result.progress.downtime} ms)"
                    )
                done.set()
            await destroy(here)
            simulated = None if pair.simulator is None else pair.simulator.detector.violation_count
    checker.finish()
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
    print(f"domstats: {len(latencies)} calls, p99 {p99 * 1000:.2f} ms")
    print(f"monitor violations (simulator's detector): {simulated}")
    print(f"invariant violations (trace): {len(checker.violations)}")
    for violation in checker.violations[:5]:
        print(violation.describe())
    return 1 if checker.violations or simulated else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--migrations", type=int, default=100, metavar="N")
    parser.add_argument("--qemu", action="store_true", help="real qemu-system-x86_64")
    args = parser.parse_args()
    if args.migrations < 1:
        parser.error(f"--migrations must be at least 1, not {args.migrations}")
    sys.exit(anyio.run(main, args.migrations, args.qemu, backend="trio"))
