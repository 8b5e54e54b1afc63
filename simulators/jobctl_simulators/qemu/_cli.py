"""``python -m jobctl_simulators.qemu``: one simulated QEMU process.

Takes QEMU's spellings where they exist (``-qmp``, ``-incoming``, ``-S``,
``-m``, ``-name``) so it can stand in for ``qemu-system-x86_64`` in scripts.
Prints ``QMP <address>`` on stdout for every monitor once it listens (the
real port for ``tcp:HOST:0``). Exit status: the VM's (0 after ``quit``, 1
after a failed incoming migration); killed by the signal of a
:class:`~jobctl_simulators.qemu.Die` fault; 3 with a message on stderr after a
concurrency violation in ``--strict`` mode. SIGINT/SIGTERM shut down like
QEMU (SHUTDOWN event, reason ``host-signal``, status 0).

Migration between two such processes goes over a real socket: give the
destination ``-incoming defer`` and run ``migrate-incoming`` with a
``tcp:``/``unix:`` URI, then ``migrate`` on the source to the same URI.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from collections.abc import Sequence

import anyio

from ._block import Disk
from ._detector import ConcurrencyDetector
from ._errors import ConcurrencyViolationError, SimulatorError
from ._faults import FaultPlan, FaultRule
from ._host import SimulatedHost
from ._migration import MigrationModel
from ._vm import SimulatedQemu

__all__ = ["main", "parse_size"]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
VIOLATION_EXIT = 3


def parse_size(text: str, default_unit: str = "") -> int:
    """``64M``, ``1G``, ``4096``; a bare number is in ``default_unit``."""
    text = text.strip().upper()
    number = text.rstrip("BKMGT")
    unit = text[len(number) :] or default_unit
    unit = unit.removesuffix("B") if len(unit) > 1 else unit
    if unit not in _UNITS or not number:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    return int(value * _UNITS[unit])


def _endpoint(text: str) -> str:
    """``unix:PATH`` or ``tcp:HOST:PORT``; QEMU's ``,server=on,wait=off``
    style options are accepted and ignored."""
    address = text.split(",", 1)[0]
    if address.startswith("unix:") and len(address) > len("unix:"):
        return address
    if address.startswith("tcp:"):
        host, _, port = address.removeprefix("tcp:").rpartition(":")
        if host and port.isdigit():
            return address
    raise argparse.ArgumentTypeError(f"expected unix:PATH or tcp:HOST:PORT, got {text!r}")


def _disk(text: str) -> Disk:
    """``NODE[,size=SIZE][,device=ID][,file=PATH][,format=qcow2|raw]``."""
    node, *options = text.split(",")
    fields: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("size", "device", "file", "format"):
            raise argparse.ArgumentTypeError(f"bad disk option {option!r} in {text!r}")
        fields[key] = value
    try:
        return Disk(
            node,
            size=parse_size(fields.get("size", "64M")),
            filename=fields.get("file"),
            format=fields.get("format", "qcow2"),
            device=fields.get("device"),
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"disk {text!r}: {exc}") from None


def _latency(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _fault(text: str) -> FaultRule:
    try:
        return FaultRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobctl_simulators.qemu",
        description="A simulated QEMU 7.2 speaking QMP.",
    )
    parser.add_argument("-name", "--name", default="vm", help="VM name (default: vm)")
    parser.add_argument(
        "-qmp",
        "--qmp",
        action="append",
        type=_endpoint,
        default=[],
        metavar="ADDRESS",
        help="a QMP monitor on unix:PATH or tcp:HOST:PORT (repeatable)",
    )
    parser.add_argument(
        "-incoming", "--incoming", metavar="URI", help="'defer' or tcp:HOST:PORT / unix:PATH"
    )
    parser.add_argument("-S", dest="start_paused", action="store_true", help="start paused")
    parser.add_argument(
        "-m",
        "--memory",
        type=lambda text: parse_size(text, "M"),
        default=64 << 20,
        help="RAM size (bare number: MiB; default 64M)",
    )
    parser.add_argument(
        "--dirty-rate", type=parse_size, default=0, help="bytes/s the guest dirties"
    )
    parser.add_argument(
        "--link-speed", type=parse_size, default=1_250_000_000, help="network bytes/s"
    )
    parser.add_argument(
        "--device-state-time",
        type=float,
        default=0.03,
        help="fixed part of the switchover downtime, seconds",
    )
    parser.add_argument(
        "--disk",
        action="append",
        type=_disk,
        default=[],
        metavar="NODE[,size=..][,device=..]",
        help="a -blockdev node; device=ID attaches it to a guest device",
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="SPEC",
        help="COMMAND[#N]=KIND[:ARG], e.g. query-migrate#2=drop, *=latency:0.2",
    )
    parser.add_argument(
        "--command-latency",
        type=_latency,
        default=0.0,
        metavar="SECONDS",
        help="how late every command's reply comes (default 0)",
    )
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument(
        "--fault-probability", type=float, default=0.0, help="random fault rate per command"
    )
    parser.add_argument(
        "--strict", action="store_true", help="crash at the first concurrency violation"
    )
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    return parser


async def _watch_signals(vm: SimulatedQemu) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            vm.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
            vm.request_exit(0)


async def _run(args: argparse.Namespace) -> int:
    host = SimulatedHost(detector=ConcurrencyDetector(strict=args.strict), network=True)
    vm = SimulatedQemu(
        args.name,
        host=host,
        migration=MigrationModel(
            ram_size=args.memory,
            dirty_rate=args.dirty_rate,
            link_speed=args.link_speed,
            device_state_time=args.device_state_time,
        ),
        disks=args.disk,
        incoming=args.incoming,
        start_paused=args.start_paused,
        faults=FaultPlan(args.fault, seed=args.fault_seed, probability=args.fault_probability),
        command_latency=args.command_latency,
    )
    try:
        async with vm, anyio.create_task_group() as tg:
            for endpoint in args.qmp:
                monitor = vm.add_monitor()
                if endpoint.startswith("unix:"):
                    address = await monitor.serve_unix(endpoint.removeprefix("unix:"))
                else:
                    host_name, _, port = endpoint.removeprefix("tcp:").rpartition(":")
                    bound_host, bound_port = await monitor.serve_tcp(host_name, int(port))
                    address = f"tcp:{bound_host}:{bound_port}"
                print(f"QMP {address}", flush=True)
            tg.start_soon(_watch_signals, vm)
            status = await vm.wait_exited()
            tg.cancel_scope.cancel()
    except ConcurrencyViolationError as exc:
        print(f"simulated qemu: {exc}", file=sys.stderr, flush=True)
        return VIOLATION_EXIT
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (or die by a fault's signal)."""
    args = build_parser().parse_args(argv)
    if not args.qmp:
        build_parser().error("at least one -qmp monitor is needed")
    try:
        status = anyio.run(_run, args, backend=args.backend)
    except (OSError, SimulatorError) as exc:
        print(f"simulated qemu: {exc}", file=sys.stderr)
        return 1
    if status < 0:
        sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status
