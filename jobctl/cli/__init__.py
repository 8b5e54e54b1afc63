"""The jobctl command: jobctl demo and jobctl serve.

Each subcommand lives with the part it belongs to; this module only
dispatches, and turns bad options into a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


_DESCRIPTION = (
    "Structured-concurrency job control for virtualization managers: "
    "jobctl demo runs migrations (or other jobs) of VMs while domstats queries them, "
    "jobctl serve shows a simulated workload's jobs live on a timeline page."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jobctl`` parser: ``--version``, and one subparser per command,
    each with its description; a bad option is a one-line error (status 2)."""
    from jobctl import __version__

    parser = _Parser(prog="jobctl", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"jobctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    try:
        from jobctl.cli import _demo as _demo_cli
        from jobctl.cli import _serve as _serve_cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("trio", "trio_websocket"):
            raise
        missing = exc.name

        def needs_trio(args: argparse.Namespace) -> int:
            print(
                f"jobctl: jobctl {args.command} runs on trio, and {missing} is not "
                "installed: pip install 'virt-jobctl[trio]'",
                file=sys.stderr,
            )
            return 1

        for name in ("demo", "serve"):
            command = sub.add_parser(name, help=f"(needs the trio extra) jobctl {name}")
            # Any options: the answer is the same.
            command.set_defaults(run=needs_trio, any_options=True)
        return parser
    demo = sub.add_parser(
        "demo",
        help="migrations with domstats on simulated (or real) QEMU",
        description=_demo_cli.DESCRIPTION,
    )
    _demo_cli.add_arguments(demo)
    demo.set_defaults(run=_demo_cli.run)
    serve = sub.add_parser(
        "serve", help="the live job feed and timeline page", description=_serve_cli.DESCRIPTION
    )
    _serve_cli.add_arguments(serve)
    serve.set_defaults(run=_serve_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jobctl`` with ``argv`` (default: the process's arguments) and
    return the exit status; Ctrl-C before a command handles it is status 130."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "any_options", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("jobctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
