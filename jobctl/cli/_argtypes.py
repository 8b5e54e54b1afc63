"""Checked ``argparse`` value types shared by jobctl's commands.

Every numeric option has a stated range, checked while the command line is
parsed: a value out of it is a one-line usage error (exit status 2) that names
the option (argparse adds ``argument --NAME:``), the value and the range, e.g.
``jobctl demo: error: argument --domains: at most 128 (a positive
integer), not '100000'``. Nothing out of range reaches a run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, final

__all__ = [
    "MAX_PORT",
    "DeprecatedAlias",
    "bounded_float",
    "bounded_int",
    "port",
]

#: The highest TCP port.
MAX_PORT = 65535


def _plain(number: float) -> str:
    """``2.0`` -> ``2``, ``0.1`` -> ``0.1``: a bound as a person writes it."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def bounded_int(minimum: int, maximum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum`` (both
    included). The error states both bounds (``unit`` follows the maximum):
    ``expected a positive integer, at most 4096 MiB, not 'x'``, or for a
    value above the range ``at most 4096 MiB (a positive integer), not
    '100000'``."""
    if minimum > maximum:
        raise ValueError(f"empty range {minimum}..{maximum}")
    if minimum == 1:
        kind = "a positive integer"
    elif minimum == 0:
        kind = "a non-negative integer"
    else:
        kind = f"an integer of at least {minimum}"
    suffix = f" {unit}" if unit else ""
    expected = f"expected {kind}, at most {maximum}{suffix}"
    too_big = f"at most {maximum}{suffix} ({kind})"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, not {text!r}") from None
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{too_big}, not {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{expected}, not {text!r}")
        return value

    parse.__name__ = f"int {minimum}..{maximum}"
    return parse


def bounded_float(minimum: float, maximum: float, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number from ``minimum`` to ``maximum``
    (both included; NaN and infinities are refused)."""
    if not (math.isfinite(minimum) and math.isfinite(maximum) and minimum <= maximum):
        raise ValueError(f"bad range {minimum}..{maximum}")
    suffix = f" {unit}" if unit else ""
    expected = f"expected a number from {_plain(minimum)} to {_plain(maximum)}{suffix}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and minimum <= value <= maximum):
            raise argparse.ArgumentTypeError(f"{expected}, not {text!r}")
        return value

    parse.__name__ = f"float {_plain(minimum)}..{_plain(maximum)}"
    return parse


def port(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is 0 (any free one) to {MAX_PORT}, not {text!r}")
    return value


@final
class DeprecatedAlias(argparse.Action):
    """An old option name kept working: it stores its value where the new
    option does (the same ``dest``), and prints one warning line to standard
    error naming the new option, each time it is given.

    Pass the new name as ``const``: ``add_argument("--ws-port",
    dest="ws_port", action=DeprecatedAlias, const="--feed-port", ...)``.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated, use {self.const}",
            file=sys.stderr,
            flush=True,
        )
        setattr(namespace, self.dest, values)
