"""The migration crash test: SIGKILL the manager anywhere in a live migration
between two simulated QEMU processes (and maybe again during recovery),
recover each side from its last persisted phase, and check that the VM runs
in exactly one place with no migration left under way.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ._forkserver import DONE, KILLED, ForkServer
from ._migration import ACTIVE, sockets

SIDES = ("source", "destination")
#: Half the profile's examples: each one starts two QEMU processes.
EXAMPLES = max(10, settings().max_examples // 2)


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


def migrate_and_check(server: ForkServer, kill_at: int | None, kill_again: int | None) -> int:
    """One migration killed at ``kill_at`` (None: not killed), recovered;
    returns the kill points of the migration run."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        src_sock, dst_sock, _ = sockets(workdir)
        vm = ("-name", "vm1", "-m", "8M")
        pids = [server.simulator(workdir, *vm, "-qmp", f"unix:{src_sock}")]
        try:
            pids.append(
                server.simulator(
                    workdir, *vm, "-qmp", f"unix:{dst_sock}", "-incoming", "defer", "-S"
                )
            )
            answer = server.run("migrate", workdir, kill_at=kill_at)
            assert answer == (DONE if kill_at is None else KILLED)
            points = int((workdir / "points").read_text()) if kill_at is None else 0
            if kill_again is not None:
                server.run("recover-migration", workdir, kill_at=kill_again)
            assert server.run("recover-migration", workdir) == DONE
            assert server.run("probe", workdir) == DONE
            found = json.loads((workdir / "probe.json").read_text())
            # A QEMU whose monitor no longer answers is exiting: wait for it.
            gone = [pid for pid, side in zip(pids, SIDES, strict=True) if found[side] is None]
            exited = server.wait(gone)
        finally:
            server.reap(pids)
        journal = sqlite3.connect(workdir / "journal.db")
        try:
            assert journal.execute("SELECT domain, phase FROM async_jobs").fetchall() == []
        finally:
            journal.close()

    # The VM runs in exactly one place, with no migration under way. The
    # other QEMU quit cleanly, or is the destination the test started and
    # the dead manager never used (still paused, waiting for a migration).
    running = [side for side in SIDES if (found[side] or {}).get("running")]
    assert len(running) == 1, found
    (side,) = running
    assert found[side]["migration"] not in ACTIVE, found
    other = "destination" if side == "source" else "source"
    if found[other] is None:
        # It quit; a destination whose incoming migration was cancelled
        # exits with status 1 on its own, as QEMU does.
        allowed = [DONE] if other == "source" else [DONE, {"code": 1}]
        assert exited[pids[0 if other == "source" else 1]] in allowed, exited
    else:
        assert other == "destination", found
        assert found[other]["migration"] == "none", found
    if kill_at is None:
        assert side == "destination" and found["source"] is None, found
    return points


@pytest.fixture(scope="module")
def points(server: ForkServer) -> int:
    """Kill points of an uninterrupted migration (deterministic)."""
    return migrate_and_check(server, None, None)


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_sigkill_anywhere_in_a_migration(
    server: ForkServer, points: int, data: st.DataObject
) -> None:
    kill_at = data.draw(st.integers(1, points), label="kill_at")
    kill_again = data.draw(st.none() | st.integers(1, 30), label="kill_recovery_at")
    migrate_and_check(server, kill_at, kill_again)
