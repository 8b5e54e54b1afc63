"""Cost of admission under a long queue, on trio and asyncio, as ratios in one run.

1. A QUERY job (begin, monitor, one no-op command, end) inside an open
   interruptible section, with 10,000 MODIFY waiters parked behind the async
   job, against the same with no parked waiter. The one admission rule looks
   only at the heads of the open lanes, so the ratio should stay near 1.0
   (aim: <= 1.2x).
2. Cancelling N queued waiters, against cancelling N bare tasks that wait on
   an ``anyio.Event`` (the floor: the event loop's own cost of cancelling a
   task), for N = 1,000, 10,000 and 30,000. Removal is O(1), so the ratio
   stays flat as N grows.

Rounds are interleaved (A, B, A, B, ...) and every figure is printed as
median (min-max) over the rounds.

Run: ``python bench/bench_admission.py`` (``--quick`` for a short run).
Instructions instead of seconds (repeatable on a loaded machine): the
difference between ``valgrind --tool=callgrind python bench/bench_admission.py
--once P 3000 B`` and ``... --once P 1000 B``, divided by 2,000, is the
instructions per job with P parked waiters on backend B, set-up cancelled out.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
from _spread import spread

import jobctl
from jobctl import AsyncJob, Job
from jobctl.testing import ScriptedMonitor


async def query_cost(parked: int, n: int) -> float:
    """Seconds per QUERY job inside a section with ``parked`` parked waiters."""
    dom = jobctl.Domain("vm", monitor=ScriptedMonitor(), wait_timeout=None)
    ready, done = anyio.Event(), anyio.Event()
    result = 0.0

    async def migration() -> None:
        async with dom.async_job(AsyncJob.MIGRATION_OUT, allowed={Job.QUERY}) as ajob:
            async with ajob.interruptible():
                ready.set()
                await done.wait()

    async def modify() -> None:
        async with dom.job(Job.MODIFY):
            pass

    async def queries() -> None:
        nonlocal result
        start = time.perf_counter()
        for _ in range(n):
            async with dom.job(Job.QUERY) as job, job.monitor() as mon:
                await mon.execute("noop")
        result = (time.perf_counter() - start) / n

    async with anyio.create_task_group() as tg:
        tg.start_soon(migration)
        await ready.wait()
        for _ in range(parked):
            tg.start_soon(modify)
        await anyio.wait_all_tasks_blocked()
        assert len(dom.info().waiters) == parked
        # Wait for the queries on an event: anyio's wait_all_tasks_blocked
        # scans every task on asyncio, so polling it here would charge the
        # harness's own O(parked) scan to the jobs being measured.
        finished = anyio.Event()

        async def measured() -> None:
            await queries()
            finished.set()

        tg.start_soon(measured)
        await finished.wait()
        tg.cancel_scope.cancel()
    return result


async def cancel_cost(n: int, *, domain: bool) -> float:
    """Seconds to cancel ``n`` queued waiters (or ``n`` bare event waiters)."""
    dom = jobctl.Domain("vm", wait_timeout=None)
    event = anyio.Event()
    holder_ready = anyio.Event()

    async def holder() -> None:
        async with dom.job(Job.MODIFY):
            holder_ready.set()
            await anyio.sleep_forever()

    async def waiter() -> None:
        if domain:
            async with dom.job(Job.MODIFY):
                pass
        else:
            await event.wait()

    async with anyio.create_task_group() as outer:
        outer.start_soon(holder)
        await holder_ready.wait()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            start = time.perf_counter()
            tg.cancel_scope.cancel()
        elapsed = time.perf_counter() - start
        outer.cancel_scope.cancel()
    return elapsed


async def measure(n: int, rounds: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    ratios: list[float] = []
    with_parked: list[float] = []
    for _ in range(rounds):
        none = await query_cost(0, n)
        many = await query_cost(10_000, n)
        with_parked.append(many)
        ratios.append(many / none)
    cancels: dict[int, list[float]] = {size: [] for size in sizes}
    per_item: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            ours = await cancel_cost(size, domain=True)
            floor = await cancel_cost(size, domain=False)
            cancels[size].append(ours / floor)
            per_item[size].append(ours / size)
    return {"ratios": ratios, "parked": with_parked, "cancels": cancels, "per_item": per_item}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--once",
        nargs=3,
        metavar=("PARKED", "JOBS", "BACKEND"),
        help="run JOBS QUERY jobs beside PARKED parked waiters once and print nothing: "
        "for counting instructions under valgrind --tool=callgrind",
    )
    args = parser.parse_args()
    if args.once:
        parked, jobs, backend = int(args.once[0]), int(args.once[1]), args.once[2]
        anyio.run(query_cost, parked, jobs, backend=backend)
        return
    n, rounds = (500, 3) if args.quick else (5_000, 7)
    sizes = (1_000, 5_000) if args.quick else (1_000, 10_000, 30_000)
    print(f"jobctl admission bench: {rounds} interleaved rounds; median (min-max)\n")
    for backend in ("trio", "asyncio"):
        r = anyio.run(measure, n, rounds, sizes, backend=backend)
        us = [v * 1e6 for v in r["parked"]]
        print(
            f"[{backend}] QUERY job with 10,000 parked waiters / with none:"
            f" {spread(r['ratios'], digits=3, unit='x')}"
        )
        print(f"[{backend}]   (cost with 10,000 parked: {spread(us)} us per job)")
        for size in sizes:
            per = [v * 1e6 for v in r["per_item"][size]]
            print(
                f"[{backend}] cancel {size:>6} waiters / {size} bare event waiters: "
                f"{spread(r['cancels'][size])}   ({spread(per)} us each)"
            )
        print()


if __name__ == "__main__":
    main()
