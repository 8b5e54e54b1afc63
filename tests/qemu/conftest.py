from __future__ import annotations

from typing import Any

import pytest
import trio.testing


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Each flow test runs on trio (virtual time) and on asyncio (real time)."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {})
