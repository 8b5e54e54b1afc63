"""``jobctl serve``: the live job feed and its timeline page, over a simulated workload.

``jobctl demo --serve`` reuses :func:`add_feed_arguments` and
:func:`feed_options` so that both commands take the same options.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from functools import partial
from typing import Any

import trio

from jobctl._argtypes import port, positive_float, positive_int

from ._serve import FeedAddress, FeedConfigError, check_listen, serve_feed
from ._workload import simulated_workload

__all__ = ["add_arguments", "add_feed_arguments", "announce", "feed_options", "run"]


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
        "--ws-port", type=port, default=8765, help="websocket feed port (default: 8765; 0: any)"
    )
    group.add_argument(
        "--http-port", type=port, default=8766, help="timeline page port (default: 8766; 0: any)"
    )
    group.add_argument(
        "--token",
        default=os.environ.get("JOBCTL_FEED_TOKEN") or None,
        help="a secret clients must present (default: $JOBCTL_FEED_TOKEN)",
    )
    group.add_argument(
        "--buffer",
        type=positive_int,
        default=1024,
        metavar="EVENTS",
        help="events buffered per client before a slow one loses some (default: 1024)",
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
    }


def announce(address: FeedAddress, prog: str = "jobctl serve") -> None:
    """Tell the operator where to look (on stdout, one line each)."""
    hint = "#token=YOUR-TOKEN" if address.token_required else ""
    print(f"{prog}: timeline page {address.page_url}{hint}", flush=True)
    print(f"{prog}: websocket feed {address.ws_url}", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_feed_arguments(parser)
    group = parser.add_argument_group("simulated workload")
    group.add_argument(
        "--domains", type=positive_int, default=3, help="simulated domains (default: 3)"
    )
    group.add_argument("--seed", type=int, default=None, help="random seed of the workload")
    group.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until interrupted)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the feed and page over a simulated workload until ``--duration``
    ends or SIGINT/SIGTERM arrives (both a normal stop: status 0)."""
    try:
        options = feed_options(args)
    except FeedConfigError as exc:
        print(f"jobctl serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(_main, options, args.domains, args.seed, args.duration)
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


async def _main(
    options: dict[str, Any], domains: int, seed: int | None, duration: float | None
) -> None:
    with trio.move_on_after(math.inf if duration is None else duration):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            address = await nursery.start(partial(serve_feed, **options))
            announce(address)
            nursery.start_soon(partial(simulated_workload, domains=domains, seed=seed))
