"""``jobctl demo``: migrations of a VM with a disk, back and forth between two
hosts, while domstats runs against it in a tight loop; then a report.

Exits 0 when every job completed with no monitor violation and no domstats
error, 1 otherwise, 2 for bad options (a one-line error naming the option,
the value and its range; no traceback). Ctrl-C (SIGINT) or SIGTERM stops a
run: every VM is stopped, the report of what ran so far is printed, and the
status is 128 + the signal (130 for Ctrl-C), within :data:`INTERRUPT_BOUND`
seconds on the simulator at the largest ``--domains``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from functools import partial
from typing import Any, TextIO, final

import trio

from jobctl._core._errors import JobError
from jobctl._core._trace import TraceHub
from jobctl._groups import unwrap_single
from jobctl.cli._argtypes import DeprecatedAlias, bounded_int, port
from jobctl.demo import (
    JOBS,
    NOUNS,
    DemoConfig,
    DemoCounters,
    DemoReport,
    open_demo_hosts,
    run_demo,
)
from jobctl.qemu._errors import FlowError
from jobctl.qemu._migration import UNLIMITED_BANDWIDTH
from jobctl.qmp import QMPError

__all__ = [
    "DESCRIPTION",
    "INTERRUPT_BOUND",
    "MAX_BANDWIDTH",
    "MAX_DOMAINS",
    "MAX_MIGRATIONS",
    "MAX_RAM",
    "add_arguments",
    "run",
]

#: ``jobctl demo --help``'s description (plain text).
DESCRIPTION = (
    "Run a job (a migration by default) of VMs with a disk, back and forth between two "
    "hosts, while domstats queries each VM in a tight loop; then print a report. "
    "The hosts are simulated QEMU, or real qemu-system-x86_64 with --qemu. "
    "Exit status: 0 when every job completed with no monitor violation and no domstats "
    "error, 1 otherwise, 2 for bad options, 128 + the signal when interrupted "
    "(Ctrl-C or SIGTERM stops every VM and prints the report of what ran)."
)
_PROG = "jobctl demo"
_BAR_WIDTH = 30
_REFRESH = 0.1
#: Jobs per VM.
MAX_MIGRATIONS = 100_000
#: VMs at once. Each is a QEMU (simulated or real) on each host, a domstats
#: loop and a lane in the timeline, and Ctrl-C must stop every one within
#: INTERRUPT_BOUND: on the simulator, on 2 cores, that takes about 2 s at 128
#: VMs (and 3 to 4 s at 256, too close to the bound). 128 real QEMUs of the
#: default 64 MiB, doubled while they migrate, also fit a 24 GiB host.
MAX_DOMAINS = 128
#: RAM per VM, in MiB (real QEMU writes it to a file of random bytes).
MAX_RAM = 4096
#: Migration bandwidth, MiB/s: 1 TiB/s, what jobctl's migrations use for "no
#: limit". QEMU's ``max-bandwidth`` takes bytes/s up to 2**64 - 1 (a uint64,
#: so 2**44 - 1 MiB/s), a rate no link has.
MAX_BANDWIDTH = UNLIMITED_BANDWIDTH // (1 << 20)
#: Seconds from Ctrl-C to the exit, every VM stopped (simulator, MAX_DOMAINS).
INTERRUPT_BOUND = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (and the live feed's, for ``--serve``)."""
    from jobctl.cli._serve import add_feed_arguments, add_metrics_arguments

    parser.add_argument(
        "--migrations",
        type=bounded_int(1, MAX_MIGRATIONS),
        default=100,
        metavar="N",
        help=f"jobs per VM (1..{MAX_MIGRATIONS}, default: 100)",
    )
    parser.add_argument(
        "--domains",
        type=bounded_int(1, MAX_DOMAINS),
        default=1,
        metavar="K",
        help=f"VMs at once, each with its own domstats loop (1..{MAX_DOMAINS}, default: 1)",
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
        type=bounded_int(1, MAX_RAM, "MiB"),
        default=64,
        metavar="MiB",
        help=f"RAM per VM; random bytes on real QEMU (1..{MAX_RAM}, default: 64)",
    )
    parser.add_argument(
        "--bandwidth",
        type=bounded_int(1, MAX_BANDWIDTH, "MiB/s"),
        default=1024,
        metavar="MiB/s",
        help=f"migration bandwidth limit (1..{MAX_BANDWIDTH}, i.e. up to 1 TiB/s; default: 1024)",
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
        action=DeprecatedAlias,
        const="--feed-port (the websocket feed's port, which it set) or --port (the page's)",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    add_metrics_arguments(parser)


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


@final
class _Run:
    """One run of the demo: what it did so far, and how it ended."""

    def __init__(self, config: DemoConfig, qemu: bool) -> None:
        self.config = config
        self.backend = "qemu" if qemu else "simulator"
        self.counters = DemoCounters()
        self.report: DemoReport | None = None
        #: The signals that arrived (the first one stopped the run).
        self.signals: list[int] = []

    def interrupted_report(self, signum: int, duration: float) -> dict[str, Any]:
        """What ran before ``signum`` stopped the run (JSON-ready)."""
        c = self.counters
        return {
            "ok": False,
            "interrupted": signal.Signals(signum).name,
            "job": self.config.job,
            "backend": self.backend,
            "domains": self.config.domains,
            "jobs": {"requested": self.config.total, "completed": c.completed, "failed": c.failed},
            "domstats": {"calls": c.domstats},
            "duration_s": round(duration, 3),
        }


def _describe_interrupted(report: dict[str, Any]) -> str:
    jobs = report["jobs"]
    return "\n".join(
        [
            f"interrupted by {report['interrupted']} after {report['duration_s']:.1f} s; "
            "every VM stopped",
            f"{NOUNS[report['job']]}: {jobs['completed']}/{jobs['requested']} completed, "
            f"{jobs['failed']} failed ({report['domains']} VM(s), {report['backend']})",
            f"domstats calls: {report['domstats']['calls']}",
            "result: INTERRUPTED",
        ]
    )


async def _watch_signals(scope: trio.CancelScope, signals_seen: list[int]) -> None:
    """Ctrl-C or SIGTERM: stop the demo cleanly (every QEMU stopped, every
    file removed) instead of dying half-way."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            signals_seen.append(signum)
            scope.cancel()


async def _main(
    run: _Run,
    qemu: bool,
    as_json: bool,
    feed: dict[str, Any] | None,
    metrics: tuple[str, int] | None,
) -> None:
    hub = TraceHub()
    config, counters = run.config, run.counters
    async with unwrap_single(), trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, nursery.cancel_scope, run.signals)
        on_vm = None
        if metrics is not None:
            from jobctl.cli._serve import serve_domain_metrics

            serving = partial(serve_domain_metrics, hub, *metrics, _PROG, sys.stderr)
            on_vm = await nursery.start(serving)
        if feed is not None:
            from jobctl.cli._serve import feed_describer
            from jobctl.feed import serve_feed

            on_vm, describe = feed_describer(on_vm)
            serving_feed = partial(serve_feed, hub, describe=describe, **feed)
            address = await nursery.start(serving_feed)
            print(f"{_PROG}: timeline page {address.page_url}", file=sys.stderr, flush=True)
        bar = _ProgressBar(counters, sys.stderr, NOUNS[config.job]) if sys.stderr.isatty() else None
        if bar is not None:
            nursery.start_soon(bar.run)
        try:
            async with open_demo_hosts(qemu=qemu) as hosts:
                report = await run_demo(
                    config,
                    hosts.hosts,
                    hub=hub,
                    counters=counters,
                    simulator_violations=hosts.simulator_violations,
                    backend=hosts.backend,
                    on_vm=on_vm,
                )
        finally:
            if bar is not None:
                bar.finish()
        run.report = report
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
            from jobctl.cli._serve import feed_options

            feed = feed_options(args)
    except ValueError as exc:  # includes the feed's FeedConfigError
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    from jobctl.cli._serve import check_metrics

    problem = check_metrics(args)
    if problem is not None:
        print(f"{_PROG}: error: {problem}", file=sys.stderr)
        return 2
    metrics = None if args.metrics_port is None else (args.listen, args.metrics_port)
    demo = _Run(config, args.qemu)
    began = time.monotonic()
    try:
        trio.run(_main, demo, args.qemu, args.json, feed, metrics)
    except (JobError, FlowError, QMPError, OSError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before the signal watcher was up: nothing had started yet.
        demo.signals.append(signal.SIGINT)
    if demo.report is not None:
        return 0 if demo.report.ok else 1
    signum = demo.signals[0] if demo.signals else signal.SIGINT
    partial_report = demo.interrupted_report(signum, time.monotonic() - began)
    if args.json:
        print(json.dumps(partial_report, indent=2), flush=True)
    else:
        print(_describe_interrupted(partial_report), flush=True)
    print(f"{_PROG}: interrupted", file=sys.stderr)
    return 128 + signum
