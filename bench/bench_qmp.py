"""QMP client round trips: jobctl.qmp against qemu.qmp, on the same server.

One command in flight at a time (``query-status``), as the job core drives a
monitor: commands per second, the p50/p99 round trip and the client's own CPU
time per command (the bench process's CPU time; the server is another
process), with each client's ratio to qemu.qmp (asyncio) measured in the same
run. On a loaded machine the wall-clock columns carry scheduling noise; the
CPU column is the steadier measure of a client's cost. A blocking socket that
does nothing but write and parse lines is shown as the floor.

Servers, each a fresh process per measured connection: a real QEMU
(``-machine none``) and the simulator (``python -m jobctl_simulators.qemu``, trio
backend), which answers much more slowly than QEMU, so client differences
weigh less there.

Run: ``python bench/bench_qmp.py [--commands 3000] [--sim-commands 1000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import anyio
from _spread import ratios, spread

from jobctl.qmp import open_qmp_unix

Run = Callable[[str, int], list[int]]  # (socket path, commands) -> round trips in ns


@contextlib.contextmanager
def real_qemu() -> Iterator[str]:
    """A QEMU serving QMP on a unix socket that is listening before QEMU starts."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        raise SystemExit("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    with tempfile.TemporaryDirectory(prefix="qmpbench", dir="/tmp") as tmp:
        path = os.path.join(tmp, "qmp.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen(1)
            fd = listener.fileno()
            process = subprocess.Popen(
                [
                    binary,
                    *("-machine", "none", "-nodefaults", "-display", "none"),
                    *("-chardev", f"socket,id=qmp,fd={fd},server=on,wait=off"),
                    *("-mon", "chardev=qmp,mode=control"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=[fd],
            )
        try:
            yield path
        finally:
            process.kill()
            process.wait()


@contextlib.contextmanager
def simulated_qemu() -> Iterator[str]:
    """``python -m jobctl_simulators.qemu`` serving QMP on a unix socket."""
    with tempfile.TemporaryDirectory(prefix="qmpbench", dir="/tmp") as tmp:
        path = os.path.join(tmp, "qmp.sock")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobctl_simulators.qemu",
                "-qmp",
                f"unix:{path}",
                "--backend",
                "trio",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            ready = process.stdout.readline()  # "QMP unix:PATH" once it listens
            if not ready.startswith("QMP "):
                raise RuntimeError(f"the simulator did not start: {ready!r}")
            yield path
        finally:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _timed(samples: list[int], start: int) -> None:
    samples.append(time.perf_counter_ns() - start)


def run_jobctl(backend: str) -> Run:
    def run(path: str, commands: int) -> list[int]:
        async def session() -> list[int]:
            samples: list[int] = []
            async with open_qmp_unix(path) as qmp:
                for _ in range(commands):
                    start = time.perf_counter_ns()
                    await qmp.execute("query-status")
                    _timed(samples, start)
            return samples

        return anyio.run(session, backend=backend)

    return run


def run_qemu_qmp(path: str, commands: int) -> list[int]:
    from qemu.qmp import QMPClient

    async def session() -> list[int]:
        samples: list[int] = []
        qmp = QMPClient("bench")
        await qmp.connect(path)
        try:
            for _ in range(commands):
                start = time.perf_counter_ns()
                await qmp.execute("query-status")
                _timed(samples, start)
        finally:
            await qmp.disconnect()
        return samples

    return asyncio.run(session())


def run_blocking(path: str, commands: int) -> list[int]:
    """The floor: write a line, read a line, parse it; no concurrency at all.

    Note: twice, on a loaded machine, this client's session began with a line
    that belonged to no command of its own (a parse error reply, or an id-less
    return), after another client's session on the same QEMU monitor had
    ended; so it skips to the greeting and tags its negotiation with an id.
    """
    samples: list[int] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, sock.makefile("rwb") as f:
        sock.connect(path)
        while "QMP" not in json.loads(f.readline()):  # the greeting (see the note below)
            pass
        f.write(b'{"execute": "qmp_capabilities", "id": "caps"}\n')
        f.flush()
        while json.loads(f.readline()).get("id") != "caps":
            pass
        for n in range(commands):
            start = time.perf_counter_ns()
            f.write(b'{"execute":"query-status","id":%d}\n' % n)
            f.flush()
            while "event" in (reply := json.loads(f.readline())):
                pass
            _timed(samples, start)
            if reply.get("id") != n or "return" not in reply:
                raise RuntimeError(f"unexpected reply {reply!r}")
    return samples


CLIENTS: dict[str, Run] = {
    "qemu.qmp (asyncio)": run_qemu_qmp,
    "jobctl.qmp (asyncio)": run_jobctl("asyncio"),
    "jobctl.qmp (trio)": run_jobctl("trio"),
    "blocking socket (floor)": run_blocking,
}
BASELINE = "qemu.qmp (asyncio)"


Result = tuple[float, float, float, float]  # commands/s, p50 µs, p99 µs, CPU µs per command


def measure(
    server: Callable[[], contextlib.AbstractContextManager[str]], commands: int, rounds: int
) -> dict[str, list[Result]]:
    """Per client, one result per round, clients interleaved round by round
    (each round starts with a different client)."""
    results: dict[str, list[Result]] = {name: [] for name in CLIENTS}
    names = list(CLIENTS)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = CLIENTS[name]
            with server() as path:
                run(path, min(200, commands))  # warm up: imports, caches, the server
            with server() as path:
                started = time.process_time_ns()
                taken = run(path, commands)
                cpu = time.process_time_ns() - started
            cuts = statistics.quantiles(taken, n=100, method="inclusive")
            rate = len(taken) / (sum(taken) / 1e9)
            results[name].append((rate, cuts[49] / 1e3, cuts[98] / 1e3, cpu / len(taken) / 1e3))
    return results


def table(title: str, results: dict[str, list[Result]]) -> str:
    """Each figure as median (min-max) over rounds; the ratios to the baseline
    are taken round by round (the baseline of the same round)."""
    base = results[BASELINE]
    lines = [title]
    for name, rounds in results.items():
        rates = [r[0] for r in rounds]
        lines.append(f"{name}")
        lines.append(f"  commands/s    {spread(rates, digits=0)}")
        lines.append(f"  p50 µs        {spread([r[1] for r in rounds], digits=1)}")
        lines.append(f"  p99 µs        {spread([r[2] for r in rounds], digits=1)}")
        lines.append(f"  CPU µs/cmd    {spread([r[3] for r in rounds], digits=1)}")
        if name != BASELINE:
            lines.append(
                f"  x {BASELINE}: commands/s"
                f" {spread(ratios(rates, [b[0] for b in base]), unit='x')},"
                f" p50 {spread(ratios([b[1] for b in base], [r[1] for r in rounds]), unit='x')},"
                f" CPU {spread(ratios([b[3] for b in base], [r[3] for r in rounds]), unit='x')}"
            )
    lines.append(f"(x = speed relative to {BASELINE} in the same round; higher is faster)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=3000, help="per client and round, QEMU")
    parser.add_argument("--sim-commands", type=int, default=1000, help="same, simulator")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {load}; "
        f"one command in flight; {args.rounds} interleaved rounds per client"
    )
    print(
        table(
            f"\nreal QEMU (-machine none), query-status, {args.commands} per client and round",
            measure(real_qemu, args.commands, args.rounds),
        )
    )
    print(
        table(
            f"\nsimulator (python -m jobctl_simulators.qemu), query-status, "
            f"{args.sim_commands} per client and round",
            measure(simulated_qemu, args.sim_commands, args.rounds),
        )
    )


if __name__ == "__main__":
    main()
