"""``publish``: the public names of a package show the package's path."""

from __future__ import annotations

import types
from collections.abc import MutableMapping

__all__ = ["publish"]


def publish(namespace: MutableMapping[str, object], path: str | None = None) -> None:
    """Give each class and function that a package's ``__all__`` names, and
    that lives in a private module of jobctl (``jobctl._core._domain``,
    ``jobctl.qmp._client``), the package's path as its ``__module__``, so that
    reprs, tracebacks, pickles and the reference show ``jobctl.qmp.QMPClient``.

    ``namespace`` is the package's ``globals()``; ``path`` defaults to its
    ``__name__``. Names not loaded yet (a lazy ``__getattr__``) are skipped:
    the package sets them when it loads them.
    """
    public = path if path is not None else str(namespace["__name__"])
    names = namespace["__all__"]
    assert isinstance(names, list | tuple)
    for name in names:
        obj = namespace.get(name)
        if isinstance(obj, type | types.FunctionType) and _private(obj.__module__):
            obj.__module__ = public


def _private(module: str) -> bool:
    return module.startswith("jobctl") and "._" in module
