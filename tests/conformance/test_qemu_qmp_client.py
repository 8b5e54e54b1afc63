"""The official asyncio client ``qemu.qmp`` works unchanged against the simulator.

No real QEMU needed: the simulator runs on the same asyncio loop (it is
backend-neutral) and serves a real unix socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from qemu.qmp import ExecuteError, QMPClient

from jobctl_simulators.qemu import ConcurrencyDetector, Disk, SimulatedHost, SimulatedQemu

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

EVENTS = {"capabilities": [{"capability": "events", "state": True}]}


def field(event: Any, name: str) -> Any:
    return event["data"][name]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # qemu.qmp is asyncio-only


async def test_commands_errors_and_events(tmp_path: Path) -> None:
    host = SimulatedHost(detector=ConcurrencyDetector(strict=True))
    async with SimulatedQemu(
        "vm", host=host, disks=[Disk("disk0", device="vd0"), Disk("tgt0")]
    ) as vm:
        path = str(tmp_path / "vm.qmp")
        await vm.add_monitor().serve_unix(path)
        qmp = QMPClient("conformance")
        await qmp.connect(path)  # greeting, then qmp_capabilities with oob
        try:
            assert qmp.greeting is not None
            version: Any = qmp.greeting.QMP.version
            assert version["qemu"]["major"] == 7
            assert await qmp.execute("query-status") == {
                "status": "running",
                "singlestep": False,
                "running": True,
            }
            with pytest.raises(ExecuteError) as info:
                await qmp.execute("no-such-command")
            assert info.value.error_class == "CommandNotFound"
            with qmp.listener(("STOP", "RESUME")) as listener:
                await qmp.execute("stop")
                assert (await listener.get())["event"] == "STOP"
                await qmp.execute("cont")
                assert (await listener.get())["event"] == "RESUME"
            with qmp.listener("JOB_STATUS_CHANGE") as listener:
                await qmp.execute(
                    "blockdev-backup",
                    {
                        "job-id": "j1",
                        "device": "disk0",
                        "target": "tgt0",
                        "sync": "full",
                        "auto-finalize": False,
                        "auto-dismiss": False,
                    },
                )
                statuses: list[str] = []
                with anyio.fail_after(10):
                    while not statuses or statuses[-1] != "pending":
                        statuses.append(field(await listener.get(), "status"))
            assert statuses == ["created", "running", "paused", "running", "waiting", "pending"]
            await qmp.execute("job-finalize", {"id": "j1"})
            await qmp.execute("job-dismiss", {"id": "j1"})
            assert await qmp.execute("query-jobs") == []
            with qmp.listener("SHUTDOWN") as listener:
                await qmp.execute("quit")
                assert field(await listener.get(), "reason") == "host-qmp-quit"
        finally:
            await qmp.disconnect()
        assert await vm.wait_exited() == 0
    assert host.detector.violation_count == 0


async def test_migration_driven_by_qemu_qmp(tmp_path: Path) -> None:
    host = SimulatedHost()
    async with (
        SimulatedQemu("src", host=host) as src,
        SimulatedQemu("dst", host=host, incoming="defer") as dst,
    ):
        await src.add_monitor().serve_unix(tmp_path / "src.qmp")
        await dst.add_monitor().serve_unix(tmp_path / "dst.qmp")
        s, d = QMPClient("src"), QMPClient("dst")
        await s.connect(str(tmp_path / "src.qmp"))
        await d.connect(str(tmp_path / "dst.qmp"))
        try:
            for client in (s, d):
                await client.execute("migrate-set-capabilities", EVENTS)
            uri = f"unix:{tmp_path}/migrate.sock"
            await d.execute("migrate-incoming", {"uri": uri})
            await s.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
            with s.listener("MIGRATION") as listener:
                await s.execute("migrate", {"uri": uri})
                with anyio.fail_after(10):
                    while field(await listener.get(), "status") != "completed":
                        pass
            status: Any = await s.execute("query-status")
            assert status["status"] == "postmigrate"
            assert dst.run_state == "running"
        finally:
            await s.disconnect()
            await d.disconnect()
