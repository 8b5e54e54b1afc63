"""Guards for tests that need a real part (QEMU, chromium).

Outside CI a missing part skips the test with the reason; with ``CI=true`` it
fails instead, because CI installs every part and must never skip these.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

__all__ = ["in_ci", "require_chromium", "require_executable", "require_qemu", "skip_or_fail"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_executable(name: str, why: str) -> str:
    """Return the path of ``name``; skip (fail in CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({why})"
        if in_ci():
            pytest.fail(f"{message}; CI must install it", pytrace=False)
        pytest.skip(message)
    return path


def require_qemu() -> str:
    """Path of ``qemu-system-x86_64`` (also checks for ``qemu-img``)."""
    require_executable("qemu-img", "apt-get install qemu-utils")
    return require_executable("qemu-system-x86_64", "apt-get install qemu-system-x86")


def require_chromium() -> str:
    """Path of Debian's ``chromium``."""
    return require_executable("chromium", "apt-get install chromium")


def skip_or_fail(message: str) -> NoReturn:
    """Skip the test with ``message``; fail it in CI, which installs every part."""
    if in_ci():
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)
