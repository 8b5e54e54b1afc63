from __future__ import annotations

from typing import Any

import pytest
import trio.testing


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
