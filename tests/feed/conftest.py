from __future__ import annotations

from typing import Any

import pytest
import trio.testing


@pytest.fixture
def anyio_backend() -> Any:
    """In-memory feed tests: trio, in virtual time (test_backends.py runs the
    feed over real sockets in trio and in asyncio)."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
