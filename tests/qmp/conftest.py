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
