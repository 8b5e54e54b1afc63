"""The README's tour: a migration that lets domstats queries in, and only in
its interruptible sections. Runs on trio with an in-memory monitor
(:class:`jobctl.testing.ScriptedMonitor`) in place of the VM's QMP monitor.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import anyio
import trio

import jobctl
from jobctl import AsyncJob, Job
from jobctl.testing import ScriptedMonitor


async def domstats(dom: jobctl.Domain, log: list[str]) -> None:
    # A regular QUERY job: during the migration it gets in only inside a section.
    async with dom.job(Job.QUERY, owner="domstats") as job, job.monitor() as mon:
        await mon.execute("query-status")
        log.append(f"domstats ran in phase {dom.info().async_job.phase!r}")  # type: ignore[union-attr]


async def main() -> list[str]:
    # A stand-in for the VM's QMP monitor: answers every command after 10 ms.
    dom = jobctl.Domain("vm1", monitor=ScriptedMonitor(latency=0.01), wait_timeout=5)
    log: list[str] = []
    async with anyio.create_task_group() as tg:
        async with dom.async_job(AsyncJob.MIGRATION_OUT, owner="migrate") as ajob:
            await ajob.set_phase("perform")
            async with ajob.monitor() as mon:  # the async job has the monitor alone
                await mon.execute("migrate", {"uri": "tcp:dst:4444"})
            tg.start_soon(domstats, dom, log)  # waits: no section is open
            async with ajob.interruptible():  # queries may run now
                await anyio.sleep(0.1)  # e.g. wait for the MIGRATION event
            # Leaving closed the gate and waited for domstats (the barrier).
            await ajob.set_phase("confirm")
            async with ajob.monitor() as mon:
                await mon.execute("query-migrate")
    log.append(f"statistics: {dom.statistics().begins} regular job(s), idle={dom.info().idle}")
    return log


if __name__ == "__main__":
    for line in trio.run(main):
        print(line)
