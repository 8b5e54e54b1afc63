"""Cost of the blocking facade (``jobctl.blocking``) per call, against the
async call made inside the loop, in one run, on trio and asyncio.

The work is one uncontended QUERY job that enters the monitor and runs one
no-op command on a ``jobctl.testing.ScriptedMonitor`` (answers at once), so
what is measured is the facade's own cost:

* ``async``: the job in the loop, timed in the loop (the baseline);
* ``one call``: the same job as ``BlockingDomain.execute("noop")`` from a
  plain thread, one round trip, as every ``BlockingVM`` flow is;
* ``bare round trip``: ``EventLoopThread.call`` of an empty coroutine,
  what crossing the thread boundary costs at all (printed for reference,
  not a ratio's base);
* ``  to the loop / back``: the bare round trip split at the moment the
  coroutine runs in the loop (medians of one round's calls): how long
  waking the loop's task takes, and how long the answer takes to wake
  the caller;
* ``anyio from_thread.run``: the same empty coroutine through anyio's own
  thread hand-off on the same loop (a task per call and a queue), the
  plumbing jobctl would use without its own (for reference);
* ``with job``: ``with bdom.job(QUERY) as job, job.monitor() as mon:
  mon.execute("noop")`` from a plain thread (five round trips: enter the
  job, enter the monitor, the command, leave the monitor, leave the job).

Rounds are interleaved (async, one call, with job, bare, anyio, split, again), each round times
``--calls`` calls; the median per call over the rounds is printed with the
spread (min-max), and each facade form's ratio and µs over the async call.

Each of that is done twice, in two placements of the two threads (the
caller and the loop's), one after the other: first as the OS places them
(on a machine of several CPUs, mostly on two: each hand-off then wakes a
thread on another CPU, which is what a cross-thread call costs there), then
both pinned to one CPU (``os.sched_setaffinity``), where a wake-up is a
switch on the same CPU and what is left is the facade's own work.

Run: ``python bench/bench_blocking.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Final

import anyio.from_thread
import anyio.lowlevel
from _spread import ratios, spread
from anyio.lowlevel import EventLoopToken

import jobctl
from jobctl import Job
from jobctl.blocking import BlockingDomain, EventLoopThread
from jobctl.testing import ScriptedMonitor


async def query(domain: jobctl.Domain) -> None:
    async with domain.job(Job.QUERY) as job, job.monitor() as mon:
        await mon.execute("noop")


async def async_round(domain: jobctl.Domain, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await query(domain)
    return (time.perf_counter() - start) / calls


def one_call_round(bdom: BlockingDomain, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        bdom.execute("noop")
    return (time.perf_counter() - start) / calls


async def nothing() -> None:
    pass


async def current_token() -> EventLoopToken:
    return anyio.lowlevel.current_token()


def bare_round(loop: EventLoopThread, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        loop.call(nothing)
    return (time.perf_counter() - start) / calls


async def stamp() -> float:
    return time.perf_counter()


def split_round(loop: EventLoopThread, calls: int) -> tuple[float, float]:
    """Median (caller to loop, loop to caller) of one round's bare calls."""
    there: list[float] = []
    back: list[float] = []
    for _ in range(calls):
        sent = time.perf_counter()
        ran = loop.call(stamp)
        there.append(ran - sent)
        back.append(time.perf_counter() - ran)
    return statistics.median(there), statistics.median(back)


def anyio_round(token: EventLoopToken, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        anyio.from_thread.run(nothing, token=token)
    return (time.perf_counter() - start) / calls


def with_job_round(bdom: BlockingDomain, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        with bdom.job(Job.QUERY) as job, job.monitor() as mon:
            mon.execute("noop")
    return (time.perf_counter() - start) / calls


@dataclass
class Series:
    """One placement's samples (seconds per call, one per round)."""

    base: list[float] = field(default_factory=list)
    one: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    portal: list[float] = field(default_factory=list)
    there: list[float] = field(default_factory=list)
    back: list[float] = field(default_factory=list)


#: Where the two threads (the caller, the loop's) may run: every CPU, as
#: the OS places them, and one CPU for both (their wake-ups stay on it).
PLACEMENTS: Final = ("as the OS places them", "both on CPU 0")


def place(loop_thread: int, cpus: set[int]) -> None:
    """Let the calling thread and the loop's thread run only on ``cpus``."""
    os.sched_setaffinity(0, cpus)  # 0: the calling thread
    os.sched_setaffinity(loop_thread, cpus)


def measure(
    loop: EventLoopThread, bdom: BlockingDomain, token: EventLoopToken, calls: int, into: Series
) -> None:
    """One round of every form, into ``into``."""
    domain = bdom.domain
    into.base.append(loop.call(async_round, domain, calls))
    into.one.append(one_call_round(bdom, calls))
    into.full.append(with_job_round(bdom, calls))
    into.bare.append(bare_round(loop, calls))
    into.portal.append(anyio_round(token, calls))
    to_loop, to_caller = split_round(loop, calls)
    into.there.append(to_loop)
    into.back.append(to_caller)


def report(placement: str, series: Series) -> None:
    print(f" threads {placement}:")
    print(f"  async (in the loop)   {spread(series.base, scale=1e6, digits=1, unit=' µs')}")
    print(f"  bare round trip       {spread(series.bare, scale=1e6, digits=1, unit=' µs')}")
    print(
        f"    to the loop / back  {spread(series.there, scale=1e6, digits=1, unit=' µs')}"
        f" / {spread(series.back, scale=1e6, digits=1, unit=' µs')}"
    )
    print(f"  anyio from_thread.run {spread(series.portal, scale=1e6, digits=1, unit=' µs')}")
    for name, samples in (("one call", series.one), ("with job+monitor", series.full)):
        over = [a - b for a, b in zip(samples, series.base, strict=True)]
        print(
            f"  {name:<20}  {spread(samples, scale=1e6, digits=1, unit=' µs')}  ratio"
            f" {spread(ratios(samples, series.base), digits=1, unit='x')},"
            f" over async +{spread(over, scale=1e6, digits=1, unit=' µs')} (per round)"
        )


def run(backend: str, calls: int, rounds: int) -> None:
    everywhere = os.sched_getaffinity(0)
    try:
        with EventLoopThread(backend) as loop:
            domain = jobctl.Domain("vm", monitor=ScriptedMonitor(), trace=jobctl.TraceHub())
            bdom = BlockingDomain(loop, domain)
            token = loop.call(current_token)
            loop_thread = loop.call(native_id)
            series = {placement: Series() for placement in PLACEMENTS}
            # One placement after the other, the OS's first: threads pinned
            # together stay together for a while after they are let go.
            for placement, cpus in zip(PLACEMENTS, (everywhere, {min(everywhere)}), strict=True):
                place(loop_thread, cpus)
                for _ in range(rounds):
                    measure(loop, bdom, token, calls, series[placement])
            place(loop_thread, everywhere)
    finally:
        os.sched_setaffinity(0, everywhere)
    print(f"{backend}: {rounds} interleaved rounds of {calls} calls in each placement")
    for placement in PLACEMENTS:
        report(placement, series[placement])


async def native_id() -> int:
    return threading.get_native_id()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--calls", type=int, default=None, help="calls per round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args()
    calls = args.calls or (200 if args.quick else 2000)
    rounds = args.rounds or (3 if args.quick else 9)
    for backend in ("trio", "asyncio"):
        run(backend, calls, rounds)


if __name__ == "__main__":
    main()
