"""Run one scripted QMP session against real QEMU 7.2 and against the simulator.

A *scenario* is an async function of an :class:`Env`: it starts VMs, opens
connections and drives them through :class:`Recorder` s, which log every
message received (greeting, events, replies, EOF) per connection. The same
scenario runs on :class:`QemuEnv` (``qemu-system-x86_64 -machine
q35,accel=tcg -m 64 -nodefaults -display none``, QMP on unix sockets, disks
made with ``qemu-img``) and on :class:`SimEnv` (simulated VMs serving the
same unix sockets), and :func:`normalize` reduces both logs to what must
match: reply shapes (keys and types), error classes and descs, event order.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
from anyio.abc import Process

from jobctl_simulators.qemu import Disk, MigrationModel, SimulatedHost, SimulatedQemu
from tests.simulator.rawqmp import RawQmp, is_reply

__all__ = [
    "Env",
    "QemuEnv",
    "Recorder",
    "SimEnv",
    "differences",
    "normalize",
    "run_both",
]

MiB = 1 << 20
WAIT = 20.0  # seconds: the longest any single wait of a scenario may take
DISKS = ("disk0", "tgt0", "tgt1")

#: Reply keys whose values (not only their types) must match.
KEEP_VALUES = frozenset(
    {"status", "running", "singlestep", "error", "io-status", "auto-finalize", "auto-dismiss", "id"}
)


class Env(Protocol):
    tmp: Path
    logs: dict[str, list[Any]]

    async def start(
        self,
        name: str,
        *,
        incoming: str | None = None,
        paused: bool = False,
        disks: bool = False,
        monitors: int = 1,
    ) -> None: ...

    async def connect(self, name: str, monitor: int = 0) -> Recorder: ...

    async def exit_status(self, name: str) -> int: ...


class Recorder:
    """A raw connection whose received messages are logged under ``label``."""

    def __init__(self, qmp: RawQmp, log: list[Any]) -> None:
        self.qmp = qmp
        self.log = log

    async def _receive(self) -> dict[str, Any]:
        message = await self.qmp.receive()
        self.log.append(message)
        return message

    async def greeting(self) -> dict[str, Any]:
        with anyio.fail_after(WAIT):
            return await self._receive()

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, id: Any = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        if id is not None:
            message["id"] = id
        return await self.raw(json.dumps(message).encode())

    async def raw(self, data: bytes) -> dict[str, Any]:
        """Send bytes; log until the next reply; return it."""
        await self.qmp.send(data)
        return await self.reply()

    async def reply(self) -> dict[str, Any]:
        with anyio.fail_after(WAIT):
            while True:
                message = await self._receive()
                if is_reply(message):
                    return message

    async def until(self, event: str, **data: Any) -> dict[str, Any]:
        """Log messages until the event ``event`` whose data has ``data``."""
        with anyio.fail_after(WAIT):
            while True:
                message = await self._receive()
                if message.get("event") == event and all(
                    message.get("data", {}).get(key) == value for key, value in data.items()
                ):
                    return message

    async def settle(
        self, command: str, arguments: dict[str, Any], event: str, **data: Any
    ) -> dict[str, Any]:
        """Execute a command whose events may race with its reply in QEMU
        (job-cancel wakes the job's coroutine, which may run before or after
        the reply is written): wait for the reply *and* the event, and log
        the events first, then the reply."""
        await self.qmp.send(json.dumps({"execute": command, "arguments": arguments}).encode())
        events: list[Any] = []
        reply: dict[str, Any] | None = None
        seen = False
        with anyio.fail_after(WAIT):
            while reply is None or not seen:
                message = await self.qmp.receive()
                if is_reply(message):
                    reply = message
                    continue
                events.append(message)
                seen = seen or (
                    message.get("event") == event
                    and all(message.get("data", {}).get(k) == v for k, v in data.items())
                )
        self.log.extend([*events, reply])
        return reply

    async def negotiate(self) -> None:
        await self.greeting()
        await self.execute("qmp_capabilities")

    async def eof(self) -> None:
        """Log what comes until the server closes the connection."""
        with anyio.fail_after(WAIT):
            while True:
                try:
                    await self._receive()
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    self.log.append("EOF")
                    return

    async def silent_for(self, seconds: float) -> bool:
        """True if nothing arrives for ``seconds``."""
        with anyio.move_on_after(seconds):
            await self._receive()
            return False
        return True

    async def aclose(self) -> None:
        await self.qmp.aclose()


class _EnvBase:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.logs: dict[str, list[Any]] = {}
        self._connections: dict[str, int] = {}
        self._recorders: list[Recorder] = []

    def socket(self, name: str, monitor: int) -> str:
        return str(self.tmp / f"{name}.{monitor}.qmp")

    async def connect(self, name: str, monitor: int = 0) -> Recorder:
        count = self._connections.get(name, 0) + 1
        self._connections[name] = count
        label = f"{name}#{count}"
        path = self.socket(name, monitor)
        with anyio.fail_after(WAIT):
            while True:
                try:
                    stream = await anyio.connect_unix(path)
                    break
                except OSError:
                    await anyio.sleep(0.01)
        recorder = Recorder(RawQmp(stream), self.logs.setdefault(label, []))
        self._recorders.append(recorder)
        return recorder

    async def _close_recorders(self) -> None:
        with anyio.CancelScope(shield=True):
            for recorder in self._recorders:
                await recorder.aclose()


def make_disks(tmp: Path) -> None:
    for name in DISKS:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / f"{name}.qcow2"), "64M"],
            check=True,
            timeout=30,
        )


class QemuEnv(_EnvBase):
    """Real ``qemu-system-x86_64`` processes, killed when the env closes."""

    def __init__(self, tmp: Path, qemu: str) -> None:
        super().__init__(tmp)
        self._qemu = qemu
        self._processes: dict[str, Process] = {}

    async def start(
        self,
        name: str,
        *,
        incoming: str | None = None,
        paused: bool = False,
        disks: bool = False,
        monitors: int = 1,
    ) -> None:
        command = [
            self._qemu,
            "-machine",
            "q35,accel=tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
        ]
        for monitor in range(monitors):
            command += ["-qmp", f"unix:{self.socket(name, monitor)},server=on,wait=off"]
        if incoming is not None:
            command += ["-incoming", incoming]
        if paused:
            command.append("-S")
        if disks:
            for disk in DISKS:
                command += [
                    "-blockdev",
                    f"driver=qcow2,node-name={disk},file.driver=file,file.filename={self.tmp}/{disk}.qcow2",
                ]
            command += ["-device", "virtio-blk-pci,drive=disk0,id=vd0"]
        self._processes[name] = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def exit_status(self, name: str) -> int:
        with anyio.fail_after(WAIT):
            return await self._processes[name].wait()

    async def aclose(self) -> None:
        await self._close_recorders()
        with anyio.CancelScope(shield=True):
            for process in self._processes.values():
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()


class SimEnv(_EnvBase):
    """Simulated VMs in this process, serving the same unix sockets."""

    def __init__(self, tmp: Path, stack: contextlib.AsyncExitStack) -> None:
        super().__init__(tmp)
        self._stack = stack
        self._host = SimulatedHost(network=True)  # a save goes to a real socket
        self._vms: dict[str, SimulatedQemu] = {}

    async def start(
        self,
        name: str,
        *,
        incoming: str | None = None,
        paused: bool = False,
        disks: bool = False,
        monitors: int = 1,
    ) -> None:
        vm_disks = []
        if disks:
            vm_disks = [
                Disk(
                    disk,
                    size=64 * MiB,
                    filename=str(self.tmp / f"{disk}.qcow2"),
                    device="vd0" if disk == "disk0" else None,
                )
                for disk in DISKS
            ]
        vm = SimulatedQemu(
            name,
            host=self._host,
            migration=MigrationModel(ram_size=64 * MiB),
            disks=vm_disks,
            incoming=incoming,
            start_paused=paused,
        )
        await self._stack.enter_async_context(vm)
        for monitor in range(monitors):
            await vm.add_monitor().serve_unix(self.socket(name, monitor))
        self._vms[name] = vm

    async def exit_status(self, name: str) -> int:
        with anyio.fail_after(WAIT):
            return await self._vms[name].wait_exited()


Scenario = Callable[[Env], Awaitable[None]]


@contextlib.asynccontextmanager
async def qemu_env(tmp: Path, qemu: str) -> AsyncIterator[QemuEnv]:
    env = QemuEnv(tmp, qemu)
    make_disks(tmp)
    try:
        yield env
    finally:
        await env.aclose()


@contextlib.asynccontextmanager
async def sim_env(tmp: Path) -> AsyncIterator[SimEnv]:
    async with contextlib.AsyncExitStack() as stack:
        env = SimEnv(tmp, stack)
        try:
            yield env
        finally:
            await env._close_recorders()


async def run_both(
    scenario: Scenario, tmp: Path, qemu: str
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Run ``scenario`` on real QEMU, then on the simulator; return both raw logs."""
    (tmp / "qemu").mkdir()
    (tmp / "sim").mkdir()
    async with qemu_env(tmp / "qemu", qemu) as real:
        await scenario(real)
    async with sim_env(tmp / "sim") as sim:
        await scenario(sim)
    return real.logs, sim.logs


