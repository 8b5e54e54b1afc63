"""A small simulated workload, so that ``jobctl serve`` has something to show.

Real :class:`jobctl.Domain` objects over a stand-in monitor that answers every
command after a short delay: per domain, outgoing migrations with
interruptible windows, a domstats poller (QUERY jobs), now and then an
exclusive MODIFY job, and now and then an operator's abort.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from typing import Any, NoReturn, final

import anyio

from jobctl import (
    AsyncJob,
    Domain,
    Job,
    JobAbortedError,
    JobStateError,
    JobTimeoutError,
    MonitorSession,
    TraceHub,
)

__all__ = ["simulated_workload"]


@final
class _SimulatedMonitor:
    """Answers each command after a few milliseconds; knows no protocol."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        await anyio.sleep(self._rng.uniform(0.005, 0.12))
        return {}


async def _cancel_migration(mon: MonitorSession) -> None:
    await mon.execute("migrate_cancel")


async def _migrate(dom: Domain, rng: random.Random) -> None:
    async with dom.async_job(
        AsyncJob.MIGRATION_OUT, allowed={Job.QUERY, Job.ABORT}, owner="migrate"
    ) as ajob:
        ajob.set_abort_hook(_cancel_migration)
        await ajob.set_phase("begin")
        async with ajob.monitor() as mon:
            await mon.execute("migrate-set-capabilities")
            await mon.execute("migrate", {"uri": "tcp:destination:49152"})
        await ajob.set_phase("perform")
        total, transferred = rng.randint(2, 6) * 1024, 0
        while transferred < total:
            async with ajob.interruptible():
                await anyio.sleep(rng.uniform(0.4, 1.2))  # waiting for the VM's events
            async with ajob.monitor() as mon:
                await mon.execute("query-migrate")
            transferred = min(total, transferred + rng.randint(400, 1200))
            ajob.set_progress({"transferred_mib": transferred, "total_mib": total})
        await ajob.set_phase("finish")
        async with ajob.monitor() as mon:
            await mon.execute("query-migrate")
            await mon.execute("stop")
        await ajob.set_phase("confirm")


async def _migrations(dom: Domain, rng: random.Random) -> NoReturn:
    while True:
        await anyio.sleep(rng.uniform(1.0, 3.0))
        with contextlib.suppress(JobAbortedError):
            await _migrate(dom, rng)


async def _domstats(dom: Domain, rng: random.Random) -> NoReturn:
    while True:
        await anyio.sleep(rng.uniform(0.2, 0.5))
        with contextlib.suppress(JobTimeoutError):
            async with dom.job(Job.QUERY, owner="domstats", timeout=5.0) as job:
                async with job.monitor() as mon:
                    await mon.execute("query-stats")


async def _modify(dom: Domain, rng: random.Random) -> NoReturn:
    while True:
        await anyio.sleep(rng.uniform(5.0, 12.0))
        with contextlib.suppress(JobTimeoutError):
            async with dom.job(Job.MODIFY, owner="set-memory", timeout=10.0) as job:
                async with job.monitor() as mon:
                    await mon.execute("balloon", {"value": 1 << 30})


async def _operator(domains: list[Domain], rng: random.Random) -> NoReturn:
    while True:
        await anyio.sleep(rng.uniform(8.0, 20.0))
        dom = rng.choice(domains)
        if dom.info().async_job is None:
            continue
        with contextlib.suppress(JobStateError, JobTimeoutError):
            await dom.abort("operator", timeout=5.0)


async def simulated_workload(
    hub: TraceHub | None = None, *, domains: int = 3, seed: int | None = None
) -> NoReturn:
    """Run the workload on ``domains`` domains (``vm-1`` ...) until cancelled.

    Their trace goes to ``hub`` (default :data:`jobctl.default_trace_hub`).
    """
    if isinstance(domains, bool) or not isinstance(domains, int) or domains < 1:
        raise ValueError(f"domains must be an int of at least 1, not {domains!r}")
    rng = random.Random(seed)
    doms = [
        Domain(f"vm-{i}", monitor=_SimulatedMonitor(random.Random(rng.random())), trace=hub)
        for i in range(1, domains + 1)
    ]
    async with anyio.create_task_group() as tg:
        for dom in doms:
            for flow in (_migrations, _domstats, _modify):
                tg.start_soon(flow, dom, random.Random(rng.random()))
        tg.start_soon(_operator, doms, random.Random(rng.random()))
    raise AssertionError("unreachable")  # pragma: no cover
