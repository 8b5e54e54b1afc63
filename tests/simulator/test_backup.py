"""Backup block jobs, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from jobctl_simulators.qemu import BackupModel, Disk, SimulatedQemu

from .conftest import trio_virtual_time
from .helpers import client, names
from .rawqmp import RawQmp

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
MiB = 1 << 20
START = [
    "JOB_STATUS_CHANGE:created",
    "JOB_STATUS_CHANGE:running",
    "JOB_STATUS_CHANGE:paused",
    "JOB_STATUS_CHANGE:running",
]


@pytest.fixture
def anyio_backend() -> Any:
    return trio_virtual_time()


def backup(job_id: str = "j1", /, **extra: object) -> dict[str, Any]:
    return {"job-id": job_id, "device": "disk0", "target": "tgt0", "sync": "full", **extra}


MANUAL: dict[str, object] = {"auto-finalize": False, "auto-dismiss": False}


@asynccontextmanager
async def vm_with_disks(**kwargs: Any) -> AsyncIterator[tuple[SimulatedQemu, RawQmp]]:
    disks = [Disk("disk0", size=64 * MiB, device="vd0"), Disk("tgt0", size=64 * MiB), Disk("tgt1")]
    async with SimulatedQemu(disks=disks, **kwargs) as vm:
        qmp = await client(vm)
        yield vm, qmp
        await qmp.aclose()


async def events_until(qmp: RawQmp, last: str) -> list[str]:
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(3600):
        while True:
            message = await qmp.receive()
            seen.append(message)
            if names([message]) == [last]:
                return names(seen)


async def test_manual_finalize_and_dismiss() -> None:
    async with vm_with_disks(backup=BackupModel(throughput=64 * MiB)) as (_, qmp):
        start = anyio.current_time()
        events, reply = await qmp.execute("blockdev-backup", backup(**MANUAL))
        assert (names(events), reply) == (START, {"return": {}})
        assert await qmp.command("query-jobs") == [
            {
                "current-progress": 6 * MiB,
                "status": "running",
                "total-progress": 64 * MiB,
                "type": "backup",
                "id": "j1",
            }
        ]
        assert await events_until(qmp, "BLOCK_JOB_PENDING") == [
            "JOB_STATUS_CHANGE:waiting",
            "JOB_STATUS_CHANGE:pending",
            "BLOCK_JOB_PENDING",
        ]
        assert anyio.current_time() - start == pytest.approx(1.0)  # 64 MiB at 64 MiB/s
        [job] = await qmp.command("query-block-jobs")
        assert job == {
            "auto-finalize": False,
            "io-status": "ok",
            "device": "j1",
            "auto-dismiss": False,
            "busy": False,
            "len": 64 * MiB,
            "offset": 64 * MiB,
            "status": "pending",
            "paused": False,
            "speed": 0,
            "ready": False,
            "type": "backup",
        }
        _, reply = await qmp.execute("job-dismiss", {"id": "j1"})
        assert (
            reply["error"]["desc"]
            == "Job 'j1' in state 'pending' cannot accept command verb 'dismiss'"
        )
        events, reply = await qmp.execute("job-finalize", {"id": "j1"})
        assert names(events) == ["BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded"]
        assert events[0]["data"] == {
            "device": "j1",
            "len": 64 * MiB,
            "offset": 64 * MiB,
            "speed": 0,
            "type": "backup",
        }
        assert (await qmp.command("query-jobs"))[0]["status"] == "concluded"
        events, _ = await qmp.execute("job-dismiss", {"id": "j1"})
        assert names(events) == ["JOB_STATUS_CHANGE:null"]
        assert await qmp.command("query-jobs") == []


async def test_automatic_job_runs_to_null() -> None:
    async with vm_with_disks() as (_, qmp):
        await qmp.command("blockdev-backup", backup())
        assert await events_until(qmp, "JOB_STATUS_CHANGE:null") == [
            "JOB_STATUS_CHANGE:waiting",
            "JOB_STATUS_CHANGE:pending",
            "BLOCK_JOB_COMPLETED",
            "JOB_STATUS_CHANGE:concluded",
            "JOB_STATUS_CHANGE:null",
        ]


async def test_speed_limits_progress_and_cancel_concludes() -> None:
    async with vm_with_disks() as (_, qmp):
        await qmp.command("blockdev-backup", backup(speed=65536, **MANUAL))
        await anyio.sleep(100)
        [job] = await qmp.command("query-jobs")
        # 1 MiB steps, each followed by 16 s at 64 KiB/s
        assert (job["status"], job["current-progress"]) == ("running", 7 * MiB)
        _, reply = await qmp.execute("job-finalize", {"id": "j1"})
        assert (
            reply["error"]["desc"]
            == "Job 'j1' in state 'running' cannot accept command verb 'finalize'"
        )
        events, reply = await qmp.execute("job-cancel", {"id": "j1"})
        assert (names(events), reply) == (
            ["JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE:concluded"],
            {"return": {}},
        )
        assert events[1]["data"] == {
            "device": "j1",
            "len": 64 * MiB,
            "offset": 7 * MiB,
            "speed": 65536,
            "type": "backup",
        }
        [job] = await qmp.command("query-jobs")
        assert (job["status"], job["error"]) == ("concluded", "Operation canceled")
        await anyio.sleep(1000)
        assert (await qmp.command("query-jobs"))[0]["current-progress"] == 7 * MiB  # stopped
        _, reply = await qmp.execute("job-cancel", {"id": "j1"})
        assert (
            reply["error"]["desc"]
            == "Job 'j1' in state 'concluded' cannot accept command verb 'cancel'"
        )
        assert names((await qmp.execute("job-dismiss", {"id": "j1"}))[0]) == [
            "JOB_STATUS_CHANGE:null"
        ]


async def test_cancel_a_pending_job() -> None:
    async with vm_with_disks() as (_, qmp):
        await qmp.command("blockdev-backup", backup(**MANUAL))
        await events_until(qmp, "BLOCK_JOB_PENDING")
        events, _ = await qmp.execute("job-cancel", {"id": "j1"})
        assert names(events) == [
            "JOB_STATUS_CHANGE:aborting",
            "BLOCK_JOB_CANCELLED",
            "JOB_STATUS_CHANGE:concluded",
        ]


async def test_cancel_with_auto_dismiss_goes_to_null() -> None:
    async with vm_with_disks() as (_, qmp):
        await qmp.command("blockdev-backup", backup(sync="none", **{"auto-dismiss": True}))
        await anyio.sleep(3600)
        assert (await qmp.command("query-jobs"))[0]["status"] == "running"  # sync=none never ends
        events, _ = await qmp.execute("block-job-cancel", {"device": "j1"})
        assert names(events)[-2:] == ["JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"]
        assert await qmp.command("query-block-jobs") == []


async def test_errors() -> None:
    async with vm_with_disks() as (_, qmp):
        cases: list[tuple[dict[str, Any], str]] = [
            ({**backup(), "device": "nope"}, "Cannot find device='nope' nor node-name='nope'"),
            ({**backup(), "target": "nope"}, "Cannot find device='nope' nor node-name='nope'"),
            (
                backup(sync="incremental"),
                "must provide a valid bitmap name for 'incremental' sync mode",
            ),
            ({**backup(), "target": "disk0"}, "Source and target cannot be the same"),
            (backup("1bad"), "Invalid job ID '1bad'"),
            ({k: v for k, v in backup().items() if k != "job-id"}, "Invalid job ID ''"),
        ]
        for arguments, desc in cases:
            events, reply = await qmp.execute("blockdev-backup", arguments)
            assert (events, reply["error"]) == ([], {"class": "GenericError", "desc": desc})
        events, reply = await qmp.execute("blockdev-backup", backup(speed=-5))
        assert names(events) == ["JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:null"]
        assert reply["error"]["desc"] == "Parameter 'speed' expects a non-negative value"
        await qmp.command("blockdev-backup", backup(speed=1))
        _, reply = await qmp.execute("blockdev-backup", {**backup(), "target": "tgt1"})
        assert reply["error"]["desc"] == "Job ID 'j1' already in use"
        _, reply = await qmp.execute("blockdev-backup", backup("j2"))
        assert (
            reply["error"]["desc"]
            == "Node 'tgt0' is busy: block device is in use by block job: backup"
        )
        for command in ("job-cancel", "job-finalize", "job-dismiss"):
            _, reply = await qmp.execute(command, {"id": "x"})
            assert reply["error"] == {"class": "GenericError", "desc": "Job not found"}
        _, reply = await qmp.execute("block-job-cancel", {"device": "x"})
        assert reply["error"] == {"class": "DeviceNotActive", "desc": "Block job 'x' not found"}


async def test_drive_backup() -> None:
    async with vm_with_disks() as (_, qmp):
        events, _ = await qmp.execute(
            "drive-backup",
            {
                "job-id": "d1",
                "device": "disk0",
                "target": "/tmp/b.qcow2",
                "sync": "full",
                "format": "qcow2",
            },
        )
        assert names(events) == START
        await events_until(qmp, "JOB_STATUS_CHANGE:null")


async def test_query_block_and_blockstats_shapes() -> None:
    async with vm_with_disks() as (_, qmp):
        [block] = await qmp.command("query-block")
        assert (block["qdev"], block["inserted"]["node-name"]) == (
            "/machine/peripheral/vd0/virtio-backend",
            "disk0",
        )
        [stats] = await qmp.command("query-blockstats")
        assert set(stats) == {"device", "parent", "stats", "node-name", "qdev"}
        nodes = await qmp.command("query-blockstats", {"query-nodes": True})
        assert [n["node-name"] for n in nodes][1::2] == ["disk0", "tgt0", "tgt1"]
        assert all(n["node-name"].startswith("#block") for n in nodes[0::2])


def target(node: str, path: str, **file: Any) -> dict[str, Any]:
    file = {"driver": "file", "filename": path, **file}
    return {"driver": "qcow2", "node-name": node, "file": file}


async def test_blockdev_add_makes_a_backup_target_and_blockdev_del_removes_it() -> None:
    async with vm_with_disks() as (vm, qmp):
        await qmp.command(
            "blockdev-add", target("new0", "/images/new0.qcow2", **{"node-name": "f0"})
        )
        stats = await qmp.command("query-blockstats", {"query-nodes": True})
        assert {"new0", "f0"} <= {entry["node-name"] for entry in stats}
        await qmp.command("blockdev-backup", backup(target="new0", speed=64 * MiB, **MANUAL))
        _, reply = await qmp.execute("blockdev-del", {"node-name": "new0"})
        assert reply["error"]["desc"] == (
            "Node 'new0' is busy: block device is in use by block job: backup"
        )
        await events_until(qmp, "BLOCK_JOB_PENDING")
        await qmp.command("job-finalize", {"id": "j1"})
        await qmp.command("job-dismiss", {"id": "j1"})
        await qmp.command("blockdev-del", {"node-name": "new0"})
        assert "new0" not in vm.block.disks
        assert vm.host.image_locks.holder("/images/new0.qcow2") is None


@pytest.mark.parametrize(
    ("command", "arguments", "desc"),
    [
        ("blockdev-add", target("tgt0", "/x.qcow2"), "Duplicate nodes with node-name='tgt0'"),
        (
            "blockdev-add",
            target("n", "/x.qcow2", **{"node-name": "disk0"}),
            "Duplicate nodes with node-name='disk0'",
        ),
        ("blockdev-add", target("1bad", "/x.qcow2"), "Invalid node-name: '1bad'"),
        (
            "blockdev-add",
            {**target("n", "/x"), "node-name": None},
            "Invalid parameter type for 'node-name', expected: string",
        ),
        (
            "blockdev-add",
            {"driver": "raw", "file": {"driver": "file", "filename": "/x"}},
            "'node-name' must be specified for the root node",
        ),
        (
            "blockdev-add",
            {**target("n", "/x"), "file": "nope"},
            "Cannot find device='nope' nor node-name='nope'",
        ),
        (
            "blockdev-add",
            {**target("n", "/x"), "driver": "nope"},
            "Parameter 'driver' does not accept value 'nope'",
        ),
        ("blockdev-add", {"driver": "qcow2", "node-name": "n"}, "Parameter 'file' is missing"),
        (
            "blockdev-add",
            {**target("n", "/x"), "file": {"driver": "file"}},
            "Parameter 'file.filename' is missing",
        ),
        ("blockdev-add", {**target("n", "/x"), "bogus": 1}, "Parameter 'bogus' is unexpected"),
        (
            "blockdev-add",
            {**target("n", "/x"), "driver": "nbd"},
            "the simulator does not model driver 'nbd' of BlockdevOptions",
        ),
        (
            "blockdev-add",
            {**target("n", "/x"), "encrypt": {}},
            "the simulator does not model 'encrypt'",
        ),
        (
            "blockdev-add",
            target("n", "/var/lib/simulated-qemu/tgt0.qcow2"),
            'Failed to get "write" lock',
        ),
        ("blockdev-del", {"node-name": "nope"}, "Failed to find node with node-name='nope'"),
        ("blockdev-del", {"node-name": "disk0"}, "Block device disk0 is in use"),
        ("blockdev-del", {"node-name": "#block100"}, "Node #block100 is not owned by the monitor"),
    ],
)
async def test_blockdev_errors(command: str, arguments: dict[str, Any], desc: str) -> None:
    async with vm_with_disks() as (vm, qmp):
        before = dict(vm.block.disks)
        _, reply = await qmp.execute(command, arguments)
        assert reply["error"] == {"class": "GenericError", "desc": desc}
        assert vm.block.disks == before
