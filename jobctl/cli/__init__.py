"""The ``jobctl`` command: ``jobctl demo`` and ``jobctl serve``.

Each subcommand lives with the part it belongs to; this module only
dispatches, and turns bad options into a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from jobctl.cli import _demo as _demo_cli
    from jobctl.cli import _serve as _serve_cli

    parser = _Parser(prog="jobctl", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="migrations with domstats on simulated (or real) QEMU")
    _demo_cli.add_arguments(demo)
    demo.set_defaults(run=_demo_cli.run)
    serve = sub.add_parser("serve", help="the live job feed and timeline page")
    _serve_cli.add_arguments(serve)
    serve.set_defaults(run=_serve_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("jobctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