# -- normalisation ------------------------------------------------------------


def shape(value: Any, key: str | None = None) -> Any:
    """Keys and types; values only for :data:`KEEP_VALUES` keys."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes = {json.dumps(shape(item), sort_keys=True) for item in value}
        return ["list", *sorted(shapes)]
    if key in KEEP_VALUES:
        return value
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "str"


def _event(message: dict[str, Any]) -> Any:
    data = message.get("data")
    if data is not None:
        data = {k: v if isinstance(v, str | bool) else shape(v) for k, v in sorted(data.items())}
    return {"event": message["event"], "data": data, "timestamp": shape(message["timestamp"])}


def _drop_drain_blips(messages: list[Any]) -> list[Any]:
    """QEMU reports a job paused and running again around every drained
    section; only the one at job start is modelled. Drop adjacent pairs."""
    out: list[Any] = []
    for message in messages:
        if (
            out
            and _job_status(message) == "running"
            and _job_status(out[-1]) == "paused"
            and message["data"]["id"] == out[-1]["data"]["id"]
        ):
            out.pop()
            continue
        out.append(message)
    return out


def _job_status(message: Any) -> str | None:
    if isinstance(message, dict) and message.get("event") == "JOB_STATUS_CHANGE":
        return str(message["data"]["status"])
    return None


def check_passes(messages: list[Any]) -> None:
    """MIGRATION_PASS: numbered 1, 2, ... and the first one before ``active``."""
    events = [m for m in messages if isinstance(m, dict) and "event" in m]
    passes = [m["data"]["pass"] for m in events if m["event"] == "MIGRATION_PASS"]
    assert passes == list(range(1, len(passes) + 1)), passes
    statuses = [m["data"]["status"] if m["event"] == "MIGRATION" else m["event"] for m in events]
    if "active" in statuses and passes:
        first_pass = next(i for i, m in enumerate(events) if m["event"] == "MIGRATION_PASS")
        assert first_pass < statuses.index("active")


def normalize(logs: dict[str, list[Any]], tmp: Path) -> dict[str, list[str]]:
    """One line per message; MIGRATION_PASS events are checked, then dropped."""
    out: dict[str, list[str]] = {}
    for label, messages in logs.items():
        check_passes(messages)
        lines = []
        for message in _drop_drain_blips(messages):
            if message == "EOF":
                lines.append("EOF")
                continue
            if "event" in message:
                if message["event"] == "MIGRATION_PASS":
                    continue
                item = _event(message)
            elif "error" in message:
                item = {"error": message["error"], "id": message.get("id", "<none>")}
            else:
                item = shape(message)
            lines.append(json.dumps(item, sort_keys=True).replace(str(tmp), "<TMP>"))
        out[label] = lines
    return out


def differences(real: dict[str, list[str]], sim: dict[str, list[str]]) -> str:
    """A unified diff of two normalised logs ('' when they match)."""
    out: list[str] = []
    for label in sorted(real.keys() | sim.keys()):
        diff = difflib.unified_diff(
            real.get(label, []),
            sim.get(label, []),
            f"qemu {label}",
            f"simulator {label}",
            lineterm="",
            n=2,
        )
        out.extend(diff)
    return "\n".join(out)
