from __future__ import annotations

from typing import Any

import pytest
import trio.testing


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Backend-neutral parts run on trio (virtual time) and on asyncio."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {})


# The fixtures users get from jobctl.testing's pytest plugin, imported the
# way its docs allow (pytest_plugins may only be set in the top conftest).
from jobctl.testing.pytest_plugin import (  # noqa: E402
    jobctl_trace,
    simulated_host,
    simulated_vm,
)

__all__ = ["anyio_backend", "jobctl_trace", "simulated_host", "simulated_vm"]
