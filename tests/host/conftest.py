from __future__ import annotations

from typing import Any

import pytest
import trio.testing


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Backend-neutral tests run on trio (a fresh virtual clock each) and asyncio.

    ``@virtual_time`` tests run on trio only, where sleeps cost no wall time.
    """
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {})
