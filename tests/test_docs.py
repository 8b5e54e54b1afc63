"""The reference site and what it shows (issue 17, point 2).

* ``mkdocs build --strict`` builds the site (mkdocs.yml): a broken
  cross-reference, a page missing from the navigation or a docstring
  mkdocstrings cannot render fails it, and each package's reference page
  lists every name of its ``__all__``.
* Every public class and function shows its public path
  (``jobctl.qmp.QMPTimeoutError``, not ``jobctl.qmp._errors...``), and
  pickles and reprs through it.
* Every public name, and every public method of a public class, has a
  docstring (mkdocstrings renders a missing one as nothing, silently).
"""

from __future__ import annotations

import html
import importlib
import inspect
import pickle
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Final

import pytest
import yaml  # type: ignore[import-untyped]  # (no stubs installed)

ROOT: Final = Path(__file__).resolve().parent.parent
CONFIG: Final = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
#: The packages with a reference page (one line each in mkdocs.yml).
PACKAGES: Final[list[str]] = CONFIG["extra"]["reference_packages"]
OURS: Final = ("jobctl", "jobctl_simulators")


def public_names(package: str) -> dict[str, Any]:
    module = importlib.import_module(package)
    return {name: getattr(module, name) for name in module.__all__ if not name.startswith("_")}


def defined_here(value: object) -> bool:
    """A class or function of jobctl's own (not a re-exported library's)."""
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return False
    return str(value.__module__).partition(".")[0] in OURS


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", ROOT / "mkdocs.yml", "-d", out],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_every_public_package_has_a_reference_page() -> None:
    expected = {"jobctl", "jobctl.qmp", "jobctl.qemu", "jobctl.host", "jobctl.restore"}
    expected |= {
        "jobctl.journal",
        "jobctl.cluster",
        "jobctl.feed",
        "jobctl.metrics",
        "jobctl.testing",
    }
    assert expected | {"jobctl_simulators.qemu"} <= set(PACKAGES)
    assert len(PACKAGES) == len(set(PACKAGES))


@pytest.mark.parametrize("package", PACKAGES)
def test_the_reference_page_lists_the_packages_all(site: Path, package: str) -> None:
    page = html.unescape((site / "reference" / package / "index.html").read_text())
    shown = set(re.findall(rf'id="{re.escape(package)}\.(\w+)"', page))
    assert sorted(set(public_names(package)) - shown) == []


def test_the_site_has_the_guarantees_and_getting_started(site: Path) -> None:
    index = (site / "index.html").read_text()
    assert "pip install virt-jobctl" in index
    for page in ("ARCHITECTURE", "CORE_API"):
        assert (site / page / "index.html").is_file()


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_show_their_public_path(package: str) -> None:
    wrong = []
    for name, value in public_names(package).items():
        if not defined_here(value):
            continue
        where = value.__module__
        if any(part.startswith("_") for part in where.split(".")):
            wrong.append(f"{package}.{name}: {where}")
        elif getattr(importlib.import_module(where), value.__name__, None) is not value:
            wrong.append(f"{package}.{name}: {where}.{value.__name__} is not it")
    assert wrong == []


def _errors() -> list[type[BaseException]]:
    found: dict[int, type[BaseException]] = {}
    for package in PACKAGES:
        for value in public_names(package).values():
            if isinstance(value, type) and issubclass(value, BaseException):
                found[id(value)] = value
    return list(found.values())


def test_public_errors_pickle_and_print_with_their_public_path() -> None:
    """Each public error made with a message alone (those with more
    arguments pickle as the standard library makes them) round-trips through
    pickle, and a traceback names it by its public path."""
    tried = 0
    for cls in _errors():
        try:
            error = cls("what went wrong")
            str(error)
        except (TypeError, AttributeError):
            continue  # needs more than a message
        tried += 1
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls and str(again) == str(error)
        last = traceback.format_exception_only(error)[-1]
        assert last.startswith(f"{cls.__module__}.{cls.__qualname__}: "), last
        assert "._" not in last.partition(":")[0]
    assert tried > 20


def test_a_value_class_reprs_and_pickles_through_its_public_path() -> None:
    from jobctl.qemu import LatencySummary

    summary = LatencySummary.of([0.001, 0.002])
    assert repr(summary).startswith("LatencySummary(count=2")
    assert pickle.loads(pickle.dumps(summary)) == summary
    assert LatencySummary.__module__ == "jobctl.qemu"


def undocumented(package: str) -> list[str]:
    """The public names of ``package``, and the public methods and properties
    of its public classes, that have no docstring of their own."""
    missing = []
    for name, value in public_names(package).items():
        if not defined_here(value):
            continue
        if not (value.__doc__ or "").strip():
            missing.append(f"{package}.{name}")
        if not inspect.isclass(value):
            continue
        for attr, member in vars(value).items():
            if attr.startswith("_"):
                continue
            if isinstance(member, property):
                member = member.fget
            elif isinstance(member, classmethod | staticmethod):
                member = member.__func__
            if inspect.isfunction(member) and not (member.__doc__ or "").strip():
                missing.append(f"{package}.{name}.{attr}")
    return missing


#: What had no docstring when this check came (issue 17): each is to get one
#: that states its guarantee, and leave this list. The list is exact: a name
#: documented since fails the test until it is taken off, and nothing new
#: may join it. Every name has one now: the list stays empty.
KNOWN_UNDOCUMENTED: Final[frozenset[str]] = frozenset()


def test_every_public_name_and_method_has_a_docstring() -> None:
    missing = {entry for package in PACKAGES for entry in undocumented(package)}
    assert sorted(missing - KNOWN_UNDOCUMENTED) == [], "new public names without a docstring"
    assert sorted(KNOWN_UNDOCUMENTED - missing) == [], "documented now: take off the list"


def test_the_docstring_check_finds_a_missing_one() -> None:
    from jobctl.qemu import LatencySummary

    saved = LatencySummary.__doc__
    try:
        LatencySummary.__doc__ = None
        assert "jobctl.qemu.LatencySummary" in undocumented("jobctl.qemu")
    finally:
        LatencySummary.__doc__ = saved
    assert "jobctl.qemu.LatencySummary" not in undocumented("jobctl.qemu")
