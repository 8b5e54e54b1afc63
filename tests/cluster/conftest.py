from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import trio.testing

from jobctl.testing import PostgresNotFoundError, ThrowawayPostgres, throwaway_postgres

from .._requires import skip_or_fail


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Each test runs on trio (virtual time, a fresh clock) and on asyncio."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {})


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL cluster for the session (skipped outside CI
    when PostgreSQL is not installed, failed in CI)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway_postgres(port=5433))
        except PostgresNotFoundError as exc:
            skip_or_fail(f"{exc}; domain ownership needs a real PostgreSQL server")
        yield server
