"""The wheel people install (issue 17, point 1): built from this tree,
installed into a fresh virtual environment as the README says (``pip install
virt-jobctl``, then ``'virt-jobctl[testing]'``), it runs ``jobctl
--version``, imports ``jobctl`` and ``jobctl_simulators.qemu`` (and no
top-level ``simulators``), ships the licence text, and states its licence,
project URLs, classifiers and readme in its metadata.

Slow-ish (a build and two installs, about a minute): the dependencies come
from the package index pip is configured with, the wheel from a temporary
directory. It runs in CI like every other test.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "mutants", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _run(*command: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the tree (the build leaves nothing here)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_IGNORE)
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", source, cwd=work)
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    """A new virtual environment with the wheel installed (no extras)."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(where, with_pip=True)
    _run(where / "bin" / "pip", "install", "-q", wheel, cwd=where.parent)
    yield where


def _metadata(wheel: Path) -> tuple[Message, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    return email.parser.Parser().parsestr(text), names


def test_the_wheel_holds_jobctl_and_jobctl_simulators_only(wheel: Path) -> None:
    _, names = _metadata(wheel)
    top = {name.split("/")[0] for name in names}
    (dist_info,) = (t for t in top if t.endswith(".dist-info"))
    assert dist_info.startswith("virt_jobctl-")
    assert top == {"jobctl", "jobctl_simulators", dist_info}
    licence = f"{dist_info}/licenses/LICENSE"
    assert licence in names
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(licence).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the jobctl authors" in text


def test_the_metadata_states_licence_urls_classifiers_and_readme(wheel: Path) -> None:
    meta, _ = _metadata(wheel)
    assert meta["Name"] == "virt-jobctl"
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload() == (ROOT / "README.md").read_text()
    assert "testing" in (meta.get_all("Provides-Extra") or [])


def test_installed_it_runs_and_imports(fresh_venv: Path, wheel: Path) -> None:
    elsewhere = fresh_venv.parent  # not the repository: nothing imported from the tree
    version = wheel.name.split("-")[1]
    out = _run(fresh_venv / "bin" / "jobctl", "--version", cwd=elsewhere)
    assert out == f"jobctl {version}\n"
    python = fresh_venv / "bin" / "python"
    probe = (
        "import importlib.util, jobctl, jobctl_simulators.qemu\n"
        "print(jobctl.__version__)\n"
        "print(importlib.util.find_spec('simulators'))\n"
        "print(jobctl.__file__)\n"
    )
    lines = _run(python, "-c", probe, cwd=elsewhere).splitlines()
    assert lines[:2] == [version, "None"]
    assert Path(lines[2]).is_relative_to(fresh_venv)


def test_without_extras_no_trio_and_each_extra_is_named(fresh_venv: Path) -> None:
    """An asyncio user installs no trio; what needs an extra says which."""
    python = fresh_venv / "bin" / "python"
    probe = (
        "import importlib.util, anyio, jobctl, jobctl.feed, jobctl.qemu\n"
        "print(importlib.util.find_spec('trio'), importlib.util.find_spec('trio_websocket'))\n"
        "try:\n"
        "    anyio.run(jobctl.feed.serve_feed, backend='asyncio')\n"
        "except jobctl.feed.FeedBackendError as exc:\n"
        "    print(exc)\n"
    )
    lines = _run(python, "-c", probe, cwd=fresh_venv.parent).splitlines()
    assert lines[0] == "None None"
    assert lines[1].endswith("pip install 'virt-jobctl[feed]'")
    demo = subprocess.run(
        [fresh_venv / "bin" / "jobctl", "demo", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=fresh_venv.parent,
    )
    assert demo.returncode == 1
    assert "pip install 'virt-jobctl[trio]'" in demo.stderr


def test_the_testing_extra_brings_what_jobctl_testing_needs(fresh_venv: Path, wheel: Path) -> None:
    python = fresh_venv / "bin" / "python"
    _run(fresh_venv / "bin" / "pip", "install", "-q", f"{wheel}[testing]", cwd=fresh_venv.parent)
    out = _run(
        python,
        "-c",
        "import jobctl.testing, hypothesis, pytest; print('ok')",
        cwd=fresh_venv.parent,
    )
    assert out == "ok\n"
