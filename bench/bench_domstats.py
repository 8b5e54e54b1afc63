"""domstats latency during migrations on real QEMU, against a separate-process QMP floor.

A VM whose RAM is a file of random bytes (so that a migration moves real
data) migrates back and forth between two real QEMUs, at a bandwidth that
makes each migration last a few seconds. A first migration, unmeasured,
warms up: the VM's first source is the QEMU that booted it, and that
migration is lighter than the later ones, whose source took the VM in by
migration. (Measured: a floor client took 9,445 samples in it, 7,727 to
8,669 in later ones; in 11 runs of this bench without the warm-up, the
first migration, jobctl's, had the lowest p99 of all of jobctl's migrations
every time: 0.89-1.96 ms, the best of the others 1.22-3.02 ms.) The
measured migrations are of four kinds, interleaved in rounds of four (the
order within a round rotates, so drift on a shared machine falls on every
kind alike):

* jobctl: while the migration flow runs, one task polls ``domstats(vm)``
  (fresh: no ``max_age``, so every call is a QUERY job that waits for the
  migration's interruptible sections and takes its turn at the monitor) in a
  tight loop;
* floor: the same migration flow runs while a separate OS process, a raw QMP
  client on a plain blocking socket (no jobctl, no event loop: the source of
  :func:`_floor_client` run by ``python -I -c``), polls the source QEMU's
  second QMP monitor alone, sending what domstats sends during a migration
  (``query-status``, ``query-blockstats`` and, since a query only runs inside
  the migration's sections, ``query-migrate``). It is what the same QEMU, on
  the same machine, at the same point of a migration, allows a client that
  has nothing in its way but QEMU itself;
* paced: the floor client again, beginning a sample at most every P
  seconds, P being the average time from one sample's start to the next in
  the last jobctl migration: the floor at jobctl's pace. A percentile of
  samples depends on how many samples there are: QEMU's stalls (the
  migration thread's work, a few ms at a time) meet a client at about the
  same rate per second whatever its speed, so they are a larger share of a
  slower client's samples. The paced floor takes as many samples per second
  as jobctl and meets the same stalls; jobctl / paced compares like with like.
  (It is a diagnostic beside the issue's aim, which is against the floor.)
* trio: a raw QMP client on trio's event loop, in its own process too (the
  source of :func:`_trio_client`: no jobctl), built as little as a client
  that also takes events can be: one reader task that routes each reply to
  the task waiting for its id, each command written by its caller. It is the
  floor for a client that runs in an event loop, as a manager's does: what
  trio's own socket waits and task switches cost, beside jobctl's. (A
  diagnostic too.)

All sample only while the migration runs: the jobctl task starts with the
flow and stops when it returns (or the VM has left); a client process
connects and negotiates beforehand, starts sampling when told to just
before the flow, and stops when told to after it (or when the source QEMU
quits at its end). A sample is one round of the commands, from the first
send to the last reply.

Per migration the bench prints its kind, duration, samples, p50 / p99 / max,
QEMU's own downtime (``downtime`` of the final ``query-migrate``: the guest
was stopped that long for the switchover, and every QMP command stalls
during it), max - downtime and where the maximum fell: the migration phase
(from the trace) or ``switchover`` when the sample overlapped the stop
(QEMU's STOP event, then ``downtime`` ms), with ``gate closed`` when it
overlapped a time the source's domain was closed to queries (outside the
flow's interruptible sections, e.g. while the flow polls ``query-migrate``).
The same slowest 1% of each migration is then counted by where it fell.
(For this, a trace listener of the phase and gate events only is subscribed
in every kind of migration, and the bench reads the source's STOP event.)
Then per kind min / median / max over migrations, and the p99 of all of a
kind's samples together (pooled); per kind the samples
slower than 1, 2 and 5 ms (outside the switchover) per second of sampling:
how often each client met a stall; per round the ratios jobctl / floor,
jobctl / paced and jobctl / trio of p99 and max, with their median and
spread; the CPU time each spent per sample: the client processes' own, and
the bench process's in
a jobctl migration minus its CPU in the round's floor migration (where it
ran the same flow without the domstats loop); and how long each waited for
a CPU per sample (ready to run, not running: the kernel's run-queue wait):
the bench's loop thread and the client processes.
The issue's aims: p99 and max within 1.2x of the floor, and max <=
downtime + 10 ms in every jobctl migration.

Exits 0 whether or not the aims are met (a bench, not a test); 2 for bad
options or no QEMU; 1 if a migration fails.

``--floor-burn µs`` is a diagnostic: the floor client then also spends that
much CPU per sample (a busy loop after each reply, on its own thread's CPU
clock), so that a client as CPU-hungry as jobctl can be seen in the same
place; the floor is then no floor and the aims do not apply.

Run: ``.venv/bin/python bench/bench_domstats.py [--migrations N] [--ram MiB]
[--bandwidth MiB/s] [--quick] [--floor-burn µs]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio
import anyio.abc
from _spread import spread

from jobctl import Domain, TraceEvent, TraceHub, TraceKind
from jobctl.qemu import (
    VM,
    FlowError,
    LatencySummary,
    Machine,
    MachineSpec,
    MigrationOptions,
    MigrationResult,
    destroy,
    domstats,
    migrate,
    open_qemu_host,
    start,
)
from jobctl.qmp import EventSubscription, QMPError

MiB: Final = 1 << 20
#: The aims: p99 and max within this factor of the floor ...
RATIO_AIM: Final = 1.2
#: ... and max within QEMU's downtime plus this many milliseconds.
SLACK_MS: Final = 10.0

Kind = Literal["jobctl", "floor", "paced", "trio"]
KINDS: Final[tuple[Kind, ...]] = ("jobctl", "floor", "paced", "trio")
#: The clients in their own processes, and what each is.
CLIENTS: Final[dict[Kind, str]] = {
    "floor": "the floor",
    "paced": "the floor at jobctl's pace",
    "trio": "a raw trio client",
}
#: A sample slower than these (ms) is counted, per second of sampling.
SLOW_MS: Final = (1.0, 2.0, 5.0)
GATE_KINDS: Final = frozenset({TraceKind.GATE_OPEN, TraceKind.GATE_CLOSE})
#: What the bench's trace listener takes: phases and the gate, no more, so
#: that the domstats loop's own events (its jobs, the monitor, the commands)
#: are not built for it (a listener of every kind, such as the live feed,
#: costs a sample about 30 µs more).
LISTENED: Final = GATE_KINDS | {TraceKind.ASYNC_PHASE}


def _floor_client(path: str, burn: float = 0.0, period: float = 0.0) -> None:
    """The floor: a raw QMP client, run alone in its own process (by source).

    Connects to ``path``, negotiates, prints ``ready``, waits for ``go`` on
    stdin, then loops over domstats' commands until stdin closes or QEMU
    goes away (with ``period`` > 0, beginning a sample at most every
    ``period`` seconds: it sleeps out the rest), and prints its samples and
    the CPU time it spent sampling as JSON:
    ``{"samples": [[start, seconds], ...], "cpu": seconds, "waited": seconds}``
    (``waited``: the time it was ready to run but waited for a CPU, from
    ``/proc/thread-self/schedstat``)
    (``start`` on ``time.monotonic()``, which every process shares).
    Self-contained: it is run from its source text (with :func:`waited`'s),
    with nothing imported but the standard library.
    """
    import json
    import select
    import socket
    import time

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = sock.makefile("rb")

    def reply() -> dict[str, object]:
        while True:  # skip events: every QMP monitor gets them all
            line = reader.readline()
            if not line:
                raise EOFError("QEMU closed the monitor")
            message: dict[str, object] = json.loads(line)
            if "return" in message:
                return message
            if "error" in message:
                raise RuntimeError(f"QEMU answered an error: {message['error']}")

    if not reader.readline():  # the greeting
        raise EOFError("QEMU closed the monitor before its greeting")
    sock.sendall(b'{"execute": "qmp_capabilities"}\n')
    reply()
    if not _ready():
        return
    commands = [json.dumps({"execute": name}).encode() + b"\n" for name in _queries()]

    samples: list[tuple[float, float]] = []
    cpu = time.process_time()
    wait = waited()
    try:
        while not select.select([0], [], [], 0)[0]:  # stdin closed: stop
            began = time.monotonic()
            for command in commands:
                sock.sendall(command)
                reply()
                if burn:  # --floor-burn: spend CPU as a heavier client would
                    until = time.thread_time() + burn / len(commands)
                    while time.thread_time() < until:
                        pass
            ended = time.monotonic()
            samples.append((began, ended - began))
            if period and began + period > ended:
                time.sleep(began + period - ended)
    except (EOFError, OSError):
        pass  # the source QEMU quit at the end of the migration
    _report(samples, time.process_time() - cpu, waited() - wait)


def _queries() -> tuple[str, ...]:
    """What a client process sends in each sample: what domstats sends
    during a migration (it runs only inside the migration's sections)."""
    return ("query-status", "query-blockstats", "query-migrate")


def _ready() -> bool:
    """A client's ``ready`` on stdout, then whether the bench said ``go`` on stdin."""
    import os
    import sys

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    return os.read(0, 3) == b"go\n"


def _report(samples: list[tuple[float, float]], cpu: float, waited: float) -> None:
    """A client's samples and the CPU and run-queue seconds it spent, as JSON on stdout."""
    import json
    import sys

    sys.stdout.write(json.dumps({"samples": samples, "cpu": cpu, "waited": waited}))
    sys.stdout.flush()


def _trio_client(path: str) -> None:
    """A raw QMP client on trio (run alone in its own process, by source),
    with :func:`_floor_client`'s protocol and output: ``ready``, ``go``, its
    samples until stdin closes or QEMU goes away, then the JSON.

    The least a client that also takes events needs: a reader task reads
    the socket and wakes the task waiting for each reply's id (an event, or
    anything without an id, is skipped); the caller writes its command on
    the socket itself (it is short, the socket's buffer empty) and sleeps
    until the reader wakes it. No jobctl, nothing but trio and the standard
    library.
    """
    import json
    import select
    import socket
    import time

    import outcome
    import trio

    async def main() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.setblocking(False)
        buffer = bytearray()
        waiting: dict[int, trio.lowlevel.Task] = {}
        gone: list[BaseException] = []

        async def line() -> bytes:
            while (end := buffer.find(b"\n")) < 0:
                await trio.lowlevel.wait_readable(sock)
                data = sock.recv(65536)
                if not data:
                    raise EOFError("QEMU closed the monitor")
                buffer.extend(data)
            taken = bytes(buffer[:end])
            del buffer[: end + 1]
            return taken

        async def reader(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                while True:
                    message = json.loads(await line())
                    if "error" in message:
                        raise RuntimeError(f"QEMU answered an error: {message['error']}")
                    if "id" in message:
                        trio.lowlevel.reschedule(waiting.pop(message["id"]), outcome.Value(None))
            except (EOFError, OSError) as exc:  # the source QEMU quit
                gone.append(exc)
                for task in waiting.values():
                    trio.lowlevel.reschedule(task, outcome.Error(EOFError()))
                waiting.clear()

        last_id = 0

        async def call(command: bytes) -> None:
            nonlocal last_id
            if gone:
                raise EOFError("QEMU closed the monitor")
            last_id += 1
            waiting[last_id] = trio.lowlevel.current_task()
            sock.send(command % last_id)
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

        await line()  # the greeting
        async with trio.open_nursery() as nursery:
            await nursery.start(reader)
            await call(b'{"execute": "qmp_capabilities", "id": %d}\n')
            if not _ready():
                nursery.cancel_scope.cancel()
                return
            commands = [b'{"execute": "%s", "id": %%d}\n' % name.encode() for name in _queries()]
            samples: list[tuple[float, float]] = []
            cpu = time.process_time()
            wait = waited()
            try:
                while not select.select([0], [], [], 0)[0]:  # stdin closed: stop
                    began = time.monotonic()
                    for command in commands:
                        await call(command)
                    samples.append((began, time.monotonic() - began))
            except (EOFError, OSError):
                pass  # the source QEMU quit at the end of the migration
            _report(samples, time.process_time() - cpu, waited() - wait)
            nursery.cancel_scope.cancel()

    trio.run(main)


def waited() -> float:
    """Seconds the calling thread has spent ready to run but waiting for a
    CPU (the second field of ``/proc/thread-self/schedstat``)."""
    with open("/proc/thread-self/schedstat") as stat:
        return int(stat.read().split()[1]) / 1e9


def floor_script(burn: float) -> str:
    """The floor client's program; ``burn``: seconds of CPU it also spends
    per sample (``--floor-burn``; 0 for the real floor)."""
    return (
        f"import sys\n\n{_helpers()}\n{inspect.getsource(_floor_client)}\n"
        f"_floor_client(sys.argv[1], {burn!r}, float(sys.argv[2]))\n"
    )


def trio_script() -> str:
    """The raw trio client's program."""
    return (
        f"import sys\n\n{_helpers()}\n{inspect.getsource(_trio_client)}\n"
        "_trio_client(sys.argv[1])\n"
    )


def _helpers() -> str:
    """The source of what both client programs call."""
    return "\n".join(inspect.getsource(helper) for helper in (waited, _queries, _ready, _report))


@dataclass
class Run:
    """One migration and the samples taken during it."""

    number: int
    kind: Kind
    #: the source's domain
    source: str
    #: a paced floor's period (s): jobctl's, from the last jobctl migration
    period: float = 0.0
    #: (start on time.monotonic(), latency in seconds)
    samples: list[tuple[float, float]] = field(default_factory=list)
    #: (time.monotonic(), phase) of both jobs, in order
    phases: list[tuple[float, str]] = field(default_factory=list)
    #: (time.monotonic(), opened) of the source's gate: closed, a query cannot begin
    gates: list[tuple[float, bool]] = field(default_factory=list)
    #: time.monotonic() of the source's STOP (the switchover began)
    stop_at: float | None = None
    duration: float = 0.0
    downtime_ms: int | None = None
    #: ms the source's domain was closed to queries outside monitor commands
    #: (the flow's ``result.closed.outside_monitor``)
    closed_ms: float = 0.0
    errors: int = 0
    #: CPU seconds of this (the bench's) process during the migration: the
    #: flow's, plus the domstats loop's in a jobctl migration
    cpu: float = 0.0
    #: CPU seconds the floor client spent sampling (floor migrations)
    client_cpu: float = 0.0
    #: seconds the bench's event loop thread was ready to run but waited for
    #: a CPU during the migration (the kernel's run-queue wait)
    waited: float = 0.0
    #: the same for the floor client while it sampled (floor migrations)
    client_waited: float = 0.0

    def pace(self) -> float:
        """Seconds from one sample's start to the next, on average."""
        if len(self.samples) < 2:
            return 0.0
        return (self.samples[-1][0] - self.samples[0][0]) / (len(self.samples) - 1)

    def slow_per_second(self, ms: float) -> float:
        """Samples slower than ``ms`` outside the switchover, per second of sampling."""
        if len(self.samples) < 2:
            return 0.0
        slow = sum(
            1
            for began, latency in self.samples
            if latency * 1000 > ms and self.where(began, latency) != "switchover"
        )
        return slow / (self.samples[-1][0] + self.samples[-1][1] - self.samples[0][0])

    @property
    def summary(self) -> LatencySummary:
        return LatencySummary.of(latency for _, latency in self.samples)

    def within_slack(self) -> bool | None:
        """max <= downtime + SLACK_MS (None: QEMU gave no downtime)."""
        if self.downtime_ms is None:
            return None
        return self.summary.max * 1000 <= self.downtime_ms + SLACK_MS

    def where(self, began: float, latency: float) -> str:
        """The phase a sample fell in; ``switchover`` if it overlapped the stop."""
        if self.stop_at is not None:
            stop_end = self.stop_at + (self.downtime_ms or 0) / 1000
            if began <= stop_end and began + latency >= self.stop_at:
                return "switchover"
        phase = "-"
        for at, name in self.phases:
            if at > began:
                break
            phase = name
        ended = began + latency
        closed: float | None = None
        for at, opened in self.gates:
            if not opened and closed is None:
                closed = at
            elif opened and closed is not None:
                if closed <= ended and at >= began:
                    return f"{phase}, gate closed"
                closed = None
        if closed is not None and closed <= ended:
            return f"{phase}, gate closed"
        return phase

    def worst(self) -> str:
        """Where the maximum fell, and when it began relative to the STOP."""
        if not self.samples:
            return "-"
        began, latency = max(self.samples, key=lambda sample: sample[1])
        where = self.where(began, latency)
        if self.stop_at is None:
            return where
        return f"{where} ({(began - self.stop_at) * 1000:+.0f} ms)"


async def jobctl_loop(vm: VM, run: Run, done: anyio.Event) -> None:
    while not done.is_set():
        began = time.monotonic()
        try:
            stats = await domstats(vm)
        except QMPError:  # the source QEMU quit under the call
            run.errors += 1
            return
        if stats.state == "shutoff":  # the migration is over: the VM left
            return
        run.samples.append((began, time.monotonic() - began))


async def read_until_line(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        buffer += await stream.receive()
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def read_all(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> bytes:
    try:
        while True:
            buffer += await stream.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return bytes(buffer)


def drain_stop(events: EventSubscription, run: Run) -> None:
    """The source's STOP, from the subscription's buffer, on time.monotonic()."""
    wall_to_monotonic = time.time() - time.monotonic()
    while True:
        try:
            event = events.receive_nowait()
        except (anyio.WouldBlock, anyio.ClosedResourceError, QMPError):
            return
        if event.name == "STOP" and run.stop_at is None:
            run.stop_at = event.timestamp - wall_to_monotonic


async def migrate_once(
    run: Run, here: VM, there: VM, options: MigrationOptions, scripts: dict[Kind, str]
) -> MigrationResult:
    source = here.running_machine()
    with source.qmp.subscribe("STOP") as events:
        if run.kind == "jobctl":
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(jobctl_loop, here, run, done)
                result = await migrate(here, there, options)
                done.set()
        else:  # a client in its own process
            result = await client_migration(run, source, here, there, options, scripts[run.kind])
        drain_stop(events, run)
    return result


async def client_migration(
    run: Run, source: Machine, here: VM, there: VM, options: MigrationOptions, script: str
) -> MigrationResult:
    """The migration, while the client program ``script`` (the floor, paced or
    not, or the raw trio client) samples the source's second monitor in its
    own process; its samples and CPU go into ``run``."""
    argv = [sys.executable, "-I", "-c", script, source.extra_monitors[0], repr(run.period)]
    async with await anyio.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        buffer = bytearray()
        with anyio.fail_after(10):
            ready = await read_until_line(process.stdout, buffer)
        if ready != b"ready":
            raise RuntimeError(f"the {run.kind} client said {ready!r}, not ready")
        await process.stdin.send(b"go\n")
        try:
            result = await migrate(here, there, options)
        finally:
            await process.stdin.aclose()
            with anyio.fail_after(10):
                output = await read_all(process.stdout, buffer)
                status = await process.wait()
    if status != 0:
        raise RuntimeError(f"the {run.kind} client failed (exit status {status})")
    measured = json.loads(output)
    run.samples = [(float(began), float(latency)) for began, latency in measured["samples"]]
    run.client_cpu = float(measured["cpu"])
    run.client_waited = float(measured["waited"])
    return result


def phase_listener(
    domains: set[str], runs: list[Run], offset: float
) -> Callable[[TraceEvent], None]:
    """Note each phase of the migration jobs and when the source's gate
    closes and opens, on time.monotonic(), in the current run."""

    def listen(event: TraceEvent) -> None:
        if not runs or event.domain not in domains:
            return
        run = runs[-1]
        if event.kind is TraceKind.ASYNC_PHASE:
            run.phases.append((event.time + offset, str(event.detail.get("phase"))))
        elif event.domain == run.source and event.kind in GATE_KINDS:
            run.gates.append((event.time + offset, event.kind is TraceKind.GATE_OPEN))

    return listen


def order(migrations: int) -> list[Kind]:
    """Rounds of four, the order rotating (jobctl floor paced trio, floor
    paced trio jobctl, ...): the first migration is jobctl's, so a paced
    floor always has a jobctl pace to keep."""
    kinds: list[Kind] = []
    for round_ in range(migrations // len(KINDS)):
        turn = round_ % len(KINDS)
        kinds += [*KINDS[turn:], *KINDS[:turn]]
    return kinds


async def bench(migrations: int, ram_mib: int, bandwidth_mib: int, burn: float) -> int:
    storage = tempfile.mkdtemp(prefix="jobctl-bench-")
    floor = floor_script(burn)
    scripts: dict[Kind, str] = {"floor": floor, "paced": floor, "trio": trio_script()}
    runs: list[Run] = []
    hub = TraceHub()
    offset = time.monotonic() - anyio.current_time()
    failed: str | None = None
    try:
        async with (
            open_qemu_host("a", storage=storage) as a,
            open_qemu_host("b", storage=storage) as b,
        ):
            disk = await a.create_disk("vm1", 64)
            spec = MachineSpec(ram_mib=ram_mib, disk=disk, extra_monitors=1)
            here = VM(Domain("vm1@a", trace=hub), a)
            there = VM(Domain("vm1@b", trace=hub), b)
            listener = phase_listener({here.name, there.name}, runs, offset)
            print(f"filling {ram_mib} MiB of RAM with random bytes...", file=sys.stderr)
            await start(here, spec)
            options = MigrationOptions(bandwidth=bandwidth_mib * MiB, poll_interval=0.5)
            with hub.subscribe(listener, kinds=LISTENED):
                print("a first migration, unmeasured, to warm up...", file=sys.stderr)
                await migrate(here, there, options)
                here, there = there, here
                pace = 0.0
                for number, kind in enumerate(order(migrations), start=1):
                    run = Run(number, kind, here.name, period=pace if kind == "paced" else 0.0)
                    runs.append(run)
                    cpu = time.process_time()
                    wait = waited()
                    try:
                        result = await migrate_once(run, here, there, options, scripts)
                    except (FlowError, QMPError, RuntimeError, TimeoutError) as exc:
                        failed = f"migration {number} ({kind}) failed: {exc!r}"
                        runs.pop()
                        break
                    run.cpu = time.process_time() - cpu
                    run.waited = waited() - wait
                    run.duration = result.duration
                    run.downtime_ms = result.progress.downtime
                    run.closed_ms = result.closed.outside_monitor * 1000
                    if kind == "jobctl":
                        pace = run.pace()
                    print(
                        f"migration {number} ({kind}): {run.duration:.2f} s, "
                        f"{len(run.samples)} samples, downtime {run.downtime_ms} ms",
                        file=sys.stderr,
                    )
                    here, there = there, here
            if failed is None:
                await destroy(here)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    report(runs, migrations, ram_mib, bandwidth_mib, burn)
    if failed is not None:
        print(f"\n{failed}")
        return 1
    return 0


def sampled(samples: list[tuple[float, float]]) -> float:
    """The time spent sampling: the samples' latencies together."""
    return sum(latency for _, latency in samples)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(runs: list[Run], migrations: int, ram_mib: int, bandwidth_mib: int, burn: float) -> None:
    print()
    print(
        f"{len(runs)} of {migrations} migration(s) of {ram_mib} MiB of random RAM "
        f"at {bandwidth_mib} MiB/s, real QEMU, after one unmeasured, interleaved in rounds of"
        f" four (jobctl, {', '.join(CLIENTS.values())})"
    )
    if burn:
        print(
            f"DIAGNOSTIC (--floor-burn): the floor client spent {burn * 1e6:.0f} µs"
            " more CPU per sample than it needs: it is not the floor, and the aims below"
            " do not apply"
        )
    print()
    header = (
        f"{'#':>2} {'kind':<6} {'secs':>5} {'samples':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'down ms':>7} {'max-down':>8} {'closed':>6}  max fell in (from STOP)"
    )
    print(header)
    for run in runs:
        s = run.summary
        down = "?" if run.downtime_ms is None else str(run.downtime_ms)
        over = "?" if run.downtime_ms is None else f"{s.max * 1000 - run.downtime_ms:+.2f}"
        print(
            f"{run.number:>2} {run.kind:<6} {run.duration:>5.2f} {s.count:>7} {ms(s.p50):>7} "
            f"{ms(s.p99):>7} {ms(s.max):>7} {down:>7} {over:>8} {run.closed_ms:>6.2f}"
            f"  {run.worst()}"
            + (f"  [{run.errors} call(s) cut by QEMU's exit]" if run.errors else "")
            + (f"  [paced: a sample every {run.period * 1000:.2f} ms]" if run.period else "")
        )
    closed = [run.closed_ms for run in runs]
    if closed:
        print(
            "closed: ms the source's domain was closed to queries outside monitor commands"
            f" (aim < 10), over all migrations: {spread(closed)}"
        )
    print()
    print("where each migration's slowest 1% of samples (>= its p99) fell:")
    for kind in KINDS:
        places: Counter[str] = Counter()
        for run in runs:
            if run.kind == kind:
                p99 = run.summary.p99
                places.update(run.where(b, x) for b, x in run.samples if x >= p99)
        print(f"  {kind:<6}  " + ", ".join(f"{n} {where}" for where, n in places.most_common()))
    print()
    print("per kind, over migrations, median (min-max), ms:")
    for kind in KINDS:
        kept = [run.summary for run in runs if run.kind == kind]
        if not kept:
            continue
        print(
            f"  {kind:<6}  p50 {spread([s.p50 for s in kept], scale=1e3)}   "
            f"p99 {spread([s.p99 for s in kept], scale=1e3)}"
            f"   max {spread([s.max for s in kept], scale=1e3)}"
        )
    # Every sample of a kind together: a p99 over thousands of samples more,
    # less at the mercy of one migration's luck than a median of ratios.
    pooled = {
        kind: LatencySummary.of(x for run in runs if run.kind == kind for _, x in run.samples)
        for kind in KINDS
        if any(run.kind == kind and run.samples for run in runs)
    }
    if len(pooled) == len(KINDS):
        print(
            "all samples of a kind together, p99 ms: "
            + ", ".join(f"{kind} {ms(summary.p99)}" for kind, summary in pooled.items())
            + "; "
            + ", ".join(
                f"jobctl / {kind} {pooled['jobctl'].p99 / pooled[kind].p99:.2f}x"
                for kind in CLIENTS
            )
        )
    print()
    print(
        "samples slower than 1 / 2 / 5 ms outside the switchover, per second of sampling"
        " (QEMU's stalls, as each client met them), median (min-max) over migrations:"
    )
    for kind in KINDS:
        kept_runs = [run for run in runs if run.kind == kind]
        if kept_runs:
            rates = [spread([run.slow_per_second(ms) for run in kept_runs]) for ms in SLOW_MS]
            print(f"  {kind:<6}  " + " / ".join(rates))
    size = len(KINDS)
    rounds = [
        {run.kind: run for run in runs[i : i + size]} for i in range(0, len(runs) - size + 1, size)
    ]
    # "p99", "max" against the floor; "paced p99", ... against the others.
    names = {kind: "" if kind == "floor" else f"{kind} " for kind in CLIENTS}
    ratios: dict[str, list[float]] = {
        f"{names[kind]}{what}": [] for kind in CLIENTS for what in ("p99", "max")
    }
    print()
    print("ratio jobctl / floor, jobctl / paced floor and jobctl / raw trio client, per round:")
    for number, kinds in enumerate(rounds, start=1):
        mine = kinds["jobctl"].summary
        theirs = {kind: kinds[kind].summary for kind in CLIENTS}
        if not all(summary.p99 and summary.max for summary in theirs.values()):
            continue
        for kind, summary in theirs.items():
            ratios[f"{names[kind]}p99"].append(mine.p99 / summary.p99)
            ratios[f"{names[kind]}max"].append(mine.max / summary.max)
        print(
            f"  round {number}: p99 {ratios['p99'][-1]:.2f}x  max {ratios['max'][-1]:.2f}x"
            + "".join(
                f"   {kind}: p99 {ratios[f'{kind} p99'][-1]:.2f}x"
                f"  max {ratios[f'{kind} max'][-1]:.2f}x"
                for kind in CLIENTS
                if kind != "floor"
            )
            + f"  (downtime {' / '.join(str(kinds[kind].downtime_ms) for kind in KINDS)} ms)"
        )
    if ratios["p99"]:
        print(
            "  "
            + "   ".join(f"{name} {spread(values, unit='x')}" for name, values in ratios.items())
            + "   (median (min-max))"
        )

    # jobctl's own CPU: the bench process's in a jobctl migration minus its
    # CPU in the same round's floor migration (the flow alone).
    def per_sample(kind: Kind, cpu: Callable[[dict[Kind, Run]], float]) -> list[float]:
        return [cpu(kinds) / kinds[kind].summary.count for kinds in rounds if kinds[kind].samples]

    mine_cpu = per_sample("jobctl", lambda kinds: kinds["jobctl"].cpu - kinds["floor"].cpu)

    def own_cpu(kind: Kind) -> Callable[[dict[Kind, Run]], float]:
        return lambda kinds: kinds[kind].client_cpu

    client_cpu = {kind: per_sample(kind, own_cpu(kind)) for kind in CLIENTS}
    if mine_cpu and all(client_cpu.values()):
        print(
            "CPU per sample: jobctl (the bench process's CPU in a jobctl migration minus the"
            f" flow's alone in its round's floor one) {spread(mine_cpu, scale=1e6, unit=' µs')}, "
            + ", ".join(
                f"{kind} client {spread(cpu, scale=1e6, unit=' µs')}"
                for kind, cpu in client_cpu.items()
            )
        )
    # Per sample, and as a share of the time spent sampling.
    waits: dict[Kind, tuple[list[float], list[float]]] = {}
    for kind in KINDS:
        kept_runs = [run for run in runs if run.kind == kind and run.samples]
        waited_s = [run.waited if kind == "jobctl" else run.client_waited for run in kept_runs]
        waits[kind] = (
            [wait / len(run.samples) for wait, run in zip(waited_s, kept_runs, strict=True)],
            [wait / sampled(run.samples) for wait, run in zip(waited_s, kept_runs, strict=True)],
        )
    if all(per_sample for per_sample, _ in waits.values()):
        print(
            "waiting for a CPU (run-queue wait, /proc/thread-self/schedstat) per sample, and as"
            " a share of the sampling time: "
            + ", ".join(
                f"{kind}{' (the bench loop thread, flow included)' if kind == 'jobctl' else ''}"
                f" {spread(per_sample, scale=1e6, unit=' µs')}"
                f" = {spread(share, scale=100, digits=1, unit='%')}"
                for kind, (per_sample, share) in waits.items()
            )
        )
    print()
    if burn:
        print("aims: not judged (--floor-burn: the floor client is no floor)")
        return
    judged = (
        ("p99", "aim p99 <= {aim}x floor (median over rounds): {verdict}"),
        ("max", "aim max <= {aim}x floor (median over rounds): {verdict}"),
        (
            "paced p99",
            "not the issue's aim, for the same samples per second: p99 <= {aim}x the floor"
            " at jobctl's pace: {answer}",
        ),
        (
            "paced max",
            "not the issue's aim, for the same samples per second: max <= {aim}x the floor"
            " at jobctl's pace: {answer}",
        ),
        (
            "trio p99",
            "not the issue's aim, against a client on the same event loop: p99 <= {aim}x"
            " a raw trio client: {answer}",
        ),
        (
            "trio max",
            "not the issue's aim, against a client on the same event loop: max <= {aim}x"
            " a raw trio client: {answer}",
        ),
    )
    for name, line in judged:
        values = ratios[name]
        if values:
            median = statistics.median(values)
            within = sum(ratio <= RATIO_AIM for ratio in values)
            verdict, answer = ("met", "yes") if median <= RATIO_AIM else ("NOT met", "no")
            print(
                line.format(aim=RATIO_AIM, verdict=verdict, answer=answer)
                + f" ({median:.2f}x; {within} of {len(values)} rounds within)"
            )
    for kind in KINDS:
        held = [run.within_slack() for run in runs if run.kind == kind]
        ok = sum(h is True for h in held)
        verdict = "held" if held and ok == len(held) else "did NOT hold"
        label = "aim" if kind == "jobctl" else "for comparison,"
        print(
            f"{label} max <= downtime + {SLACK_MS:.0f} ms in every {kind} migration: "
            f"{verdict} ({ok} of {len(held)})"
        )


def count(low: int, what: str, *, rounds: bool = False) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must be a whole number, not {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{what} must be at least {low}, not {value}")
        if rounds and value % len(KINDS):
            raise argparse.ArgumentTypeError(
                f"{what} must be a multiple of {len(KINDS)} (rounds of a jobctl, a floor, a"
                f" paced floor and a raw trio client's migration), not {value}"
            )
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--migrations",
        type=count(len(KINDS), "--migrations", rounds=True),
        default=None,
        help="how many measured migrations, a quarter of each kind (default 16; --quick: 4)",
    )
    parser.add_argument(
        "--ram",
        type=count(16, "--ram"),
        default=None,
        metavar="MiB",
        help="the VM's RAM, random bytes (default 512; --quick: 128)",
    )
    parser.add_argument(
        "--bandwidth",
        type=count(1, "--bandwidth"),
        default=None,
        metavar="MiB/s",
        help="the migration's max-bandwidth (default 160; --quick: 128)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run: 4 small migrations")
    parser.add_argument(
        "--floor-burn",
        type=float,
        default=0.0,
        metavar="µs",
        help="a diagnostic, not the floor: the floor client also spends this much CPU per sample"
        " (busy, spread over its commands), to see what a client as CPU-hungry as jobctl gets",
    )
    args = parser.parse_args()
    if not args.floor_burn >= 0:
        parser.error("--floor-burn must be >= 0")
    migrations: int = args.migrations or (len(KINDS) if args.quick else 16)
    ram: int = args.ram or (128 if args.quick else 512)
    bandwidth: int = args.bandwidth or (128 if args.quick else 160)
    if shutil.which("qemu-system-x86_64") is None:
        print("bench_domstats: qemu-system-x86_64 is not installed", file=sys.stderr)
        return 2
    return anyio.run(bench, migrations, ram, bandwidth, args.floor_burn / 1e6, backend="trio")


if __name__ == "__main__":
    sys.exit(main())
