"""The layers are a test (docs/ARCHITECTURE.md).

* the import-linter contracts in ``pyproject.toml`` hold (``lint-imports``);
* no import cycle anywhere in jobctl or the simulator (``TYPE_CHECKING``
  imports included);
* ``import jobctl`` and ``import jobctl.qmp`` load only what they need, and
  the flows load neither the simulator nor the faces.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_layer_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-4000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_there_is_no_import_cycle() -> None:
    graph = grimp.build_graph("jobctl", "jobctl_simulators", cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a planted loop is found."""
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def _loaded_by(statement: str) -> list[str]:
    """The modules of jobctl, simulators and the heavy optional libraries
    that ``statement`` loads in a fresh interpreter."""
    probe = (
        f"import sys\n{statement}\nimport json\n"
        "roots = ('jobctl', 'jobctl_simulators', 'trio', 'trio_websocket', 'hypothesis', 'sqlite3',"
        " 'prometheus_client', 'psycopg', 'psycopg_pool')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in roots)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_import_jobctl_loads_only_the_package() -> None:
    assert _loaded_by("import jobctl") == ["jobctl"]


def test_the_core_loads_only_the_core() -> None:
    loaded = _loaded_by("from jobctl import Domain")
    # jobctl._public: the one helper every package's __init__ calls (it gives
    # public names their public path), knowing nothing of any layer.
    # jobctl._backend: the running loop's own primitives (the bottom layer).
    shared = {"jobctl", "jobctl._public", "jobctl._backend"}
    assert loaded and all(m in shared or m.startswith("jobctl._core") for m in loaded), loaded


def test_import_jobctl_qmp_loads_only_the_client() -> None:
    loaded = _loaded_by("import jobctl.qmp")
    allowed = ("jobctl", "jobctl._groups", "jobctl._public", "jobctl._backend")
    assert all(m in allowed or m.startswith("jobctl.qmp") for m in loaded), loaded


@pytest.mark.parametrize(
    "package", ["jobctl.qemu", "jobctl.host", "jobctl.journal", "jobctl.restore"]
)
def test_a_layer_loads_nothing_above_it(package: str) -> None:
    loaded = _loaded_by(f"import {package}")
    above = (
        "jobctl.testing",
        "jobctl.blocking",
        "jobctl.feed",
        "jobctl.metrics",
        "jobctl.demo",
        "jobctl.cli",
        "jobctl_simulators",
    )
    heavy = ("trio_websocket", "hypothesis", "prometheus_client", "psycopg", "psycopg_pool")
    assert not [m for m in loaded if m.startswith(above) or m.split(".")[0] in heavy], loaded


def test_jobctl_exports_exactly_the_cores_names() -> None:
    import jobctl
    import jobctl._core

    assert sorted(jobctl.__all__) == sorted([*jobctl._core.__all__, "__version__"])
    for name in jobctl._core.__all__:
        assert getattr(jobctl, name) is getattr(jobctl._core, name)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = jobctl.Nope
