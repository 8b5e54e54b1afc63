"""Ownership: leases taken, renewed in the background, lost to a takeover;
the fenced monitor refuses commands once the lease is gone. On trio and
asyncio, against a real PostgreSQL server."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio
import psycopg
import pytest

from jobctl import Domain, Job
from jobctl.cluster import FencedMonitor, LeaseLostError, LeaseState, Ownership
from jobctl.journal import Journal, LeaseHeldError, PostgresJournalStore, StaleEpochError, TaskSpec
from jobctl.testing import ScriptedMonitor, ThrowawayPostgres

pytestmark = pytest.mark.anyio


class Clock:
    """The local monotonic clock the leases' bounds are read on, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def expire(conninfo: str, domain: str) -> None:
    """What waiting out the lease does, on the database's clock."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobctl_leases SET expires = clock_timestamp() - interval '1 second'"
            " WHERE domain = %s",
            (domain,),
        )


async def fresh(server: ThrowawayPostgres) -> str:
    return await anyio.to_thread.run_sync(server.create_database)


async def test_a_takeover_is_learnt_at_renewal_and_refuses_the_old_owner(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        clock = Clock()
        a = Ownership(store, "mgr-a", duration=30.0, margin=5.0, renew_interval=1.0, clock=clock)
        b = Ownership(store, "mgr-b", duration=30.0, clock=clock)
        token = await a.acquire("vm1")
        status = a.status("vm1")
        assert status is not None and status.state is LeaseState.HELD
        assert clock.now + 20.0 < status.valid_until <= clock.now + 25.0
        with pytest.raises(LeaseHeldError, match="owned by 'mgr-a' at epoch 1"):
            await b.acquire("vm1")
        assert await b.orphans() == ()
        sent: list[str] = []

        def reply(command: str, arguments: Mapping[str, Any]) -> Any:
            sent.append(command)
            return {}

        monitor = FencedMonitor(ScriptedMonitor(responder=reply), a, "vm1")
        domain = Domain("vm1", monitor=monitor)
        async with domain.job(Job.QUERY, owner="t") as job, job.monitor() as mon:
            await mon.execute("query-status")
        assert sent == ["query-status"]

        # a stops answering past its lease (its renewer does not run); b
        # takes the domain; a's next renewal learns it.
        expire(conninfo, "vm1")
        assert await b.orphans() == ("vm1",)
        assert await b.take_over() == ("vm1",)
        await a.renew()  # what the renewer (run) does each round, once
        lost = await a.wait_lost("vm1")
        assert (lost.state, lost.owner, lost.current_epoch) == (LeaseState.LOST, "mgr-b", 2)
        assert a.tokens() == {} and b.tokens()["vm1"].epoch == 2
        with pytest.raises(
            LeaseLostError,
            match=r"'mgr-a' lost domain 'vm1' \(its epoch 1\):"
            r" it is owned by 'mgr-b' at epoch 2",
        ) as refused:
            async with domain.job(Job.QUERY, owner="t") as job, job.monitor() as mon:
                await mon.execute("query-status")
        assert (refused.value.owner, refused.value.current_epoch, refused.value.epoch) == (
            "mgr-b",
            2,
            token.epoch,
        )
        assert sent == ["query-status"] and monitor.sent == 1  # not sent
        # The journal refuses a's writes of vm1 too, naming b.
        with pytest.raises(StaleEpochError, match="owned by 'mgr-b' at epoch 2"):
            await Journal(store, fence=a).begin_command("k", [TaskSpec("t", "m")], domain="vm1")
        await Journal(store, fence=b).begin_command("k", [TaskSpec("t", "m")], domain="vm1")


async def test_past_its_local_bound_a_lease_is_renewed_before_a_command_or_refused(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        clock = Clock()
        a = Ownership(store, "mgr-a", duration=30.0, margin=5.0, clock=clock)
        b = Ownership(store, "mgr-b", duration=30.0, clock=clock)
        sent: list[str] = []

        def reply(command: str, arguments: Mapping[str, Any]) -> Any:
            sent.append(command)
            return {}

        monitor = FencedMonitor(ScriptedMonitor(responder=reply), a, "vm1")
        with pytest.raises(LeaseLostError, match="holds no lease of domain 'vm1'"):
            await monitor.execute("stop")
        await a.acquire("vm1")
        # Stopped past the lease (no renewal ran), nobody took it: the check
        # renews it first, and the command goes.
        clock.now += 26.0
        status = a.status("vm1")
        assert status is not None and status.state is LeaseState.EXPIRED
        await monitor.execute("cont")
        status = a.status("vm1")
        assert status is not None and status.state is LeaseState.HELD
        # Stopped past the lease and taken over: refused at once, not sent,
        # without waiting for the renewer.
        clock.now += 26.0
        expire(conninfo, "vm1")
        await b.acquire("vm1")
        with pytest.raises(LeaseLostError, match="owned by 'mgr-b' at epoch 2"):
            await monitor.execute("stop")
        assert sent == ["cont"]
        status = a.status("vm1")
        assert status is not None and status.state is LeaseState.LOST
        # Released: another takes it at once, with the next epoch.
        await b.release("vm1")
        a.forget("vm1")
        assert await a.orphans() == ("vm1",)
        assert (await a.acquire("vm1")).epoch == 3


async def test_bad_options_are_refused(postgres_server: ThrowawayPostgres, tmp_path: Any) -> None:
    from jobctl.journal import SqliteJournalStore

    sqlite = await SqliteJournalStore.open(tmp_path / "j.db")
    try:
        with pytest.raises(TypeError, match="keeps leases"):
            Ownership(sqlite, "a")  # type: ignore[arg-type]
    finally:
        await sqlite.aclose()
    async with await PostgresJournalStore.open(await fresh(postgres_server)) as store:
        with pytest.raises(ValueError, match="owner"):
            Ownership(store, "")
        with pytest.raises(ValueError, match="duration"):
            Ownership(store, "a", duration=0)
        with pytest.raises(ValueError, match="margin"):
            Ownership(store, "a", duration=10, margin=10)
        with pytest.raises(ValueError, match="renew_interval"):
            Ownership(store, "a", duration=10, margin=2, renew_interval=8)
        a = Ownership(store, "a")
        with pytest.raises(KeyError, match="no lease of domain 'vm9'"):
            await a.wait_lost("vm9")


@pytest.mark.parametrize("anyio_backend", ["trio"])
def test_the_errors_pickle_as_made(anyio_backend: str) -> None:
    import pickle

    from jobctl.journal import (
        JournalCorruptError,
        JournalInUseError,
        LeaseHeldError,
        StaleEpochError,
    )

    for exc in (
        LeaseLostError("m", domain="vm1", epoch=1, owner="b", current_epoch=2),
        StaleEpochError("m", domain="vm1", epoch=1, owner="b", current_epoch=2),
        LeaseHeldError("m", domain="vm1", owner="b", epoch=2, remaining=3.0),
        JournalCorruptError("m", path="/j.db", table="tasks", row="c1.0"),
        JournalInUseError("m", path="/j.db", pid=42),
    ):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == "m"
        assert vars(again) == vars(exc)


async def test_a_lost_domain_is_not_taken_again_until_forgotten(
    postgres_server: ThrowawayPostgres,
) -> None:
    # A flow of the lost epoch may still run in this process: were the domain
    # taken again, that flow's writes would carry the new epoch and pass.
    from jobctl.cluster import ClusterError

    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        a = Ownership(store, "mgr-a", duration=30.0)
        b = Ownership(store, "mgr-b", duration=30.0)
        await a.acquire("vm1")
        expire(conninfo, "vm1")
        assert await b.take_over() == ("vm1",)
        await a.renew()  # learns it lost vm1
        await b.release("vm1")
        assert await a.orphans() == ()
        assert await a.take_over(["vm1"]) == ()
        with pytest.raises(ClusterError, match="has not forgotten it"):
            await a.acquire("vm1")
        a.forget("vm1")
        assert await a.take_over() == ("vm1",)
        assert a.tokens()["vm1"].epoch == 3


async def test_the_renewer_keeps_the_lease_past_its_duration(
    postgres_server: ThrowawayPostgres,
) -> None:
    # The database's clock runs in real time: the renewer must keep the lease
    # alive across several durations, and then b cannot take it.
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        a = Ownership(store, "mgr-a", duration=0.5, margin=0.1, renew_interval=0.05)
        b = Ownership(store, "mgr-b", duration=0.5)
        await a.acquire("vm1")
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # real time: the database's
                await anyio.to_thread.run_sync(time.sleep, 0.05)
            with pytest.raises(LeaseHeldError):
                await b.acquire("vm1")
            tg.cancel_scope.cancel()
