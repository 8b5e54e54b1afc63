"""``jobctl serve``: the live job feed and its timeline page, over a simulated
workload (:func:`jobctl.demo.simulated_workload`: the QEMU flows on simulated hosts).

``jobctl demo --serve`` reuses :func:`add_feed_arguments` and
:func:`feed_options` so that both commands take the same options; both take
``--metrics-port`` (:func:`add_metrics_arguments`), served by
:func:`serve_domain_metrics` (``jobctl.metrics``, loaded only then).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

import trio

from jobctl import TraceHub
from jobctl._groups import unwrap_single
from jobctl.cli._argtypes import DeprecatedAlias, bounded_float, bounded_int, port
from jobctl.demo._workload import simulated_workload
from jobctl.feed._feed import (
    DEFAULT_BUFFER,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
)
from jobctl.feed._serve import FeedAddress, FeedConfigError, check_listen, serve_feed
from jobctl.qemu import VM

__all__ = [
    "DESCRIPTION",
    "MAX_BUFFER",
    "MAX_CONNECTIONS",
    "MAX_DURATION",
    "MAX_SERVE_DOMAINS",
    "add_arguments",
    "add_feed_arguments",
    "add_metrics_arguments",
    "announce",
    "check_metrics",
    "feed_options",
    "run",
    "serve_domain_metrics",
]

#: ``jobctl serve --help``'s description (plain text).
DESCRIPTION = (
    "Serve the live job feed (a websocket) and its timeline page (HTTP) over a "
    "simulated workload: simulated QEMU hosts whose VMs migrate, back up and save "
    "while queries run against them. Open the printed page URL in a browser. "
    "Runs until --duration ends or until interrupted (Ctrl-C or SIGTERM; exit status 0)."
)
#: Events per client: each holds up to this many (a few hundred bytes each).
MAX_BUFFER = 65536
#: --max-clients and --max-handshakes: each connection is a socket and a few
#: tasks; more than this wants a proxy in front of the feed.
MAX_CONNECTIONS = 4096
#: Timeouts and intervals, in seconds: from 0.1 s to an hour.
_SECONDS = bounded_float(0.1, 3600.0, "seconds")
#: ``jobctl serve --domains``: the simulated workload runs a simulated QEMU
#: and 2 tasks per domain (and a second QEMU while it migrates).
MAX_SERVE_DOMAINS = 256
#: ``jobctl serve --duration``: 30 days (no option: until interrupted).
MAX_DURATION = 30 * 24 * 3600.0


def add_feed_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say where and how the feed listens."""
    group = parser.add_argument_group("live feed")
    group.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="IP address to listen on (default: 127.0.0.1; anything not loopback needs --token)",
    )
    group.add_argument(
        "--port",
        dest="http_port",
        type=port,
        default=8766,
        metavar="PORT",
        help="port of the timeline page, the URL printed (0..65535, 0: any free one; "
        "default: 8766)",
    )
    group.add_argument(
        "--feed-port",
        dest="ws_port",
        type=port,
        default=8765,
        metavar="PORT",
        help="port of the websocket feed the page reads (0..65535, 0: any free one; default: 8765)",
    )
    # The names before 0.1.0's, kept working (a warning on stderr each time).
    for old, dest, new in (
        ("--http-port", "http_port", "--port"),
        ("--ws-port", "ws_port", "--feed-port"),
    ):
        group.add_argument(
            old,
            dest=dest,
            type=port,
            action=DeprecatedAlias,
            const=new,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    group.add_argument(
        "--token",
        default=os.environ.get("JOBCTL_FEED_TOKEN") or None,
        help="a secret clients must present (default: $JOBCTL_FEED_TOKEN)",
    )
    group.add_argument(
        "--buffer",
        type=bounded_int(1, MAX_BUFFER),
        default=DEFAULT_BUFFER,
        metavar="EVENTS",
        help="events buffered per client before a slow one loses some "
        f"(1..{MAX_BUFFER}, default: {DEFAULT_BUFFER})",
    )
    group.add_argument(
        "--max-clients",
        type=bounded_int(1, MAX_CONNECTIONS),
        default=DEFAULT_MAX_CLIENTS,
        metavar="N",
        help="websocket clients at once, counted once their handshake completed; when full, "
        "an unresponsive one makes room for a fresh one "
        f"(1..{MAX_CONNECTIONS}, default: {DEFAULT_MAX_CLIENTS})",
    )
    group.add_argument(
        "--max-handshakes",
        type=bounded_int(1, MAX_CONNECTIONS),
        default=DEFAULT_MAX_HANDSHAKES,
        metavar="N",
        help="connections still in their handshake (or page request) at once; one more drops "
        f"the oldest (1..{MAX_CONNECTIONS}, default: {DEFAULT_MAX_HANDSHAKES})",
    )
    group.add_argument(
        "--handshake-timeout",
        type=_SECONDS,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="time a connection has to complete its websocket handshake (or page request) "
        f"(0.1..3600, default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    group.add_argument(
        "--ping-interval",
        type=_SECONDS,
        default=DEFAULT_PING_INTERVAL,
        metavar="SECONDS",
        help=f"time between pings to each client (0.1..3600, default: {DEFAULT_PING_INTERVAL:g})",
    )
    group.add_argument(
        "--ping-timeout",
        type=_SECONDS,
        default=DEFAULT_PING_TIMEOUT,
        metavar="SECONDS",
        help="time a client has to answer a ping (its pong) before it is cut off "
        f"(0.1..3600, default: {DEFAULT_PING_TIMEOUT:g})",
    )


def feed_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`serve_feed` from the parsed options.

    Raises :class:`FeedConfigError` when the address and token do not go together.
    """
    check_listen(args.listen, args.token)
    return {
        "host": args.listen,
        "ws_port": args.ws_port,
        "http_port": args.http_port,
        "token": args.token,
        "buffer": args.buffer,
        "max_clients": args.max_clients,
        "max_handshakes": args.max_handshakes,
        "handshake_timeout": args.handshake_timeout,
        "ping_interval": args.ping_interval,
        "ping_timeout": args.ping_timeout,
    }


def announce(address: FeedAddress, prog: str = "jobctl serve") -> None:
    """Tell the operator where to look (on stdout, one line each)."""
    hint = "#token=YOUR-TOKEN" if address.token_required else ""
    print(f"{prog}: timeline page {address.page_url}{hint}", flush=True)
    print(f"{prog}: websocket feed {address.ws_url}", flush=True)


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """The option that serves Prometheus metrics (``jobctl.metrics``)."""
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--metrics-port",
        type=port,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics of every domain at http://ADDRESS:PORT/metrics, "
        "ADDRESS being --listen's (0..65535, 0: any free one; default: no metrics)",
    )


def check_metrics(args: argparse.Namespace) -> str | None:
    """None if the metrics can be served as asked (or were not asked for);
    else why not, in one line."""
    if args.metrics_port is None:
        return None
    try:
        import jobctl.metrics  # noqa: F401
    except ModuleNotFoundError as exc:
        return f"--metrics-port: {exc}"
    return None


async def serve_domain_metrics(
    hub: TraceHub | None,
    host: str,
    port: int,
    prog: str,
    out: TextIO,
    *,
    task_status: trio.TaskStatus[Callable[[VM], object]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the metrics of the VMs on ``hub`` at ``host:port`` until
    cancelled, and say where on ``out`` (``jobctl demo``'s stdout is its
    report). Started, it hands over what adds a VM (``JobMetrics.add``)."""
    from prometheus_client import CollectorRegistry

    from jobctl.metrics import JobMetrics, serve_metrics

    registry = CollectorRegistry()
    with JobMetrics(hub) as metrics:
        registry.register(metrics)
        async with unwrap_single(), trio.open_nursery() as nursery:
            address = await nursery.start(partial(serve_metrics, registry, host=host, port=port))
            print(f"{prog}: metrics {address.url}", file=out, flush=True)
            task_status.started(metrics.add)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_feed_arguments(parser)
    add_metrics_arguments(parser)
    group = parser.add_argument_group("simulated workload")
    group.add_argument(
        "--domains",
        type=bounded_int(1, MAX_SERVE_DOMAINS),
        default=3,
        help="simulated VMs, each a domain on both simulated hosts "
        f"(1..{MAX_SERVE_DOMAINS}, default: 3)",
    )
    group.add_argument(
        "--seed",
        type=bounded_int(0, 2**64 - 1),
        default=None,
        help="random seed of the workload (0..2**64-1, default: a fresh one)",
    )
    group.add_argument(
        "--duration",
        type=bounded_float(0.001, MAX_DURATION, "seconds"),
        default=None,
        metavar="SECONDS",
        help=f"stop after this long (0.001..{MAX_DURATION:.0f}, default: run until interrupted)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the feed and page over a simulated workload until ``--duration``
    ends or SIGINT/SIGTERM arrives (both a normal stop: status 0)."""
    try:
        options = feed_options(args)
    except FeedConfigError as exc:
        print(f"jobctl serve: error: {exc}", file=sys.stderr)
        return 2
    problem = check_metrics(args)
    if problem is not None:
        print(f"jobctl serve: error: {problem}", file=sys.stderr)
        return 2
    try:
        trio.run(_main, options, args.domains, args.seed, args.duration, args.metrics_port)
    except OSError as exc:
        print(f"jobctl serve: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("jobctl serve: stopping", file=sys.stderr, flush=True)
            scope.cancel()
            return


def feed_describer(
    also: Callable[[VM], object] | None = None,
) -> tuple[Callable[[VM], object], Callable[[str], dict[str, Any] | None]]:
    """``(on_vm, describe)``: ``on_vm`` keeps each VM the workload makes (and
    calls ``also``); ``describe`` tells the feed a domain's host and QEMU run
    state, from the VM's observed state (never asking QEMU)."""
    vms: dict[str, VM] = {}

    def on_vm(vm: VM) -> object:
        vms[vm.domain.name] = vm
        return None if also is None else also(vm)

    def describe(name: str) -> dict[str, Any] | None:
        vm = vms.get(name)
        if vm is None:
            return None
        run = vm.observed.run
        return {"host": vm.host.name, "run_state": None if run is None else run.status}

    return on_vm, describe


async def _main(
    options: dict[str, Any],
    domains: int,
    seed: int | None,
    duration: float | None,
    metrics_port: int | None,
) -> None:
    with trio.move_on_after(math.inf if duration is None else duration):
        async with unwrap_single(), trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            metrics_vm = None
            if metrics_port is not None:
                prog, host = "jobctl serve", options["host"]
                serving = partial(serve_domain_metrics, None, host, metrics_port, prog, sys.stdout)
                metrics_vm = await nursery.start(serving)
            on_vm, describe = feed_describer(metrics_vm)
            address = await nursery.start(partial(serve_feed, describe=describe, **options))
            announce(address)
            workload = partial(simulated_workload, domains=domains, seed=seed, on_vm=on_vm)
            nursery.start_soon(workload)
