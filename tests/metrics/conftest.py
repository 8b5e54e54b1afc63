from __future__ import annotations

from typing import Any

import pytest
import trio.testing


@pytest.fixture
def anyio_backend() -> Any:
    """The collector's values are timed by the event loop's clock: trio, in virtual time."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
