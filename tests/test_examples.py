"""The README's tour runs as a program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "domstats ran in phase 'perform'",
        "statistics: 1 regular job(s), idle=True",
    ]


def test_two_managers_runs() -> None:
    import glob
    import shutil

    from ._requires import skip_or_fail

    if not shutil.which("initdb") and not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        skip_or_fail("PostgreSQL is not installed; examples/two_managers.py needs its server")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "two_managers.py")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "mgr-a owns vm1 at epoch 1",
        "mgr-a: vm1 is running",
        "mgr-b took vm1 at epoch 2",
        "mgr-b recovered 1 command: failed",
        "mgr-b: vm1 is running",
        "mgr-a's monitor command refused: 'mgr-a' lost domain 'vm1' (its epoch 1):"
        " it is owned by 'mgr-b' at epoch 2",
        "mgr-a's journal write refused: a journal write for domain 'vm1' carries no epoch:"
        " the domain is owned by 'mgr-b' at epoch 2",
        "end actions run: snapshot (failed)",
    ]
