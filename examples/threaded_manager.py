"""A threaded manager on jobctl: plain threads migrate a VM back and forth
between two hosts while other threads poll its domstats, all through
``jobctl.blocking`` (one event loop thread shared by every caller thread).

Over the simulator by default, over real QEMU (``qemu-system-x86_64``) with
``--qemu``. The trace is checked for every isolation invariant; the exit
status is 1 if any was broken (or, simulated, if two commands overlapped).

Run: ``.venv/bin/python examples/threaded_manager.py [--migrations N]
[--threads T] [--backend trio|asyncio] [--qemu]``
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from jobctl import Domain, TraceHub
from jobctl.blocking import BlockingVM, EventLoopThread
from jobctl.qemu import VM, Host, MachineSpec, MigrationOptions
from jobctl.testing import REAL_TIME_INSTANT, InvariantChecker, open_host_pair


def main(migrations: int, threads: int, backend: str, qemu: bool) -> int:
    trace = TraceHub()
    # Checks every isolation invariant on the trace (real time: "at once" within 0.5 s).
    checker = InvariantChecker(instant=REAL_TIME_INSTANT)
    done = threading.Event()
    polls = [0] * threads
    with (
        trace.subscribe(checker.feed),
        EventLoopThread(backend) as loop,
        loop.enter(open_host_pair(qemu=qemu)) as pair,
    ):
        a, b = pair.hosts
        # The same VM as each host sees it; it starts on host a.
        here = BlockingVM(loop, loop.run_sync(_vm, "vm1@a", a, trace))
        there = BlockingVM(loop, loop.run_sync(_vm, "vm1@b", b, trace))
        here.start(MachineSpec(ram_mib=64, disk=loop.call(a.create_disk, "vm1", 64)))
        vms = (here, there)

        def poller(number: int) -> None:
            """A thread that asks both hosts' views of the VM for its stats
            (a QUERY job each; "shutoff" where the VM does not run)."""
            while not done.is_set():
                for vm in vms:
                    vm.domstats(owner=f"poller{number}")
                    polls[number] += 1

        with ThreadPoolExecutor(threads + 1) as pool:
            futures = [pool.submit(poller, n) for n in range(threads)]
            try:
                options = MigrationOptions(bandwidth=1 << 30)
                for number in range(1, migrations + 1):
                    result = pool.submit(here.migrate, there, options).result()
                    here, there = there, here
                    print(
                        f"migration {number}: {result.source} -> {result.destination} in "
                        f"{result.duration * 1000:.0f} ms"
                    )
            finally:
                done.set()
                for future in futures:
                    future.result()
        here.destroy()
        simulated = None if pair.simulator is None else pair.simulator.detector.violation_count
    checker.finish()
    print(f"queries from {threads} threads: {sum(polls)}")
    print(f"monitor violations (simulator's detector): {simulated}")
    print(f"invariant violations (trace): {len(checker.violations)}")
    for violation in checker.violations[:5]:
        print(violation.describe())
    return 1 if checker.violations or simulated else 0


def _vm(name: str, host: Host, trace: TraceHub) -> VM:
    return VM(Domain(name, trace=trace), host)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--migrations", type=int, default=10, metavar="N")
    parser.add_argument("--threads", type=int, default=8, metavar="T")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--qemu", action="store_true", help="real qemu-system-x86_64")
    args = parser.parse_args()
    if args.migrations < 1 or args.threads < 1:
        parser.error("--migrations and --threads must be at least 1")
    sys.exit(main(args.migrations, args.threads, args.backend, args.qemu))
