"""A manager process for the takeover tests: ``python -m tests.cluster._manager
CONNINFO NAME OUT MODE DOMAINS LEASE``.

MODE ``own``: take DOMAINS (comma-separated) and run commands on each in a
loop: one task at a table backend (a job that ends on its own, the way a
QEMU block job outlives its manager), a fenced monitor command, the end
action. MODE ``takeover``: take over DOMAINS as soon as their leases run
out, run ``recover(domains=...)`` on them, then keep the leases. Every event
is a JSON line in OUT; a refusal records the error's type and who it says
owns the domain now.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psycopg

from jobctl import Domain, Job
from jobctl.cluster import FencedMonitor, LeaseLostError, Ownership
from jobctl.journal import (
    BackendState,
    BackendStatus,
    EndContext,
    Journal,
    LeaseHeldError,
    PostgresJournalStore,
    StaleEpochError,
    TaskSpec,
    TaskState,
    recover,
)
from jobctl.testing import ScriptedMonitor

#: Seconds a backend job runs.
JOB_TIME = 0.5

TABLES = (
    "CREATE TABLE IF NOT EXISTS sim_jobs (id TEXT PRIMARY KEY, done_at TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS end_runs (command_id TEXT NOT NULL, owner TEXT NOT NULL,"
    " epoch BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL)",
)


def sql(conninfo: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


class TableBackend:
    """Jobs in a table: each ends by itself ``JOB_TIME`` after it starts."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    async def start(self, backend_id: str) -> None:
        await anyio.to_thread.run_sync(
            sql,
            self.conninfo,
            "INSERT INTO sim_jobs VALUES (%s, clock_timestamp() + make_interval(secs => %s))",
            (backend_id, JOB_TIME),
        )

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        rows = await anyio.to_thread.run_sync(
            sql,
            self.conninfo,
            "SELECT id, done_at <= clock_timestamp() FROM sim_jobs WHERE id = ANY(%s)",
            (list(backend_ids),),
        )
        return {
            r[0]: BackendStatus(BackendState.SUCCEEDED, result={})
            if r[1]
            else BackendStatus(BackendState.RUNNING)
            for r in rows
        }

    async def release(self, backend_ids: Sequence[str]) -> None:
        await anyio.to_thread.run_sync(
            sql, self.conninfo, "DELETE FROM sim_jobs WHERE id = ANY(%s)", (list(backend_ids),)
        )


