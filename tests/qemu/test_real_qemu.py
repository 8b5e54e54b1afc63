"""The flows and the demo on real QEMU 7.2 (skipped without it, except in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import Domain, JobAbortedError
from jobctl.qemu import (
    VM,
    MachineSpec,
    MigrationError,
    MigrationOptions,
    backup,
    destroy,
    domstats,
    migrate,
    open_qemu_host,
    qcow2_target,
    restore,
    save,
    start,
)
from jobctl.testing import TraceRecorder
from tests._requires import require_qemu

pytestmark = pytest.mark.qemu

MiB = 1 << 20


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return (request.param, {})


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_the_demo_on_real_qemu(tmp_path: Path) -> None:
    """What CI runs: ``jobctl demo --qemu --migrations 5``, zero violations,
    zero failures, nothing left behind."""
    require_qemu()
    result = subprocess.run(
        [sys.executable, "-m", "jobctl", "demo", "--qemu", "--migrations", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["backend"] == "qemu"
    assert report["jobs"] == {"requested": 5, "completed": 5, "failed": 0, "failures": []}
    assert report["violations"] == {"simulator": None, "trace": 0, "examples": []}
    assert report["domstats"]["errors"] == 0 and report["domstats"]["during_job"]["count"] > 0
    assert list(tmp_path.iterdir()) == []
    assert processes_mentioning(str(tmp_path)) == []


async def migrate_and_act(src: VM, dst: VM, options: MigrationOptions, act: Any) -> BaseException:
    assert src.machine is not None
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await migrate(src, dst, options)
        except (MigrationError, JobAbortedError) as exc:
            errors.append(exc)

    with src.machine.qmp.subscribe("MIGRATION") as events:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while (await events.receive()).data["status"] != "active":
                pass
            await act()
    assert errors, "the migration should have failed"
    return errors[0]


@pytest.mark.anyio
async def test_flows_on_real_qemu(tmp_path: Path) -> None:
    require_qemu()
    fast = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05)
    slow = MigrationOptions(bandwidth=4 * MiB, poll_interval=0.05)  # 64 MiB: 16 s
    with TraceRecorder() as trace:
        async with (
            open_qemu_host("a", storage=tmp_path) as a,
            open_qemu_host("b", storage=tmp_path) as b,
        ):
            disk = await a.create_disk("vm1", 32)
            spec = MachineSpec(ram_mib=64, disk=disk)
            src = VM(Domain("vm1@a", trace=trace.hub), a)
            dst = VM(Domain("vm1@b", trace=trace.hub), b)
            await start(src, spec)

            # There and back, with QEMU's real figures.
            result = await migrate(src, dst, fast)
            assert result.progress.status == "completed" and result.progress.total_time
            assert (await domstats(dst.domain)).state == "running"
            await migrate(dst, src, fast)

            # Abort: migrate_cancel, the source runs on, the destination is gone.
            error = await migrate_and_act(src, dst, slow, lambda: src.domain.abort("test"))
            assert isinstance(error, JobAbortedError)
            assert (await domstats(src.domain)).state == "running" and b.machines == ()

            # The destination dies: the source runs on.
            async def kill() -> None:
                assert dst.machine is not None and dst.machine.pid is not None
                os.kill(dst.machine.pid, signal.SIGKILL)
                await anyio.lowlevel.checkpoint()

            error = await migrate_and_act(src, dst, slow, kill)
            assert isinstance(error, MigrationError)
            assert (await domstats(src.domain)).state == "running" and b.machines == ()

            # Backup to a node the flow adds and removes.
            image = await a.create_disk("vm1-backup", 32)
            copied = await backup(src, qcow2_target("bk0", image))
            assert copied.copied == 32 * MiB

            # Save (the QEMU stops), then restore.
            path = str(tmp_path / "vm1.save")
            saved = await save(src, path)
            assert saved.size > 64 * MiB // 2 and src.machine is None
            restored = await restore(src, spec, path)
            assert restored.size == saved.size
            assert (await domstats(src.domain)).state == "running"
            await destroy(src)
            assert a.machines == ()
    trace.check()
