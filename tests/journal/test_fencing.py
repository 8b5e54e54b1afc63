"""Domain leases and fencing tokens in the PostgreSQL store: epochs only grow,
expiry is the database's clock's, and every write of an owned domain with a
stale (or no) epoch is refused, naming who owns the domain now."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import psycopg
import pytest

from jobctl import AsyncJob
from jobctl.journal import (
    AsyncJobRecord,
    FencingToken,
    Journal,
    JournalStateError,
    LeaseHeldError,
    PostgresJournalStore,
    SqliteJournalStore,
    StaleEpochError,
    TaskSpec,
    TaskState,
    recover,
)
from jobctl.testing import ThrowawayPostgres

from ._support import MemoryBackend

pytestmark = pytest.mark.anyio


class Tokens:
    """A fence that holds whatever tokens the test gives it."""

    def __init__(self) -> None:
        self.held: dict[str, FencingToken] = {}

    def tokens(self) -> Mapping[str, FencingToken]:
        return dict(self.held)


def sql(conninfo: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


async def fresh(server: ThrowawayPostgres) -> str:
    return await anyio.to_thread.run_sync(server.create_database)


def expire(conninfo: str, domain: str) -> None:
    """Move the lease's expiry into the past on the database's clock (what
    waiting out the lease would do)."""
    sql(
        conninfo,
        "UPDATE jobctl_leases SET expires = clock_timestamp() - interval '1 second'"
        f" WHERE domain = '{domain}'",
    )


async def test_epochs_grow_and_a_live_lease_is_not_taken(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        first = await store.acquire_lease("vm1", "a", 30.0)
        assert first.token == FencingToken("vm1", "a", 1)
        assert 25.0 < first.remaining <= 30.0
        with pytest.raises(LeaseHeldError, match=r"'vm1' is owned by 'a' at epoch 1") as held:
            await store.acquire_lease("vm1", "b", 30.0)
        assert (held.value.owner, held.value.epoch) == ("a", 1)
        # Not even its own owner takes a live lease again.
        with pytest.raises(LeaseHeldError):
            await store.acquire_lease("vm1", "a", 30.0)
        expire(conninfo, "vm1")
        (record,) = await store.leases()
        assert record.expired and record.owner == "a"
        second = await store.acquire_lease("vm1", "b", 30.0)
        assert second.token == FencingToken("vm1", "b", 2)
        with pytest.raises(StaleEpochError, match=r"owned by 'b' at epoch 2") as stale:
            await store.renew_lease(first.token, 30.0)
        assert (stale.value.epoch, stale.value.owner, stale.value.current_epoch) == (1, "b", 2)
        renewed = await store.renew_lease(second.token, 60.0)
        assert renewed.token == second.token and renewed.remaining > 50.0
        await store.release_lease(second.token)
        with pytest.raises(StaleEpochError, match=r"nobody owns the domain now"):
            await store.release_lease(second.token)
        third = await store.acquire_lease("vm1", "a", 30.0)
        assert third.token.epoch == 3
        with pytest.raises(ValueError, match="a lease lasts"):
            await store.acquire_lease("vm1", "a", 0)


async def test_renewal_keeps_an_expired_lease_nobody_took(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        grant = await store.acquire_lease("vm1", "a", 30.0)
        expire(conninfo, "vm1")
        renewed = await store.renew_lease(grant.token, 30.0)
        assert renewed.token == grant.token
        with pytest.raises(LeaseHeldError):
            await store.acquire_lease("vm1", "b", 30.0)


async def test_every_write_of_an_owned_domain_needs_its_current_epoch(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        old, new = Tokens(), Tokens()
        a, b = Journal(store, fence=old), Journal(store, fence=new)
        old.held["vm1"] = (await store.acquire_lease("vm1", "a", 30.0)).token
        command = await a.begin_command("k", [TaskSpec("t", "mem")], domain="vm1")
        assert command.domain == "vm1"
        assert (await a.command(command.id)).domain == "vm1"
        # b holds no lease of vm1: its writes of vm1's command are refused.
        with pytest.raises(StaleEpochError, match=r"carries no epoch: the domain is owned by 'a'"):
            await b.update_task(command.tasks[0].id, TaskState.STARTING)
        with pytest.raises(StaleEpochError):
            await b.begin_command("k", [], domain="vm1")
        await a.update_task(command.tasks[0].id, TaskState.RUNNING, backend_id="j1")

        expire(conninfo, "vm1")
        new.held["vm1"] = (await store.acquire_lease("vm1", "b", 30.0)).token
        # a's epoch is stale now: nothing of vm1 can be written by it.
        message = r"epoch 1 of 'a' is stale: the domain is owned by 'b' at epoch 2"
        with pytest.raises(StaleEpochError, match=message) as refused:
            await a.update_task(command.tasks[0].id, TaskState.SUCCEEDED)
        assert (refused.value.domain, refused.value.owner) == ("vm1", "b")
        with pytest.raises(StaleEpochError, match=message):
            await a.begin_command("k", [], domain="vm1")
        ran: list[str] = []

        async def end(context: object) -> None:
            ran.append("end")

        with pytest.raises(StaleEpochError, match=message):
            await a.end_command(command.id, end)
        assert ran == []
        job = AsyncJobRecord("vm1", 1, AsyncJob.BACKUP, "p", None, frozenset(), {}, "s", 0.0)
        with pytest.raises(StaleEpochError, match=message):
            await store.save_async_job(job, fence=old.tokens())
        with pytest.raises(StaleEpochError, match=r"carries no epoch"):
            await store.save_async_job(job)
        # The new owner's writes pass; a domain nobody owns is unfenced.
        await store.save_async_job(job, fence=new.tokens())
        await store.save_async_job(attrs_evolve_domain(job, "vm9"))
        await b.update_task(command.tasks[0].id, TaskState.SUCCEEDED)
        final = await b.end_command(command.id, end)
        assert final.state.final and ran == ["end"]
        # The stale owner's write refused changed nothing.
        assert (await b.command(command.id)).tasks[0].state is TaskState.SUCCEEDED


def attrs_evolve_domain(record: AsyncJobRecord, domain: str) -> AsyncJobRecord:
    import attrs

    return attrs.evolve(record, domain=domain)


async def test_recover_takes_over_only_the_given_domains(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        old, new = Tokens(), Tokens()
        a, b = Journal(store, fence=old), Journal(store, fence=new)
        for domain in ("vm1", "vm2"):
            old.held[domain] = (await store.acquire_lease(domain, "a", 30.0)).token
        c1 = await a.begin_command("k", [TaskSpec("t", "mem")], domain="vm1")
        c2 = await a.begin_command("k", [TaskSpec("t", "mem")], domain="vm2")
        await a.update_task(c1.tasks[0].id, TaskState.RUNNING, backend_id="j1")
        mine = await b.begin_command("k", [], domain=None)
        expire(conninfo, "vm1")
        new.held["vm1"] = (await store.acquire_lease("vm1", "b", 30.0)).token
        backend = MemoryBackend()
        backend.start("j1")
        backend.finish("j1", size=1)
        ends: list[str] = []

        async def end(context: object) -> None:
            ends.append("end")

        with pytest.raises(ValueError, match="needs a fenced journal"):
            await recover(Journal(store), backends={}, end_actions={}, domains=["vm1"])
        # b already began a command: a whole-journal recovery is refused, a
        # takeover of vm1 is not.
        with pytest.raises(JournalStateError):
            await recover(b, backends={"mem": backend}, end_actions={"k": end})
        report = await recover(
            b, backends={"mem": backend}, end_actions={"k": end}, domains=["vm1"]
        )
        assert report.commands == (c1.id,) and report.concluded == (c1.tasks[0].id,)
        assert ends == ["end"]
        assert (await b.command(c1.id)).state.final
        assert not (await b.command(c2.id)).state.final  # still a's
        assert not (await b.command(mine.id)).state.final


async def test_ownership_is_postgresql_only(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    store = await SqliteJournalStore.open(tmp_path / "j.db")
    try:
        with pytest.raises(TypeError, match=r"keeps domain leases \(PostgresJournalStore\)"):
            Journal(store, fence=Tokens())
        with pytest.raises(ValueError, match="needs a fenced journal"):
            await Journal(store).begin_command("k", [], domain="vm1")
    finally:
        await store.aclose()


async def test_a_version_1_database_is_upgraded_in_place(
    postgres_server: ThrowawayPostgres,
) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        await store.add_command("c1", "k", {}, [], [])
    # What version 1 made: no domain column, no leases.
    sql(conninfo, "ALTER TABLE jobctl_commands DROP COLUMN domain")
    sql(conninfo, "DROP TABLE jobctl_leases")
    sql(conninfo, "UPDATE jobctl_meta SET version = 1")
    async with await PostgresJournalStore.open(conninfo) as store:
        assert (await store.get_command("c1")).domain is None
        assert (await store.acquire_lease("vm1", "a", 5.0)).token.epoch == 1
    assert sql(conninfo, "SELECT version FROM jobctl_meta") == [(2,)]


async def test_the_same_owner_name_in_a_later_epoch_fences_its_earlier_one(
    postgres_server: ThrowawayPostgres,
) -> None:
    # A manager restarted under its old name while its paused first run
    # still holds epoch 1: the epoch, not the name, tells them apart.
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        paused, restarted = Tokens(), Tokens()
        paused.held["vm1"] = (await store.acquire_lease("vm1", "a", 30.0)).token
        command = await Journal(store, fence=paused).begin_command(
            "k", [TaskSpec("t", "mem")], domain="vm1"
        )
        expire(conninfo, "vm1")
        restarted.held["vm1"] = (await store.acquire_lease("vm1", "a", 30.0)).token
        with pytest.raises(StaleEpochError, match=r"epoch 1 of 'a' is stale: .* 'a' at epoch 2"):
            await Journal(store, fence=paused).update_task(command.tasks[0].id, TaskState.STARTING)
        await Journal(store, fence=restarted).update_task(command.tasks[0].id, TaskState.STARTING)


async def test_many_leases_renew_in_one_transaction(postgres_server: ThrowawayPostgres) -> None:
    conninfo = await fresh(postgres_server)
    async with await PostgresJournalStore.open(conninfo) as store:
        tokens = [(await store.acquire_lease(d, "a", 30.0)).token for d in ("vm1", "vm2", "vm3")]
        expire(conninfo, "vm2")
        await store.acquire_lease("vm2", "b", 30.0)
        grants, stale = await store.renew_leases(tokens, 60.0)
        assert sorted((g.token for g in grants), key=lambda t: t.domain) == [tokens[0], tokens[2]]
        assert all(g.remaining > 50.0 for g in grants)
        (refused,) = stale
        assert (refused.domain, refused.epoch, refused.owner, refused.current_epoch) == (
            "vm2",
            1,
            "b",
            2,
        )
        assert await store.renew_leases([], 60.0) == ((), ())
