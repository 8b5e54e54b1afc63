"""QEMU's identifier rule, shared by job IDs and node names."""

from __future__ import annotations

import string
from typing import Final

__all__ = ["id_wellformed"]

_ID_FIRST: Final = frozenset(string.ascii_letters)
_ID_REST: Final = frozenset(string.ascii_letters + string.digits + "-._")


def id_wellformed(name: str) -> bool:
    """QEMU's ``id_wellformed``: a letter, then letters, digits, ``-._``."""
    return bool(name) and name[0] in _ID_FIRST and all(c in _ID_REST for c in name)
