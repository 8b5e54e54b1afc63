"""examples/threaded_manager.py runs as a program, on the simulator (both
backends) and on real QEMU (``--qemu``, marked ``qemu``: fails in CI when
QEMU is missing, skips with the reason elsewhere)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._requires import require_qemu

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "threaded_manager.py"


def run(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def check(lines: list[str], migrations: int, threads: int, detector: str) -> None:
    hops = ["vm1@a -> vm1@b", "vm1@b -> vm1@a"]
    for number in range(1, migrations + 1):
        assert lines[number - 1].startswith(f"migration {number}: {hops[(number - 1) % 2]} in ")
    queries = lines[migrations]
    assert queries.startswith(f"queries from {threads} threads: ")
    assert int(queries.rsplit(" ", 1)[1]) > 0
    assert lines[migrations + 1 :] == [
        f"monitor violations (simulator's detector): {detector}",
        "invariant violations (trace): 0",
    ]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_threaded_manager_runs_on_the_simulator(backend: str) -> None:
    lines = run("--migrations", "3", "--threads", "8", "--backend", backend)
    check(lines, 3, 8, "0")


@pytest.mark.qemu
def test_the_threaded_manager_runs_on_real_qemu() -> None:
    require_qemu()
    lines = run("--migrations", "2", "--threads", "4", "--qemu")
    check(lines, 2, 4, "None")
