"""Backends for the restore tests: trio on a fresh virtual clock, and asyncio."""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Every test runs on both backends unless it narrows this with
    ``@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)``."""
    if request.param == "trio":
        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return request.param
