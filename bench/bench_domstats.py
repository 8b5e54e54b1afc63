"""domstats latency during migrations on real QEMU: jobctl against what QEMU allows.

A VM with 512 MiB of random RAM migrates back and forth between two QEMUs at
a bandwidth that makes each migration last a few seconds. During each
migration two clients query the source QEMU in tight loops:

* jobctl: ``domstats`` on the VM's domain (a QUERY job: it waits for the
  migration's interruptible sections, and takes its turn at the monitor);
* raw: a plain QMP client on a second monitor of the same QEMU, sending the
  same three commands (``query-status``, ``query-blockstats``,
  ``query-migrate``), with nothing in its way but QEMU itself.

The table shows both clients' latencies, the ratio jobctl/raw, and QEMU's own
switchover downtime (every command stalls during it). The aim: jobctl's p99
within 1.2x of the raw client's, its maximum bounded by the stall.

Run: ``.venv/bin/python bench/bench_domstats.py [--migrations N] [--ram MiB]
[--bandwidth MiB/s]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

import anyio

from jobctl import Domain
from jobctl.qemu import (
    VM,
    Machine,
    MachineSpec,
    MigrationOptions,
    destroy,
    domstats,
    migrate,
    open_qemu_host,
    start,
)
from jobctl.qemu._latency import LatencySummary
from jobctl.qmp import QMPError, open_qmp_unix

MiB = 1 << 20
RAW_COMMANDS = ("query-status", "query-blockstats", "query-migrate")


async def jobctl_loop(vm: VM, samples: list[float], done: anyio.Event) -> None:
    while not done.is_set():
        began = anyio.current_time()
        stats = await domstats(vm.domain)
        if stats.state == "shutoff":  # the migration is over: the VM left
            return
        samples.append(anyio.current_time() - began)


async def raw_loop(machine: Machine, samples: list[float], done: anyio.Event) -> None:
    try:
        async with open_qmp_unix(machine.extra_monitors[0], timeout=10) as qmp:
            while not done.is_set():
                began = anyio.current_time()
                for command in RAW_COMMANDS:
                    await qmp.execute(command)
                samples.append(anyio.current_time() - began)
    except QMPError:  # the source QEMU quit at the end of the migration
        pass


async def bench(migrations: int, ram_mib: int, bandwidth_mib: int) -> int:
    storage = tempfile.mkdtemp(prefix="jobctl-bench-")
    mine: list[float] = []
    raw: list[float] = []
    downtimes: list[int] = []
    durations: list[float] = []
    try:
        async with (
            open_qemu_host("a", storage=storage) as a,
            open_qemu_host("b", storage=storage) as b,
        ):
            disk = await a.create_disk("vm1", 64)
            spec = MachineSpec(ram_mib=ram_mib, disk=disk, extra_monitors=1)
            here, there = VM(Domain("vm1@a"), a), VM(Domain("vm1@b"), b)
            print(f"filling {ram_mib} MiB of RAM with random bytes...", file=sys.stderr)
            await start(here, spec)
            options = MigrationOptions(bandwidth=bandwidth_mib * MiB, poll_interval=0.5)
            for number in range(1, migrations + 1):
                source = here.running_machine()
                done = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(jobctl_loop, here, mine, done)
                    tg.start_soon(raw_loop, source, raw, done)
                    result = await migrate(here, there, options)
                    done.set()
                downtimes.append(result.progress.downtime or 0)
                durations.append(result.duration)
                print(
                    f"migration {number}: {result.duration:.2f} s, "
                    f"downtime {result.progress.downtime} ms",
                    file=sys.stderr,
                )
                here, there = there, here
            await destroy(here)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    ours, theirs = LatencySummary.of(mine), LatencySummary.of(raw)
    print()
    print(
        f"{migrations} migration(s) of {ram_mib} MiB of random RAM at {bandwidth_mib} MiB/s "
        f"(mean {sum(durations) / len(durations):.2f} s each), real QEMU"
    )
    print()
    print(f"{'client':<34} {'calls':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    rows = (("jobctl domstats (QUERY job)", ours), ("raw QMP, second monitor", theirs))
    for name, summary in rows:
        print(
            f"{name:<34} {summary.count:>7} {summary.p50 * 1000:>9.2f} "
            f"{summary.p99 * 1000:>9.2f} {summary.max * 1000:>9.2f}"
        )

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "n/a"

    print(
        f"{'ratio jobctl / raw':<34} {'':>7} {ratio(ours.p50, theirs.p50):>9} "
        f"{ratio(ours.p99, theirs.p99):>9} {ratio(ours.max, theirs.max):>9}"
    )
    print(f"{'QEMU switchover downtime (max)':<34} {'':>7} {'':>9} {'':>9} {max(downtimes):>9}")
    print()
    aim = ours.p99 <= 1.2 * theirs.p99
    print(f"aim p99 <= 1.2x raw: {'met' if aim else 'NOT met'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--migrations", type=int, default=4)
    parser.add_argument("--ram", type=int, default=512, metavar="MiB")
    parser.add_argument("--bandwidth", type=int, default=160, metavar="MiB/s")
    args = parser.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        print("bench_domstats: qemu-system-x86_64 is not installed", file=sys.stderr)
        return 2
    return anyio.run(bench, args.migrations, args.ram, args.bandwidth, backend="trio")


if __name__ == "__main__":
    sys.exit(main())
