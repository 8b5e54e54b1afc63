"""One VM's broken monitor connection is that VM's failure only.

A QEMU (simulated, or a fake QEMU process beside a real one) sends one bad
message: the command waiting on that connection fails with a
:class:`QMPProtocolError` naming what was wrong, that machine's monitor is
closed with that reason, and the other VM on the same host carries on with
its work (a backup, monitor commands) as if nothing happened.
"""

from __future__ import annotations

import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import Domain
from jobctl.qemu import (
    VM,
    BackupTarget,
    MachineSpec,
    backup,
    domstats,
    open_qemu_host,
    start,
)
from jobctl.qmp import QMPProtocolError
from jobctl.testing import (
    open_simulated_host,
)
from jobctl_simulators.qemu import BackupModel, FaultPlan, FaultRule, Garbage
from tests._requires import require_qemu

pytestmark = pytest.mark.anyio

MiB = 1 << 20
STAMP = b'"timestamp": {"seconds": 1700000000, "microseconds": 0}'

#: (what the bad QEMU sends instead of a reply, what the error names)
BAD = [
    (
        b'{"event": "STOP", "timestamp": {"seconds": 1' + b"0" * 400 + b', "microseconds": 0}}',
        "number literal of 401 characters",
    ),
    (
        b'{"event": "STOP", "timestamp": {"seconds": 1' + b"0" * 30 + b', "microseconds": 0}}',
        "'timestamp.seconds' is int 1000",
    ),
    (b'{"event": "STOP", "data": [], ' + STAMP + b"}", "'data' is a list"),
    (b'{"event": "STOP", "data": {"x": NaN}, ' + STAMP + b"}", "NaN is not JSON"),
    (b'{"return": {}, "id": "1"}', "reply for id '1'"),
    (b'{"return": {}, "id": 424242}', "reply for id 424242"),
]


@pytest.mark.parametrize(("bad", "match"), BAD, ids=range(len(BAD)))
async def test_a_bad_message_on_one_simulated_vm_leaves_the_other_alone(
    bad: bytes, match: str
) -> None:
    def faults(name: str, incoming: bool) -> FaultPlan | None:
        if name != "bad@h":
            return None
        return FaultPlan([FaultRule(Garbage(bad + b"\r\n"), "query-version")])

    slow = BackupModel(throughput=float(64 * MiB))  # a second for the 64 MiB disk
    async with open_simulated_host("h", faults=faults, backup=slow) as host:
        good, broken = VM(Domain("good@h"), host), VM(Domain("bad@h"), host)
        disk = await host.create_disk("good", 64)
        target = await host.create_disk("good-backup", 64)
        await start(good, MachineSpec(ram_mib=64, disk=disk, backup_disk=target))
        bad_machine = await start(broken, MachineSpec(ram_mib=16))
        copied: list[int] = []

        async def good_work() -> None:
            copied.append((await backup(good, BackupTarget("backup0"), poll_interval=0.05)).copied)

        async with anyio.create_task_group() as tg:
            tg.start_soon(good_work)
            await anyio.wait_all_tasks_blocked()
            assert not copied  # the backup is under way
            with pytest.raises(QMPProtocolError, match=match):
                await bad_machine.qmp.execute("query-version")
            assert bad_machine.qmp.closed
            with pytest.raises(QMPProtocolError, match=match):  # the machine's reason
                await bad_machine.qmp.execute("query-status")
        assert copied == [64 * MiB]
        assert (await domstats(good.domain)).state == "running"
        assert good.machine is not None and not good.machine.stopped
        await bad_machine.stop()  # its monitor is gone: it is killed
        assert bad_machine.stopped and host.machines == (good.machine,)
        assert (await domstats(good.domain)).state == "running"


#: A "QEMU" that execs the real one, except for machines of 17 MiB: those
#: are a fake QEMU on the QMP socket the host hands over, which answers
#: ``query-version`` with the line in $JOBCTL_TEST_BAD_LINE.
FAKE_QEMU = """\
import json, os, signal, socket, sys

argv = sys.argv[1:]
if argv[argv.index("-m") + 1] != "17M":
    os.execv(os.environ["JOBCTL_TEST_REAL_QEMU"], ["qemu-system-x86_64", *argv])
spec = next(a for a in argv if a.startswith("socket,id=qmp0,"))
fd = int(spec.split("fd=")[1].split(",")[0])
connection, _ = socket.socket(fileno=fd).accept()
stream = connection.makefile("rwb", buffering=0)
version = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"}
stream.write(json.dumps({"QMP": {"version": version, "capabilities": []}}).encode() + b"\\r\\n")
for line in stream:
    request = json.loads(line)
    if request["execute"] == "query-version":
        stream.write(os.environ["JOBCTL_TEST_BAD_LINE"].encode() + b"\\r\\n")
    else:
        stream.write(json.dumps({"return": {}, "id": request["id"]}).encode() + b"\\r\\n")
signal.pause()  # like QEMU, run on without a monitor client, until killed
"""


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
@pytest.mark.parametrize(("bad", "match"), [BAD[0], BAD[4]], ids=["huge-seconds", "string-id"])
async def test_a_bad_qemu_beside_a_real_one_on_one_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: bytes, match: str
) -> None:
    """Real time, real processes: the real QEMU's commands go on while the
    fake one's connection fails, and both stop cleanly."""
    real = require_qemu()
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_QEMU))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("JOBCTL_TEST_REAL_QEMU", real)
    monkeypatch.setenv("JOBCTL_TEST_BAD_LINE", bad.decode())
    async with open_qemu_host("h", binary=str(binary), start_timeout=30) as host:
        good = await host.start_machine("good", MachineSpec(ram_mib=16, random_ram=False))
        broken = await host.start_machine("bad", MachineSpec(ram_mib=17, random_ram=False))
        assert (await good.qmp.execute("query-version", timeout=30))["qemu"]["major"] >= 7
        failed = anyio.Event()
        answers: list[Any] = []

        async def good_work() -> None:
            # Commands while the other machine fails, and after.
            while not failed.is_set():
                answers.append((await good.qmp.execute("query-status", timeout=30))["status"])
            for _ in range(2):
                answers.append((await good.qmp.execute("query-status", timeout=30))["status"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(good_work)
            with pytest.raises(QMPProtocolError, match=match):
                await broken.qmp.execute("query-version", timeout=30)
            failed.set()
        assert set(answers) == {"running"} and not good.qmp.closed
        assert broken.qmp.closed and not broken.stopped  # its process runs on, unreachable
        await broken.stop()
        assert broken.stopped and host.machines == (good,)
        assert (await good.qmp.execute("query-status", timeout=30))["running"] is True
    assert good.stopped
