"""One vocabulary: a public name means one object, and each layer's errors are its own.

* No two packages export the same name (compared without case, but for
  constants: ``QMPError`` and ``QmpError`` would read as one) for different
  objects; a re-export of the same object is fine.
* Every exception class a package exports derives only from classes of its
  own layer and from the standard library's: nothing outside the core is a
  ``jobctl.JobError``, nothing in ``jobctl.qmp`` derives from the core.
* Every exported exception is at most two levels below its layer's root
  (the standard library's bases not counted).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from typing import Final

import pytest

import jobctl
import jobctl.qmp

#: The packages whose ``__all__`` is public vocabulary.
PACKAGES: Final = (
    "jobctl",
    "jobctl.qmp",
    "jobctl.qemu",
    "jobctl.host",
    "jobctl.restore",
    "jobctl.journal",
    "jobctl.cluster",
    "jobctl.feed",
    "jobctl.metrics",
    "jobctl.testing",
    "jobctl.blocking",
    "jobctl.demo",
    "jobctl_simulators.qemu",
)

#: The layers a class can belong to, by the module that defines it
#: (``jobctl`` re-exports the core from ``jobctl._core``).
LAYERS: Final = (
    "jobctl._core",
    "jobctl._groups",
    "jobctl.qmp",
    "jobctl.qemu",
    "jobctl.host",
    "jobctl.restore",
    "jobctl.journal",
    "jobctl.cluster",
    "jobctl.feed",
    "jobctl.metrics",
    "jobctl.testing",
    "jobctl.blocking",
    "jobctl.demo",
    "jobctl.cli",
    "jobctl_simulators.qemu",
)

MAX_DEPTH: Final = 2

Exports = Mapping[str, Mapping[str, object]]


def exports() -> dict[str, dict[str, object]]:
    """Every package's public names and the objects they name."""
    found: dict[str, dict[str, object]] = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        found[name] = {export: getattr(module, export) for export in module.__all__}
    return found


def _spelling(name: str) -> str:
    """What a reader takes ``name`` for: its case does not count, but a
    constant (``COMMANDS``) does not read as a class (``Commands``)."""
    return name if name.isupper() else name.casefold()


def collisions(packages: Exports) -> list[str]:
    """One line per name that two packages export for different objects."""
    seen: dict[str, list[tuple[str, str, object]]] = {}
    for package, names in packages.items():
        for name, value in names.items():
            seen.setdefault(_spelling(name), []).append((package, name, value))
    lines = []
    for entries in seen.values():
        if len({id(value) for _, _, value in entries}) > 1:
            where = ", ".join(
                f"{package}.{name} ({getattr(value, '__module__', type(value).__name__)})"
                for package, name, value in entries
            )
            lines.append(where)
    return sorted(lines)


def layer_of(cls: type) -> str | None:
    """The layer that defines ``cls``; None for the standard library's classes."""
    module = cls.__module__
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    if module.partition(".")[0] in sys.stdlib_module_names:
        return None
    return module  # another library's layer


def exceptions(packages: Exports) -> list[tuple[str, type[BaseException]]]:
    """Every exported exception class, once, with the name it is exported by."""
    found: dict[int, tuple[str, type[BaseException]]] = {}
    for package, names in packages.items():
        for name, value in names.items():
            if isinstance(value, type) and issubclass(value, BaseException):
                found.setdefault(id(value), (f"{package}.{name}", value))
    return sorted(found.values(), key=lambda entry: entry[0])


def foreign_bases(errors: Iterable[tuple[str, type[BaseException]]]) -> list[str]:
    """One line per exported exception with an exception base from another
    layer (a mixin that is no exception, as jobctl._pickling's, is not a base
    a handler catches by)."""
    lines = []
    for name, cls in errors:
        layer = layer_of(cls)
        foreign = [
            f"{base.__module__}.{base.__qualname__}"
            for base in cls.__mro__[1:]
            if issubclass(base, BaseException) and layer_of(base) not in (None, layer)
        ]
        if foreign:
            lines.append(f"{name} ({layer}) derives from {', '.join(foreign)}")
    return lines


def depth(cls: type) -> int:
    """How many levels ``cls`` is below its layer's root (stdlib bases not counted)."""
    layer = layer_of(cls)
    own = [base for base in cls.__bases__ if layer_of(base) == layer]
    return 1 + max(map(depth, own)) if own else 0


def too_deep(errors: Iterable[tuple[str, type[BaseException]]]) -> list[str]:
    return [
        f"{name} is {depth(cls)} levels below its root"
        for name, cls in errors
        if depth(cls) > MAX_DEPTH
    ]


def test_no_two_packages_export_one_name_for_different_objects() -> None:
    assert collisions(exports()) == []


def test_exported_exceptions_derive_only_from_their_own_layer() -> None:
    errors = exceptions(exports())
    assert len(errors) > 40  # every package's errors were found
    assert foreign_bases(errors) == []


def test_exported_exceptions_are_at_most_two_levels_below_their_root() -> None:
    assert too_deep(exceptions(exports())) == []


def test_the_core_and_the_qmp_client_have_one_root_each() -> None:
    public = exports()
    for package, root in (("jobctl", jobctl.JobError), ("jobctl.qmp", jobctl.qmp.QMPError)):
        for name, cls in exceptions({package: public[package]}):
            assert issubclass(cls, root), name
    assert issubclass(jobctl.qmp.QMPProtocolError, jobctl.qmp.QMPClosedError)


# -- the checks catch what they are for ------------------------------------------


def test_a_name_two_packages_export_for_different_objects_is_found() -> None:
    first, second = object(), object()
    found = collisions(
        {
            "a": {"QMPThing": first, "same": first, "THINGS": first},
            "b": {"QmpThing": second, "same": first, "Things": second},
        }
    )
    assert len(found) == 1 and "a.QMPThing" in found[0] and "b.QmpThing" in found[0]


@pytest.mark.parametrize(
    ("module", "base"),
    [("jobctl.qemu._fake", "jobctl.JobError"), ("jobctl.qmp._fake", "jobctl.JobStateError")],
)
def test_an_error_derived_from_another_layer_is_found(module: str, base: str) -> None:
    borrowed = type("Borrowed", (getattr(jobctl, base.rpartition(".")[2]),), {"__module__": module})
    assert foreign_bases([("x.Borrowed", borrowed)]) != []
    own = type("Own", (TimeoutError,), {"__module__": module})
    assert foreign_bases([("x.Own", own)]) == []


def test_an_error_three_levels_below_its_root_is_found() -> None:
    module = {"__module__": "jobctl.journal._fake"}
    root = type("Root", (Exception,), module)
    one = type("One", (root, LookupError), module)
    two = type("Two", (one,), module)
    three = type("Three", (two,), module)
    assert [depth(cls) for cls in (root, one, two, three)] == [0, 1, 2, 3]
    assert too_deep([("x.Two", two), ("x.Three", three)]) == ["x.Three is 3 levels below its root"]