class Manager:
    def __init__(self, conninfo: str, name: str, out: str, lease: float) -> None:
        self.conninfo = conninfo
        self.name = name
        self.out = open(out, "a", buffering=1)  # noqa: SIM115 - one line per event
        self.lease = lease
        self.backend = TableBackend(conninfo)
        #: Seconds between two commands on one domain (the Jepsen test's load).
        self.pause = float(os.environ.get("JOBCTL_PAUSE", "0"))
        #: Set by SIGUSR1: no new command begins (the test quiesces).
        self.quiet = False
        signal.signal(signal.SIGUSR1, self._quiesce)

    def _quiesce(self, signum: int, frame: object) -> None:
        self.quiet = True

    def log(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, "who": self.name, "t": time.time(), **fields}))
        self.out.write("\n")

    def refused(self, where: str, domain: str, exc: StaleEpochError | LeaseLostError) -> None:
        self.log(
            "refused",
            where=where,
            domain=domain,
            error=type(exc).__name__,
            owner=exc.owner,
            current_epoch=exc.current_epoch,
            message=str(exc),
        )

    async def end_action(self, ownership: Ownership, context: EndContext) -> dict[str, Any]:
        """The outside effect, fenced by the token the way a user fences one:
        written only if the lease is still this manager's."""
        domain = context.command.domain
        assert domain is not None
        token = ownership.tokens().get(domain)
        if token is None:
            raise RuntimeError(f"{self.name} no longer holds {domain}")
        rows = await anyio.to_thread.run_sync(
            sql,
            self.conninfo,
            "INSERT INTO end_runs SELECT %s, %s, %s, clock_timestamp() WHERE EXISTS"
            " (SELECT 1 FROM jobctl_leases WHERE domain = %s AND owner = %s AND epoch = %s)"
            " RETURNING 1",
            (context.key, token.owner, token.epoch, domain, token.owner, token.epoch),
        )
        if not rows:
            raise RuntimeError(f"{self.name}'s epoch {token.epoch} of {domain} is stale")
        return {"by": self.name, "epoch": token.epoch}

    async def run_domain(self, journal: Journal, ownership: Ownership, domain: str) -> None:
        monitor = FencedMonitor(ScriptedMonitor(), ownership, domain)
        dom = Domain(domain, monitor=monitor)
        while not self.quiet:
            try:
                backend_id = uuid.uuid4().hex
                command = await journal.begin_command(
                    "work", [TaskSpec("t", "table", backend_id=backend_id)], domain=domain
                )
                await self.backend.start(backend_id)
                await journal.update_task(command.tasks[0].id, TaskState.RUNNING)
                self.log("running", domain=domain, command=command.id)
                async with dom.job(Job.QUERY, owner="stats") as job, job.monitor() as mon:
                    await mon.execute("query-status")
                while True:
                    # Gone: the domain's new owner recovered and released it.
                    status = (await self.backend.query([backend_id])).get(backend_id)
                    if status is None or status.state is not BackendState.RUNNING:
                        break
                    await anyio.sleep(0.05)
                await journal.update_task(command.tasks[0].id, TaskState.SUCCEEDED, result={})
                final = await journal.end_command(
                    command.id, lambda c: self.end_action(ownership, c), retry_delay=0.05
                )
                self.log("ended", domain=domain, command=command.id, state=final.state.value)
                if self.pause:
                    await anyio.sleep(self.pause * random.uniform(0.5, 1.5))
            except StaleEpochError as exc:
                self.refused("journal", domain, exc)
                break
            except LeaseLostError as exc:
                self.refused("monitor", domain, exc)
                break
            except Exception as exc:  # give the domain up: another manager recovers it
                self.log("error", domain=domain, error=f"{type(exc).__name__}: {exc}")
                await ownership.release(domain)
                ownership.forget(domain)
                return
        else:
            return
        # The journal refused: the monitor must refuse too, and say who owns it.
        try:
            await monitor.execute("stop")
        except LeaseLostError as exc:
            self.refused("monitor", domain, exc)
        else:
            self.log("monitor-not-refused", domain=domain)
        # This flow of the lost epoch is over: the domain may be taken again.
        ownership.forget(domain)

    async def main(self, mode: str, domains: list[str]) -> None:
        async with await PostgresJournalStore.open(self.conninfo, max_connections=8) as store:
            ownership = Ownership(store, self.name, duration=self.lease)
            journal = Journal(store, fence=ownership)
            async with anyio.create_task_group() as tg:
                if mode == "member":
                    await self.member(tg, journal, ownership, domains)
                    return
                if mode == "own":
                    for domain in domains:
                        await ownership.acquire(domain)
                    self.log("acquired", domains=domains)
                    await tg.start(ownership.run)
                    for domain in domains:
                        tg.start_soon(self.run_domain, journal, ownership, domain)
                    return
                wanted = set(domains)
                while wanted:
                    taken = await ownership.take_over(
                        sorted(wanted & set(await ownership.orphans()))
                    )
                    if taken:
                        self.log("took", domains=list(taken))
                        wanted -= set(taken)
                    else:
                        await anyio.sleep(0.1)
                await tg.start(ownership.run)
                report = await recover(
                    journal,
                    backends={"table": self.backend},
                    end_actions={"work": lambda c: self.end_action(ownership, c)},
                    domains=domains,
                    poll_interval=0.05,
                    retry_delay=0.05,
                )
                self.log(
                    "recovered",
                    commands=list(report.commands),
                    adopted=list(report.adopted),
                    failed=list(report.failed),
                )

    async def member(
        self,
        tg: anyio.abc.TaskGroup,
        journal: Journal,
        ownership: Ownership,
        domains: list[str],
    ) -> None:
        """The Jepsen test's manager: take its share of ``domains``, run
        commands on each, and take over every domain whose lease runs out."""
        held = []
        for domain in domains:
            try:
                await ownership.acquire(domain)
            except LeaseHeldError:
                continue
            held.append(domain)
        self.log("acquired", domains=held)
        await tg.start(ownership.run)
        for domain in held:
            tg.start_soon(self.run_domain, journal, ownership, domain)
        while True:
            taken = await ownership.take_over()
            if taken:
                self.log("took", domains=list(taken))
                tg.start_soon(self.take, tg, journal, ownership, taken)
            await anyio.sleep(random.uniform(0.1, 0.3))

    async def take(
        self,
        tg: anyio.abc.TaskGroup,
        journal: Journal,
        ownership: Ownership,
        taken: tuple[str, ...],
    ) -> None:
        """Recover the domains taken over, then run commands on them. A
        recovery cut short (this manager lost a domain meanwhile) gives the
        domains up: another manager recovers them."""
        try:
            async with anyio.create_task_group() as inner:
                report = await inner.start(
                    partial(
                        recover,
                        journal,
                        backends={"table": self.backend},
                        end_actions={"work": lambda c: self.end_action(ownership, c)},
                        domains=taken,
                        poll_interval=0.05,
                        retry_delay=0.05,
                    )
                )
                self.log("recovered", domains=list(taken), commands=list(report.commands))
                for domain in taken:
                    tg.start_soon(self.run_domain, journal, ownership, domain)
        except Exception as exc:
            self.log("recovery-cut-short", domains=list(taken), error=repr(exc)[:300])
            for domain in taken:
                await ownership.release(domain)
                ownership.forget(domain)


if __name__ == "__main__":
    conninfo, name, out, mode, domains, lease = sys.argv[1:7]
    manager = Manager(conninfo, name, out, float(lease))
    names = [] if domains == "-" else domains.split(",")
    anyio.run(manager.main, mode, names, backend="trio")
