"""Backends for the simulator's tests.

``anyio_backend`` runs a test on trio in virtual time (a fresh
``MockClock(autojump_threshold=0)`` per test) and on asyncio. Modules whose
tests need virtual time (long migrations, rate-limited jobs) override it with
trio only; modules that use real sockets override it with real-time backends,
because an autojumping clock would fire timeouts while the kernel moves bytes.
"""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock


def trio_virtual_time() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return trio_virtual_time() if request.param == "trio" else "asyncio"
