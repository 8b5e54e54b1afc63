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
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

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
    # Interleave rounds so that machine noise hits both sides alike; keep the best.
    base, layer, traced = float("inf"), float("inf"), float("inf")
    for _ in range(rounds):
        base = min(base, await bare_lock(n))
        layer = min(layer, await job_layer(n))
        traced = min(traced, await job_layer(n, traced=True))
    scaling = {}
    for count in (10, 100, 1_000, 10_000):
        scaling[count] = min([await job_layer(max(n, count), count) for _ in range(rounds)])
    return {"base": base, "layer": layer, "traced": traced, "scaling": scaling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    n, rounds = (2_000, 2) if args.quick else (20_000, 5)
    print(f"jobctl core bench: {n} jobs per round, best of {rounds} rounds\n")
    print(
        f"{'backend':8} {'bare lock+noop':>16} {'QUERY job+monitor+noop':>24} {'ratio':>7}"
        f" {'with a trace listener':>22}"
    )
    results = {}
    for backend in ("trio", "asyncio"):
        r = anyio.run(measure, n, rounds, backend=backend)
        results[backend] = r
        print(
            f"{backend:8} {r['base'] * 1e6:>13.2f} us {r['layer'] * 1e6:>21.2f} us "
            f"{r['layer'] / r['base']:>6.2f}x {r['traced'] * 1e6:>13.2f} us "
            f"({r['traced'] / r['base']:.2f}x)"
        )
    print("\ncost per job by number of domains (jobs spread round-robin)")
    print(f"{'backend':8} " + " ".join(f"{c:>10}" for c in (10, 100, 1_000, 10_000)) + "  max/min")
    for backend, r in results.items():
        costs = r["scaling"]
        row = " ".join(f"{costs[c] * 1e6:>7.2f} us" for c in costs)
        print(f"{backend:8} {row}  {max(costs.values()) / min(costs.values()):.2f}x")


if __name__ == "__main__":
    main()
