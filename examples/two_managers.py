"""Two managers, one database: manager A owns a VM, stops answering, and
manager B takes the VM over; A, once it runs again, is refused.

Both managers share one PostgreSQL journal (a throwaway server of the
example's own, or the one ``JOBCTL_PG`` names, a libpq connection string);
each has its own connection pool, its own ``Ownership`` and its own monitor
connection to the VM's (simulated) QEMU: A on the machine's main QMP
socket, B on the extra one the machine was started with.

1. A acquires ``vm1`` (epoch 1), begins a command in the journal, and sends
   ``query-status`` through its ``FencedMonitor``.
2. A stops answering: its lease renewer no longer runs.
3. Once the lease has run out on the database's clock, B takes ``vm1`` over
   (epoch 2) and runs ``recover(domains=...)``: A's unfinished command fails
   (its task never started) and its end action runs, once, in B's epoch.
4. A runs again: its monitor command and its journal write are refused,
   each error naming B.

Run: ``python examples/two_managers.py`` (needs PostgreSQL's server
programs, ``apt-get install postgresql``, and the ``postgres`` extra).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import anyio
import trio

from jobctl import Domain, Job
from jobctl.cluster import FencedMonitor, LeaseLostError, Ownership
from jobctl.journal import (
    EndContext,
    Journal,
    PostgresJournalStore,
    StaleEpochError,
    TaskSpec,
    TaskState,
    recover,
)
from jobctl.qemu import VM, MachineSpec, start
from jobctl.qmp import open_qmp_unix
from jobctl.testing import open_simulated_host, throwaway_postgres

#: Seconds a lease lasts (short, for the example; 10 to 30 in a real cluster).
LEASE = 1.0


@contextlib.contextmanager
def database() -> Iterator[str]:
    if "JOBCTL_PG" in os.environ:
        yield os.environ["JOBCTL_PG"]
        return
    with throwaway_postgres(port=5434) as server:
        yield server.create_database()


async def query_status(domain: Domain) -> str:
    async with domain.job(Job.QUERY, owner="stats") as job, job.monitor() as mon:
        reply = await mon.execute("query-status")
    return str(reply["status"])


async def main(conninfo: str) -> list[str]:
    log: list[str] = []
    ends: list[str] = []

    async def end(context: EndContext) -> None:
        ends.append(f"{context.command.kind} ({context.outcome.value})")

    async with (
        await PostgresJournalStore.open(conninfo) as store_a,
        await PostgresJournalStore.open(conninfo) as store_b,
        open_simulated_host("host") as host,
    ):
        a = Ownership(store_a, "mgr-a", duration=LEASE)
        b = Ownership(store_b, "mgr-b", duration=LEASE)
        journal_a = Journal(store_a, fence=a)
        journal_b = Journal(store_b, fence=b)

        # 1. A owns vm1 and drives it through a fenced monitor.
        token = await a.acquire("vm1")
        log.append(f"mgr-a owns vm1 at epoch {token.epoch}")
        vm = VM(Domain("vm1"), host, fence=a)  # attached machines are fenced by A's lease
        machine = await start(vm, MachineSpec(ram_mib=64, extra_monitors=1))
        assert isinstance(vm.domain.monitor, FencedMonitor)  # the QMP client, fenced
        dom_a = vm.domain
        log.append(f"mgr-a: vm1 is {await query_status(dom_a)}")
        command = await journal_a.begin_command(
            "snapshot", [TaskSpec("disk0", "qemu")], domain="vm1"
        )

        # 2-3. A stops answering (no renewer runs); B waits until the lease
        # runs out on the database's clock, takes vm1 and recovers it.
        with anyio.fail_after(LEASE + 10):
            while True:
                taken = await b.take_over()
                if taken:
                    break
                await anyio.sleep(LEASE / 10)
        log.append(f"mgr-b took {', '.join(taken)} at epoch {b.tokens()['vm1'].epoch}")
        report = await recover(journal_b, backends={}, end_actions={"snapshot": end}, domains=taken)
        final = await journal_b.command(command.id)
        log.append(f"mgr-b recovered {len(report.commands)} command: {final.state.value}")
        async with open_qmp_unix(machine.extra_monitors[0]) as qmp_b:
            dom_b = Domain("vm1", monitor=FencedMonitor(qmp_b, b, "vm1"))
            log.append(f"mgr-b: vm1 is {await query_status(dom_b)}")

        # 4. A runs again: refused on the monitor and in the journal.
        try:
            await query_status(dom_a)
        except LeaseLostError as exc:
            log.append(f"mgr-a's monitor command refused: {exc}")
        try:
            await journal_a.update_task(command.tasks[0].id, TaskState.STARTING)
        except StaleEpochError as exc:
            log.append(f"mgr-a's journal write refused: {exc}")
        log.append(f"end actions run: {', '.join(ends)}")
        await b.release("vm1")
    return log


if __name__ == "__main__":
    with database() as conninfo:
        for line in trio.run(main, conninfo):
            print(line)
