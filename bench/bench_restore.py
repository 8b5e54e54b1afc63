"""Restore throughput against its bound, for fetch concurrency 1 to 32.

A simulated chunk store answers each fetch after exactly ``L`` seconds
(``anyio.sleep``, real time); the target blocks ``W`` seconds per write
(``time.sleep`` in the writer thread). So the bounds are known:

- fetch bound = concurrency x chunk / L
- write bound = chunk / W

and a restore can at best run at min(fetch bound, write bound). Each row
restores enough chunks to take about ``--seconds`` at that bound and prints
the measured throughput as a share of it (aim: 95% or more), the stage the
report says limited the run, and the speed-up over concurrency 1.

On a loaded machine the simulation itself runs slow (``time.sleep(W)`` and
``anyio.sleep(L)`` overshoot), so each row also shows the *effective* bound,
computed the same way from the run's own fetch p50 and the writer's measured
time per write: the share of that is the pipeline's own efficiency.

Run: ``python bench/bench_restore.py`` (``--quick`` for a short run,
``--backend trio|asyncio|both``).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import anyio
from _spread import spread

from jobctl.restore import MemoryTarget, RestoreReport, SimulatedChunkStore, restore_image

CONCURRENCIES = (1, 2, 4, 8, 16, 32)


def run_row(
    backend: str, image: bytes, chunk: int, latency: float, cost: float, concurrency: int
) -> tuple[RestoreReport, float]:
    source = SimulatedChunkStore(image, chunk, latency=latency)
    target = MemoryTarget(len(image), write_cost=cost)
    started = time.perf_counter()
    report = anyio.run(
        lambda: restore_image(source, target, concurrency=concurrency), backend=backend
    )
    elapsed = time.perf_counter() - started
    if bytes(target.data) != image:
        raise SystemExit(f"concurrency {concurrency}: the restored data differs from the image")
    return report, elapsed


def bench(
    backend: str, *, chunk: int, latency: float, cost: float, seconds: float, repeat: int
) -> None:
    write_bound = 1 / cost  # chunks per second
    rows = []
    shares: dict[int, list[float]] = {c: [] for c in CONCURRENCIES}
    most = max(math.ceil(seconds * min(c / latency, write_bound) / c) * c for c in CONCURRENCIES)
    pool = os.urandom(most * chunk)
    for concurrency in CONCURRENCIES:
        fetch_bound = concurrency / latency
        bound = min(fetch_bound, write_bound)
        count = math.ceil(seconds * bound / concurrency) * concurrency
        for r in range(repeat):
            report, elapsed = run_row(
                backend, pool[: count * chunk], chunk, latency, cost, concurrency
            )
            shares[concurrency].append(report.throughput / (bound * chunk))
            if r == 0:
                rows.append((concurrency, count, fetch_bound, bound, report, elapsed))

    mb = chunk / 1e6
    base = rows[0][4].throughput
    print(
        f"\nbackend {backend}: chunk {chunk // 1024} KiB, fetch latency L = {latency * 1e3:g} ms, "
        f"write cost W = {cost * 1e3:g} ms, write bound {write_bound * mb:.1f} MB/s"
    )
    print(
        "bound: min(concurrency x chunk / L, chunk / W) with the nominal L and W;\n"
        "effective: the same with L = the run's fetch p50, W = its writer busy time per write"
    )
    print(
        f"{'conc':>4} {'chunks':>6} {'bound':>9} {'effective':>9} {'measured':>9} "
        f"{'of bound':>8} {'of eff.':>7} {'expected':>8} {'report':>6} {'speedup':>7} "
        f"{'p50 ms':>6} {'p99 ms':>6} {'W ms':>5} {'busy s':>6} {'idle s':>6} {'wall s':>6}"
    )
    for concurrency, count, fetch_bound, bound, report, _elapsed in rows:
        expected = "fetch" if fetch_bound < write_bound else "write"
        write_cost = report.writer_busy / report.fetched_chunks
        effective = min(concurrency / report.fetch_p50, 1 / write_cost) * chunk
        measured = report.throughput
        print(
            f"{concurrency:>4} {count:>6} {bound * mb:>4.1f} MB/s {effective / 1e6:>4.1f} MB/s "
            f"{measured / 1e6:>4.1f} MB/s {measured / (bound * chunk):>8.1%} "
            f"{measured / effective:>7.1%} {expected:>8} {report.bound or '-':>6} "
            f"{measured / base:>6.2f}x "
            f"{report.fetch_p50 * 1e3:>6.1f} {report.fetch_p99 * 1e3:>6.1f} "
            f"{write_cost * 1e3:>5.2f} {report.writer_busy:>6.2f} {report.writer_idle:>6.2f} "
            f"{report.wall_time:>6.2f}"
        )
    print(f"share of the bound over {repeat} runs per row, median (min-max):")
    for concurrency, values in shares.items():
        print(f"{concurrency:>4} {spread(values, scale=100, digits=1, unit='%')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["trio", "asyncio", "both"], default="both")
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--cost-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="target time per row")
    parser.add_argument("--quick", action="store_true", help="1 s per row")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (the table: the first)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    backends = ["trio", "asyncio"] if args.backend == "both" else [args.backend]
    for backend in backends:
        bench(
            backend,
            chunk=args.chunk_kib * 1024,
            latency=args.latency_ms / 1e3,
            cost=args.cost_ms / 1e3,
            seconds=seconds,
            repeat=args.repeat,
        )


if __name__ == "__main__":
    main()
