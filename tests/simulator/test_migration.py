"""Live migration between simulated VMs, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from jobctl_simulators.qemu import Disk, MigrationModel, SimulatedHost, SimulatedQemu

from .conftest import trio_virtual_time
from .helpers import EVENTS_ON, client, names
from .rawqmp import RawQmp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
MiB = 1 << 20
URI = "tcp:127.0.0.1:4444"


@pytest.fixture
def anyio_backend() -> Any:
    return trio_virtual_time()


def drop_passes(sequence: list[str]) -> list[str]:
    return [name for name in sequence if not name.startswith("MIGRATION_PASS")]


@asynccontextmanager
async def pair(
    model: MigrationModel | None = None,
    *,
    events: bool = True,
    disks: tuple[Disk, ...] = (),
    **source: Any,
) -> AsyncIterator[tuple[SimulatedQemu, SimulatedQemu, RawQmp, RawQmp]]:
    """Source and destination VMs; ``disks`` are both's (shared storage)."""
    host = SimulatedHost()
    async with (
        SimulatedQemu("src", host=host, migration=model, disks=disks, **source) as src,
        SimulatedQemu("dst", host=host, migration=model, disks=disks, incoming="defer") as dst,
    ):
        s, d = await client(src), await client(dst)
        if events:
            await s.command("migrate-set-capabilities", EVENTS_ON)
            await d.command("migrate-set-capabilities", EVENTS_ON)
        await d.command("migrate-incoming", {"uri": URI})
        yield src, dst, s, d
        await s.aclose()
        await d.aclose()


