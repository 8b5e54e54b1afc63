"""``jobctl demo``: migrations of a VM with a disk, back and forth between two
hosts, while domstats runs against it in a tight loop; then a report.

Exits 0 when every job completed with no monitor violation and no domstats
error, 1 otherwise, 2 for bad options (a one-line error, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from functools import partial
from typing import Any, TextIO, final

import trio

from jobctl._argtypes import port, positive_int
from jobctl._errors import JobError
from jobctl._groups import unwrap_single
from jobctl._trace import TraceHub
from jobctl.qemu._demo import (
    JOBS,
    NOUNS,
    DemoConfig,
    DemoCounters,
    DemoReport,
    open_demo_hosts,
    run_demo,
)

__all__ = ["add_arguments", "run"]

_PROG = "jobctl demo"
_BAR_WIDTH = 30
_REFRESH = 0.1
#: RAM per VM, in MiB (real QEMU writes it to a file of random bytes).
_MAX_RAM = 4096


def _ram(text: str) -> int:
    value = positive_int(text)
    if value > _MAX_RAM:
        raise argparse.ArgumentTypeError(f"at most {_MAX_RAM} MiB, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (and the live feed's, for ``--serve``)."""
    from jobctl.feed._serve_cli import add_feed_arguments

    parser.add_argument(
        "--migrations",
        type=positive_int,
        default=100,
        metavar="N",
        help="jobs per VM (default: 100)",
    )
    parser.add_argument(
        "--domains",
        type=positive_int,
        default=1,
        metavar="K",
        help="VMs at once, each with its own domstats loop (default: 1)",
    )
    parser.add_argument(
        "--job", choices=JOBS, default="migrate", help="the job to repeat (default: migrate)"
    )
    parser.add_argument(
        "--qemu",
        action="store_true",
        help="real qemu-system-x86_64 (TCG) instead of the simulator",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON on standard output"
    )
    parser.add_argument(
        "--ram",
        type=_ram,
        default=64,
        metavar="MiB",
        help="RAM per VM; random bytes on real QEMU (default: 64)",
    )
    parser.add_argument(
        "--bandwidth",
        type=positive_int,
        default=1024,
        metavar="MiB/s",
        help="migration bandwidth limit (default: 1024)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve the live job feed and timeline page while the demo runs, and after it "
        "until interrupted",
    )
    add_feed_arguments(parser)
    parser.add_argument(
        "--serve-port",
        dest="ws_port",
        type=port,
        default=argparse.SUPPRESS,
        metavar="PORT",
        help="the same as --ws-port",
    )


def _config(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        migrations=args.migrations,
        domains=args.domains,
        job=args.job,
        ram_mib=args.ram,
        bandwidth=args.bandwidth,
    )


@final
class _ProgressBar:
    """A one-line bar on a terminal, redrawn a few times a second."""

    def __init__(self, counters: DemoCounters, out: TextIO, noun: str) -> None:
        self._counters = counters
        self._out = out
        self._noun = noun

    def draw(self) -> None:
        c = self._counters
        done = c.completed + c.failed
        filled = _BAR_WIDTH * done // c.total if c.total else 0
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self._out.write(
            f"\r[{bar}] {done}/{c.total} {self._noun}, {c.failed} failed, {c.domstats} domstats"
        )
        self._out.flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await trio.sleep(_REFRESH)

    def finish(self) -> None:
        self.draw()
        self._out.write("\n")
        self._out.flush()


def _print_report(report: DemoReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2), flush=True)
    else:
        print(report.describe(), flush=True)


async def _watch_signals(scope: trio.CancelScope, interrupted: list[int]) -> None:
    """Ctrl-C or SIGTERM: stop the demo cleanly (every QEMU stopped, every
    file removed) instead of dying half-way."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            interrupted.append(signum)
            scope.cancel()


async def _main(
    config: DemoConfig,
    qemu: bool,
    as_json: bool,
    feed: dict[str, Any] | None,
    reports: list[DemoReport],
    interrupted: list[int],
) -> None:
    hub = TraceHub()
    counters = DemoCounters()
    async with unwrap_single(), trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, nursery.cancel_scope, interrupted)
        if feed is not None:
            from jobctl.feed import serve_feed

            address = await nursery.start(partial(serve_feed, hub, **feed))
            print(f"{_PROG}: timeline page {address.page_url}", file=sys.stderr, flush=True)
        bar = _ProgressBar(counters, sys.stderr, NOUNS[config.job]) if sys.stderr.isatty() else None
        if bar is not None:
            nursery.start_soon(bar.run)
        async with open_demo_hosts(qemu=qemu) as hosts:
            report = await run_demo(
                config,
                hosts.hosts,
                hub=hub,
                counters=counters,
                simulator_violations=hosts.simulator_violations,
                backend=hosts.backend,
            )
        if bar is not None:
            bar.finish()
        reports.append(report)
        _print_report(report, as_json)
        if feed is not None:
            print(f"{_PROG}: serving the feed until interrupted", file=sys.stderr, flush=True)
            await trio.sleep(math.inf)
        nursery.cancel_scope.cancel()


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed options; returns the exit status."""
    try:
        config = _config(args)
        feed = None
        if args.serve:
            from jobctl.feed._serve_cli import feed_options

            feed = feed_options(args)
    except ValueError as exc:  # includes the feed's FeedConfigError
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    reports: list[DemoReport] = []
    interrupted: list[int] = []
    try:
        trio.run(_main, config, args.qemu, args.json, feed, reports, interrupted)
    except (JobError, OSError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    if not reports:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 128 + (interrupted[0] if interrupted else signal.SIGINT)
    return 0 if reports[0].ok else 1
