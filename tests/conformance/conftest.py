"""Conformance tests run in real time on trio (real QEMU processes)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "trio"
