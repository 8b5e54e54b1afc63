from __future__ import annotations

from typing import Any

import pytest
import trio.testing


@pytest.fixture
def anyio_backend() -> Any:
    """The feed is trio-only (trio-websocket): trio, in virtual time."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
