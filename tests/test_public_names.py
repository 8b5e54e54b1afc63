"""Tests reach jobctl through its public names.

A test that imports a private module (``jobctl.qmp._framing``) or a private
name (``from jobctl.cli import _serve``) breaks on a refactor that keeps
behaviour. So tests import what the packages export, and test internal
mechanisms through the public behaviour that relies on them. The few that
cannot are listed in :data:`ALLOWED`, each with why no public path reaches
what it tests; an entry that is no longer needed fails too, so the list
stays exact.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

#: Calls whose first argument, a string, names what they import or patch.
_BY_NAME: Final = frozenset({"import_module", "__import__", "setattr", "delattr", "patch"})

#: Test modules (paths from the repository root) and the private jobctl
#: modules and names they may import, as dotted names.
ALLOWED: Final[dict[str, frozenset[str]]] = {
    # `jobctl serve` runs on trio only; to see its command-line limits reach
    # a feed inside asyncio, the test turns the parsed options into
    # serve_feed's keywords as the command does (no public path parses them).
    "tests/feed/test_starvation.py": frozenset({"jobctl.cli._serve.feed_options"}),
    # Planted bugs: each is a named edit of a core module's source text,
    # compiled in place of the real one (mutation tests: they name the code
    # they edit and fail loudly when it is gone).
    "tests/properties/_bugs.py": frozenset({"jobctl._core._domain", "jobctl._core._trace"}),
    "tests/properties/test_trace_consistency.py": frozenset({"jobctl._core._domain"}),
    # Gives rows that break the schema's rules a valid checksum, as a buggy
    # writer that bypassed the store would: the checksum is the journal's
    # file format, which no public API computes (nor should one).
    "tests/journal/_support.py": frozenset(
        {
            "jobctl.journal._rows.ASYNC_JOBS",
            "jobctl.journal._rows.COMMANDS",
            "jobctl.journal._rows.ENTITIES",
            "jobctl.journal._rows.TASKS",
            "jobctl.journal._rows.RowContext",
        }
    ),
    # Writes the seal a newer jobctl leaves (a newer schema version): no
    # public API writes a seal of another version, and none should.
    "tests/journal/test_store.py": frozenset({"jobctl.journal._files.SealFile"}),
    # The core's ranked wait queue and the walks only the host's entity locks
    # use (ranks, ahead_of, in_order with a lane closing mid-walk, an item in
    # several lanes), pinned directly: the core's mutation run mutates
    # _queue.py and selects the core's tests, and these paths are otherwise
    # reached only through jobctl.host's lockers, outside that selection.
    "tests/core/test_queue.py": frozenset({"jobctl._core._queue.WaitQueue"}),
    # A call that no thread task takes (a call racing its task's end as the
    # loop closes) cannot be forced through public calls: the test starts
    # no thread task, to see the loop's exit answer what is left.
    "tests/blocking/test_threads.py": frozenset({"jobctl.blocking._loop._ThreadTasks"}),
    # A caller's direct write that the socket takes only in part: no socket
    # buffer is smaller than the 4 KiB the client writes directly, so the
    # test raises that limit to reach the writer's finishing of the rest.
    "tests/qmp/test_client.py": frozenset({"jobctl.qmp._client"}),
    # The layering test compares jobctl's lazy exports with the core's own.
    "tests/test_architecture.py": frozenset({"jobctl._core"}),
    # Which stage bounds a restore, at the edges (ties, fewer fetches than
    # the concurrency): that needs exact stage times, and a restore measures
    # its writer in real seconds.
    "tests/restore/test_timing.py": frozenset({"jobctl.restore._report.limiting_stage"}),
    # What no feed client can see: a get with an item at hand still yields
    # to the scheduler, a cancelled get takes nothing, and the outbox's own
    # capacity check (the feed checks its buffer size first).
    "tests/feed/test_outbox.py": frozenset(
        {"jobctl.feed._outbox.Outbox", "jobctl.feed._outbox.Resync"}
    ),
}


def _private_jobctl(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "jobctl" and any(part.startswith("_") for part in parts[1:])


def private_imports(source: str) -> set[str]:
    """The private jobctl modules and names ``source`` imports (or names by
    string to ``import_module``, ``monkeypatch.setattr`` and the like), as
    dotted names: ``jobctl.qmp._framing.LineReader``, ``jobctl.cli._serve``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if _private_jobctl(alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if _private_jobctl(dotted):
                    found.add(dotted)
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else None
            if isinstance(function, ast.Name):
                name = function.id
            first = node.args[0]
            if (
                name in _BY_NAME
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _private_jobctl(first.value)
            ):
                found.add(first.value)
    return found


def test_tests_import_only_public_names_but_the_listed_few() -> None:
    found = {
        path.relative_to(ROOT).as_posix(): private_imports(path.read_text(encoding="utf-8"))
        for path in sorted((ROOT / "tests").rglob("*.py"))
    }
    unexpected = [
        f"{name}: {dotted}"
        for name, imported in found.items()
        for dotted in sorted(imported - ALLOWED.get(name, frozenset()))
    ]
    stale = [
        f"{name}: {dotted}"
        for name, allowed in ALLOWED.items()
        for dotted in sorted(allowed - found.get(name, set()))
    ]
    assert not unexpected, (
        "tests import private jobctl names; import what the package exports, test the "
        "mechanism through public behaviour, or list it in ALLOWED with the reason:\n"
        + "\n".join(unexpected)
    )
    assert not stale, f"ALLOWED lists what no test imports any more: {stale}"


def test_the_finder_finds_private_imports() -> None:
    """The check above can fail: each way of reaching a private name is seen."""
    source = """
import jobctl
import jobctl._core._domain
import importlib
from jobctl import Domain, _private
from jobctl.cli import _serve as serve
from jobctl.qmp._framing import LineReader
from jobctl.qmp import LineReader as Public
from . import _support
from jobctl_simulators.qemu._json import JsonStreamer

importlib.import_module("jobctl.feed._outbox")
monkeypatch.setattr("jobctl._core._queue.WaitQueue.push", None)
monkeypatch.setattr("jobctl.Domain.job", None)
"""
    assert private_imports(source) == {
        "jobctl._core._domain",
        "jobctl._private",
        "jobctl.cli._serve",
        "jobctl.qmp._framing.LineReader",
        "jobctl.feed._outbox",
        "jobctl._core._queue.WaitQueue.push",
    }
