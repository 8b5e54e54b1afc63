"""Bounded descriptions of what a QMP peer sent, for error messages and logs.

A peer controls every byte of a message: an error message quoting it must
stay short whatever its size or depth, and describing it must never raise.
"""

from __future__ import annotations

import reprlib
from typing import Final

__all__ = ["MAX_SHOWN", "clip", "show"]

#: Longest quotation of peer data in one error message, in characters.
MAX_SHOWN: Final = 200


def _repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel = 4
    shown.maxdict = 6
    shown.maxlist = 6
    shown.maxtuple = 6
    shown.maxstring = 80
    shown.maxlong = 40
    shown.maxother = 80
    return shown


_REPR: Final = _repr()


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text``, cut to ``limit`` characters (marked with ``...``)."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def show(value: object, limit: int = MAX_SHOWN) -> str:
    """A repr of ``value`` of at most ``limit`` characters; never raises.

    Depth, item counts and string lengths are cut before anything is
    formatted, so the cost is bounded too (a dict's keys are sorted first).
    """
    try:
        text = _REPR.repr(value)
    except Exception as exc:  # a repr must never hide the real error
        text = f"<{type(value).__name__}: unprintable ({type(exc).__name__})>"
    return clip(text, limit)