async def wait_status(qmp: RawQmp, status: str) -> list[str]:
    """Events (as names) up to and including MIGRATION ``status``."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(3600):  # virtual seconds: fails a stuck test, never a slow one
        return await _wait_status(qmp, status, seen)


async def _wait_status(qmp: RawQmp, status: str, seen: list[dict[str, Any]]) -> list[str]:
    while True:
        message = await qmp.receive()
        if "event" in message:
            seen.append(message)
            if message["event"] == "MIGRATION" and message["data"]["status"] == status:
                return names(seen)


async def test_complete_migration_events_states_and_time() -> None:
    model = MigrationModel(ram_size=64 * MiB, link_speed=1024 * MiB, device_state_time=0.03)
    async with pair(model) as (src, dst, s, d):
        await s.command("migrate-set-parameters", {"max-bandwidth": 100 * MiB})
        assert await d.command("query-migrate") == {
            "socket-address": [{"port": "4444", "ipv4": True, "host": "127.0.0.1", "type": "inet"}]
        }
        start = anyio.current_time()
        events, reply = await s.execute("migrate", {"uri": URI})
        assert (names(events), reply) == (["MIGRATION:setup"], {"return": {}})
        assert await s.command("query-migrate") == {"status": "setup"}
        source_events = await wait_status(s, "completed")
        elapsed = anyio.current_time() - start
        assert source_events == [
            "MIGRATION_PASS:1",
            "MIGRATION:active",
            "MIGRATION_PASS:2",  # below the threshold: the sync before the switchover
            "STOP",
            "MIGRATION_PASS:3",  # the final sync, guest stopped
            "MIGRATION:completed",
        ]
        # 2 ms setup, 4 windows of 10 MiB at 100 MiB/s, then 24 MiB at link speed + 30 ms
        assert elapsed == pytest.approx(0.002 + 0.4 + 0.03 + 24 / 1024, abs=1e-3)
        assert await wait_status(d, "completed") == [
            "MIGRATION:active",
            "RESUME",
            "MIGRATION:completed",
        ]
        info = await s.command("query-migrate")
        assert info["status"] == "completed"
        assert info["total-time"] == round(elapsed * 1000)
        assert info["downtime"] == round((0.03 + 24 / 1024) * 1000)
        assert info["ram"]["transferred"] == info["ram"]["total"] == 64 * MiB
        assert info["ram"]["remaining"] == 0
        assert (await s.command("query-status"))["status"] == "postmigrate"
        assert await d.command("query-status") == {
            "status": "running",
            "singlestep": False,
            "running": True,
        }
        assert await d.command("query-migrate") == {"status": "completed"}
        assert (src.run_state, dst.run_state) == ("postmigrate", "running")


async def test_query_migrate_while_active() -> None:
    async with pair() as (_, _, s, _):
        await s.command("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
        await s.command("migrate", {"uri": URI})
        await wait_status(s, "active")
        await anyio.sleep(1)
        info = await s.command("query-migrate")
        assert set(info) == {"expected-downtime", "status", "setup-time", "total-time", "ram"}
        assert info["status"] == "active"
        assert info["total-time"] == 1002
        assert info["ram"]["transferred"] == pytest.approx(1 * MiB, rel=0.01)
        assert info["ram"]["mbps"] == pytest.approx(8 * MiB / 1e6, rel=1e-3)
        await s.command("migrate_cancel")


async def test_switchover_stalls_every_command() -> None:
    model = MigrationModel(device_state_time=0.35)
    async with pair(model) as (src, _, s, _):
        other = await client(src)
        await s.command("migrate", {"uri": URI})
        await s.event("STOP")  # the switchover began: the main loop is held
        before = anyio.current_time()
        _, reply = await other.execute("query-migrate")
        assert anyio.current_time() - before >= 0.35
        # answered after the lock was released, before the totals were computed
        assert reply["return"]["status"] == "completed"
        assert (reply["return"]["total-time"], reply["return"]["downtime"]) == (0, 0)
        assert (await other.command("query-status"))["status"] == "postmigrate"
        info = await other.command("query-migrate")
        assert info["downtime"] >= 350
        await other.aclose()


async def test_pause_before_switchover() -> None:
    async with pair() as (src, dst, s, _):
        caps = {"capabilities": [{"capability": "pause-before-switchover", "state": True}]}
        await s.command("migrate-set-capabilities", caps)
        await s.command("migrate", {"uri": URI})
        assert drop_passes(await wait_status(s, "pre-switchover")) == [
            "MIGRATION:active",
            "STOP",
            "MIGRATION:pre-switchover",
        ]
        assert (await s.command("query-status"))["status"] == "finish-migrate"
        assert (await s.command("query-migrate"))["status"] == "pre-switchover"
        _, reply = await s.execute("cont")
        assert reply["error"]["desc"] == "Migration is not finalized yet"
        _, reply = await s.execute("migrate-continue", {"state": "active"})
        assert reply["error"]["desc"] == "Migration not in expected state: pre-switchover"
        await anyio.sleep(5)
        assert dst.run_state == "inmigrate"  # the destination waits too
        await s.command("migrate-continue", {"state": "pre-switchover"})
        assert await wait_status(s, "completed") == [
            "MIGRATION:device",
            "MIGRATION_PASS:3",
            "MIGRATION:completed",
        ]
        assert (await s.command("query-migrate"))["downtime"] >= 5000
        assert src.run_state == "postmigrate"


async def test_cancel_makes_the_destination_exit() -> None:
    async with pair() as (src, dst, s, d):
        await s.command("migrate-set-parameters", {"max-bandwidth": 20000})
        await s.command("migrate", {"uri": URI})
        await wait_status(s, "active")
        assert await wait_status(d, "active") == ["MIGRATION:active"]
        events, reply = await s.execute("migrate_cancel")
        assert (names(events), reply) == (["MIGRATION:cancelling"], {"return": {}})
        assert await wait_status(s, "cancelled") == ["MIGRATION:cancelled"]
        assert await s.command("query-migrate") == {"status": "cancelled"}
        assert src.run_state == "running"
        # the destination: MIGRATION failed, then it exits with status 1
        assert await wait_status(d, "failed") == ["MIGRATION:failed"]
        assert await d.at_eof()
        assert await dst.wait_exited() == 1
        await s.command("migrate_cancel")  # nothing to cancel: a no-op


async def test_cancel_in_pre_switchover_resumes_the_guest() -> None:
    async with pair() as (src, dst, s, _):
        caps = {"capabilities": [{"capability": "pause-before-switchover", "state": True}]}
        await s.command("migrate-set-capabilities", caps)
        await s.command("migrate", {"uri": URI})
        await wait_status(s, "pre-switchover")
        events, _ = await s.execute("migrate_cancel")
        assert names(events) == ["MIGRATION:cancelling"]
        assert drop_passes(await wait_status(s, "cancelled")) == ["RESUME", "MIGRATION:cancelled"]
        assert src.run_state == "running"
        assert await dst.wait_exited() == 1


async def test_connect_failures() -> None:
    async with SimulatedQemu() as vm:
        s = await client(vm)
        await s.command("migrate-set-capabilities", EVENTS_ON)
        events, reply = await s.execute("migrate", {"uri": "tcp:127.0.0.1:1"})
        assert (names(events), reply) == (["MIGRATION:setup"], {"return": {}})
        assert await wait_status(s, "failed") == ["MIGRATION:failed"]
        assert await s.command("query-migrate") == {
            "status": "failed",
            "error-desc": "Failed to connect to '127.0.0.1:1': Connection refused",
        }
        await s.command("migrate", {"uri": "unix:/nonexistent.sock"})
        await wait_status(s, "failed")
        assert (await s.command("query-migrate"))["error-desc"] == (
            "Failed to connect to '/nonexistent.sock': No such file or directory"
        )
        events, reply = await s.execute("migrate", {"uri": "foo:bar"})
        assert names(events) == ["MIGRATION:setup", "MIGRATION:failed"]
        assert reply["error"]["desc"] == "Parameter 'uri' expects a valid migration protocol"
        assert await s.command("query-migrate") == {"status": "failed"}
        events, reply = await s.execute("migrate", {"uri": "unix:"})
        assert reply["error"]["desc"] == "invalid Unix socket address"
        assert await s.command("query-migrate") == {
            "status": "failed",
            "error-desc": "invalid Unix socket address",
        }
        _, reply = await s.execute("migrate", {"uri": "tcp:localhost"})
        assert reply["error"]["desc"] == "error parsing address 'localhost'"
        assert vm.run_state == "running"
        await s.aclose()


async def test_a_guest_dirtying_faster_than_the_bandwidth_never_converges() -> None:
    model = MigrationModel(dirty_rate=20 * MiB)
    async with pair(model) as (src, _, s, _):
        await s.command("migrate-set-parameters", {"max-bandwidth": 10 * MiB})
        await s.command("migrate", {"uri": URI})
        await anyio.sleep(120)
        info = await s.command("query-migrate")
        assert info["status"] == "active"
        assert info["ram"]["dirty-sync-count"] > 5
        assert src.run_state == "running"
        # raising the bandwidth mid-migration lets it converge
        await s.command("migrate-set-parameters", {"max-bandwidth": 0})
        await wait_status(s, "completed")


async def test_migration_events_need_the_events_capability() -> None:
    async with pair(events=False) as (_, _, s, d):
        events, _ = await s.execute("migrate", {"uri": URI})
        assert events == []
        assert (await s.event("STOP"))["event"] == "STOP"  # not a migration event
        await anyio.sleep(1)
        assert (await s.command("query-migrate"))["status"] == "completed"
        await d.command("query-status")
        assert [m.get("event") for m in d.transcript if "event" in m] == ["RESUME"]


async def test_destination_paused_by_stop_stays_paused() -> None:
    async with pair() as (_, dst, s, d):
        events, _ = await d.execute("stop")
        assert events == []  # inmigrate: only autostart is cleared
        await s.command("migrate", {"uri": URI})
        assert await wait_status(d, "completed") == ["MIGRATION:active", "MIGRATION:completed"]
        assert dst.run_state == "paused"


async def test_paused_source_gives_a_paused_destination() -> None:
    async with pair() as (_, dst, s, d):
        await s.command("stop")
        await s.command("migrate", {"uri": URI})
        assert "STOP" not in await wait_status(s, "completed")
        assert await wait_status(d, "completed") == ["MIGRATION:active", "MIGRATION:completed"]
        assert dst.run_state == "paused"
        assert (await s.command("query-status"))["status"] == "postmigrate"


async def test_command_errors_around_migration() -> None:
    async with pair(disks=(Disk("disk0", device="vd0"),)) as (src, dst, s, d):
        await s.command("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
        await s.command("migrate", {"uri": URI})
        busy: list[tuple[str, dict[str, Any]]] = [
            ("migrate", {"uri": URI}),
            ("migrate-set-capabilities", EVENTS_ON),
        ]
        for command, arguments in busy:
            _, reply = await s.execute(command, arguments)
            assert reply["error"] == {
                "class": "GenericError",
                "desc": "There's a migration process in progress",
            }
        _, reply = await d.execute("migrate", {"uri": "tcp:127.0.0.1:5555"})
        assert reply["error"]["desc"] == "Guest is waiting for an incoming migration"
        _, reply = await d.execute("migrate-incoming", {"uri": URI})
        assert reply["error"]["desc"] == "The incoming migration has already been started"
        await s.command("migrate-set-parameters", {"max-bandwidth": 0})
        await wait_status(s, "completed")
        _, reply = await s.execute("migrate", {"uri": URI})
        assert (
            reply["error"]["desc"]
            == "Can't migrate the vm that was paused due to previous migration"
        )
        # the destination holds the images now
        _, reply = await s.execute("cont")
        assert reply["error"]["desc"] == 'Failed to get "write" lock'
        assert not src.block.nodes.active and dst.block.nodes.active
        # ... until it quits: then the source takes them back and runs
        await d.command("quit")
        assert await dst.wait_exited() == 0
        events, reply = await s.execute("cont")
        assert reply == {"return": {}} and names(events) == ["RESUME"]
        assert src.run_state == "running" and src.block.nodes.active


async def test_an_incoming_migration_that_cannot_lock_its_images_stays_paused() -> None:
    host = SimulatedHost()
    disk = Disk("disk0", device="vd0")
    async with (
        SimulatedQemu("src", host=host) as src,
        SimulatedQemu("holder", host=host, disks=[disk]),
        SimulatedQemu("dst", host=host, disks=[disk], incoming="defer") as dst,
    ):
        s, d = await client(src), await client(dst)
        await d.command("migrate-set-capabilities", EVENTS_ON)
        await d.command("migrate-incoming", {"uri": URI})
        await s.command("migrate", {"uri": URI})
        assert await wait_status(d, "completed") == ["MIGRATION:active", "MIGRATION:completed"]
        assert dst.run_state == "paused" and not dst.block.nodes.active
        _, reply = await d.execute("cont")
        assert reply["error"] == {"class": "GenericError", "desc": 'Failed to get "write" lock'}
        await s.aclose()
        await d.aclose()


async def test_a_vm_started_on_a_locked_image_holds_no_lock() -> None:
    host = SimulatedHost()
    disk = Disk("disk0", device="vd0")
    async with SimulatedQemu("a", host=host, disks=[disk]) as a:
        async with SimulatedQemu("b", host=host, disks=[disk]) as b:
            assert (a.lock_conflicts, b.lock_conflicts) == ([], ["disk0"])
            assert host.image_locks.holder(disk.path) == (a, "disk0")
        assert host.image_locks.holder(disk.path) == (a, "disk0")
    assert len(host.image_locks) == 0


async def test_incoming_errors() -> None:
    host = SimulatedHost()
    async with (
        SimulatedQemu("plain", host=host) as plain,
        SimulatedQemu("a", host=host, incoming="defer") as a,
        SimulatedQemu("b", host=host, incoming="defer") as b,
    ):
        p, qa, qb = await client(plain), await client(a), await client(b)
        _, reply = await p.execute("migrate-incoming", {"uri": URI})
        assert reply["error"]["desc"] == "'-incoming' was not specified on the command line"
        _, reply = await qa.execute("migrate-incoming", {"uri": "foo:bar"})
        assert reply["error"]["desc"] == "unknown migration protocol: foo:bar"
        await qa.command("migrate-incoming", {"uri": URI})
        _, reply = await qb.execute("migrate-incoming", {"uri": URI})
        assert reply["error"]["desc"] == "Failed to bind socket: Address already in use"
        for qmp in (p, qa, qb):
            await qmp.aclose()


async def test_incoming_uri_at_start() -> None:
    host = SimulatedHost()
    async with (
        SimulatedQemu("src", host=host) as src,
        SimulatedQemu("dst", host=host, incoming="unix:/run/dst.migrate") as dst,
    ):
        s = await client(src)
        await s.command("migrate", {"uri": "unix:/run/dst.migrate"})
        await s.event("STOP")
        await anyio.sleep(1)
        assert dst.run_state == "running"
        assert (await s.command("query-migrate"))["status"] == "completed"
        await s.aclose()


async def test_destination_dying_fails_the_source() -> None:
    async with pair() as (src, dst, s, _):
        await s.command("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
        await s.command("migrate", {"uri": URI})
        await wait_status(s, "active")
        dst.kill()
        assert await wait_status(s, "failed") == ["MIGRATION:failed"]
        assert (await s.command("query-migrate"))[
            "error-desc"
        ] == "Unable to write to socket: Broken pipe"
        assert src.run_state == "running"
        assert await dst.wait_exited() == -9


async def test_source_dying_makes_the_destination_exit() -> None:
    async with pair() as (src, dst, s, d):
        await s.command("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
        await s.command("migrate", {"uri": URI})
        await wait_status(d, "active")
        src.kill()
        assert await wait_status(d, "failed") == ["MIGRATION:failed"]
        assert await dst.wait_exited() == 1


async def test_parameters() -> None:
    async with SimulatedQemu() as vm:
        s = await client(vm)
        params = await s.command("query-migrate-parameters")
        assert (params["max-bandwidth"], params["downtime-limit"]) == (134217728, 300)
        downtime = "an integer in the range of 0 to (2000 * 1000) ms"
        cases: list[tuple[dict[str, Any], str]] = [
            ({"compress-level": 10}, "Parameter 'compress_level' expects a value between 0 and 9"),
            ({"downtime-limit": 3000000}, f"Parameter 'downtime_limit' expects {downtime}"),
        ]
        for arguments, desc in cases:
            _, reply = await s.execute("migrate-set-parameters", arguments)
            assert reply["error"]["desc"] == desc
        await s.command("migrate-set-parameters", {"downtime-limit": 100, "tls-creds": None})
        params = await s.command("query-migrate-parameters")
        assert (params["downtime-limit"], params["tls-creds"]) == (100, "")
        caps = await s.command("query-migrate-capabilities")
        assert {"state": False, "capability": "events"} in caps
        assert len(caps) == 21
        await s.aclose()
