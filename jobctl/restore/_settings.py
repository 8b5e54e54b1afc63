"""The restore's limits, per call or per run (environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Self, final

import attrs

from ._errors import RestoreConfigError

__all__ = [
    "DEFAULT_FETCH_CONCURRENCY",
    "FETCH_CONCURRENCY_ENV",
    "MAX_BUFFERED_ENV",
    "RestoreSettings",
]

#: How many fetches run at once unless a call or the environment says otherwise.
DEFAULT_FETCH_CONCURRENCY = 16
#: Environment variable that sets the fetch concurrency for a whole run.
FETCH_CONCURRENCY_ENV = "JOBCTL_FETCH_CONCURRENCY"
#: Environment variable that sets how many chunks a restore may hold at once.
MAX_BUFFERED_ENV = "JOBCTL_RESTORE_MAX_BUFFERED"


def _check(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise RestoreConfigError(f"{name} must be at least 1, got {value}")
    return value


def _from_env(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise RestoreConfigError(
            f"environment variable {name}={text!r} is not a whole number"
        ) from None
    if value < 1:
        raise RestoreConfigError(f"environment variable {name}={text!r} must be at least 1")
    return value


@final
@attrs.frozen
class RestoreSettings:
    """How far a restore may run ahead.

    ``concurrency`` is the most fetches in flight at once. ``max_buffered`` is
    the most chunks held at once, from the start of their fetch to the end of
    their write: it bounds the restore's memory to ``max_buffered`` chunks.
    Both are at least 1.
    """

    concurrency: int = attrs.field(
        default=DEFAULT_FETCH_CONCURRENCY,
        validator=lambda _, a, v: _check(a.name, v),
    )
    max_buffered: int = attrs.field(validator=lambda _, a, v: _check(a.name, v))

    @max_buffered.default
    def _max_buffered_default(self) -> int:
        return 2 * self.concurrency

    @classmethod
    def resolve(
        cls,
        *,
        concurrency: int | None = None,
        max_buffered: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """The settings for one restore: each value from the call if given,
        else from its environment variable (:data:`FETCH_CONCURRENCY_ENV`,
        :data:`MAX_BUFFERED_ENV`) if set, else the default (16 fetches, twice
        as many chunks held).

        Raises :class:`RestoreConfigError` naming the argument or variable
        that is out of range or not a number, ``TypeError`` for a non-int.
        """
        env = os.environ if environ is None else environ
        if concurrency is None:
            concurrency = _from_env(env, FETCH_CONCURRENCY_ENV)
        if concurrency is None:
            concurrency = DEFAULT_FETCH_CONCURRENCY
        if max_buffered is None:
            max_buffered = _from_env(env, MAX_BUFFERED_ENV)
        if max_buffered is None:
            return cls(concurrency=concurrency)
        return cls(concurrency=concurrency, max_buffered=max_buffered)
