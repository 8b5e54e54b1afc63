from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio.testing

from jobctl.testing import PostgresNotFoundError, ThrowawayPostgres, throwaway_postgres

from .._requires import skip_or_fail
from ._support import Stores


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Each test runs on trio (virtual time, a fresh clock) and on asyncio."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {})


@pytest.fixture
def tick(anyio_backend: Any) -> float:
    """One unit of time for tests that sleep: a virtual second on trio, a
    millisecond of real time on asyncio (the assertions never depend on it)."""
    return 1.0 if anyio_backend[0] == "trio" else 0.001


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL cluster for the session (skipped outside CI
    when PostgreSQL is not installed, failed in CI)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway_postgres())
        except PostgresNotFoundError as exc:
            skip_or_fail(f"{exc}; the PostgreSQL journal store needs a real server")
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest) -> Stores:
    """The store contract runs on each store: SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return Stores("sqlite", None)
    server: ThrowawayPostgres = request.getfixturevalue("postgres_server")
    return Stores("postgres", server)
