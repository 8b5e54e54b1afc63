"""Cost of the job layer: an uncontended QUERY job that enters the monitor and
runs one no-op command, against a bare ``anyio.Lock`` acquire/release around
the same no-op, in one run, on trio and asyncio. Then the job's cost per
domain count (10 to 10,000 domains, jobs spread round-robin), which should
stay flat because domains share no state. The no-op is a command to a
``jobctl.testing.ScriptedMonitor`` that answers at once (one checkpoint, as
any real await would).

Run: ``python bench/bench_core.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from _spread import ratios, spread

import jobctl
from jobctl import Job
from jobctl.testing import ScriptedMonitor


async def _time_loop(n: int, body: Callable[[int], Awaitable[None]]) -> float:
    start = time.perf_counter()
    for i in range(n):
        await body(i)
    return (time.perf_counter() - start) / n


async def bare_lock(n: int) -> float:
    lock = anyio.Lock()
    mon = ScriptedMonitor()

    async def body(i: int) -> None:
        async with lock:
            await mon.execute("noop")

    return await _time_loop(n, body)


async def job_layer(n: int, domains: int = 1, traced: bool = False) -> float:
    mon = ScriptedMonitor()
    hub = jobctl.TraceHub()
    if traced:
        hub.subscribe(lambda event: None)
    doms = [jobctl.Domain(f"vm{i}", monitor=mon, trace=hub) for i in range(domains)]

    async def body(i: int) -> None:
        async with doms[i % domains].job(Job.QUERY) as job, job.monitor() as m:
            await m.execute("noop")

    return await _time_loop(n, body)


async def measure(n: int, rounds: int) -> dict[str, Any]:
    # Interleave rounds so that machine noise hits both sides alike; keep every round.
    base: list[float] = []
    layer: list[float] = []
    traced: list[float] = []
    for _ in range(rounds):
        base.append(await bare_lock(n))
        layer.append(await job_layer(n))
        traced.append(await job_layer(n, traced=True))
    counts = (10, 100, 1_000, 10_000)
    scaling: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(rounds):
        for count in counts:
            scaling[count].append(await job_layer(max(n, count), count))
    return {"base": base, "layer": layer, "traced": traced, "scaling": scaling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (7)")
    args = parser.parse_args()
    n, rounds = (2_000, 3) if args.quick else (20_000, 7)
    rounds = args.rounds or rounds
    print(
        f"jobctl core bench: {n} jobs per round, {rounds} interleaved rounds,"
        " median (min-max) over rounds; ratios are per round\n"
    )
    results = {}
    for backend in ("trio", "asyncio"):
        r = anyio.run(measure, n, rounds, backend=backend)
        results[backend] = r
        print(f"{backend}:")
        print(f"  bare lock + no-op              {spread(r['base'], scale=1e6, unit=' us')}")
        print(f"  QUERY job + monitor + no-op    {spread(r['layer'], scale=1e6, unit=' us')}")
        print(f"    ratio to the bare lock       {spread(ratios(r['layer'], r['base']), unit='x')}")
        print(f"  the same, a trace listener on  {spread(r['traced'], scale=1e6, unit=' us')}")
        print(
            f"    ratio to the bare lock       {spread(ratios(r['traced'], r['base']), unit='x')}"
        )
    print("\ncost per job by number of domains (jobs spread round-robin), median over rounds")
    print(f"{'backend':8} " + " ".join(f"{c:>10}" for c in (10, 100, 1_000, 10_000)) + "  max/min")
    for backend, r in results.items():
        costs = {c: statistics.median(v) for c, v in r["scaling"].items()}
        row = " ".join(f"{costs[c] * 1e6:>7.2f} us" for c in costs)
        print(f"{backend:8} {row}  {max(costs.values()) / min(costs.values()):.2f}x")


if __name__ == "__main__":
    main()
