"""The crash test: SIGKILL a worker anywhere in a multi-task command (and
again, maybe, during recovery), recover, and check that nothing was lost,
nothing was reported done that was not done, the end action took effect
exactly once and the VM is in a sane state.

Each example draws a command (how many disks, which removals fail, how long
each takes, who chooses the job ids), a kill point among every SQL statement
the worker runs, how far the backend gets while no manager runs, and
whether recovery itself is killed. The ``ci`` profile runs a few dozen
examples, ``deep`` thousands.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ._forkserver import DONE, KILLED, ForkServer
from ._remove_vm import COMMAND_ID, advance, create_backend


def statements_of(server: ForkServer, scenario: Mapping[str, Any]) -> int:
    """Kill points of an uninterrupted run (deterministic for a scenario)."""
    key = json.dumps(scenario, sort_keys=True)
    if key not in server.points:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            create_backend(workdir, scenario)
            assert server.run("command", workdir, scenario) == DONE
            check(workdir, scenario)
            server.points[key] = int((workdir / "points").read_text())
    return server.points[key]


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    disks = draw(st.integers(1, 4), label="disks")
    return {
        "disks": disks,
        "fail": draw(st.lists(st.booleans(), min_size=disks, max_size=disks), label="fail"),
        "steps": draw(st.lists(st.integers(1, 3), min_size=disks, max_size=disks)),
        "backend_assigns_ids": draw(st.booleans(), label="backend_assigns_ids"),
    }


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def check(workdir: Path, scenario: Mapping[str, Any]) -> None:
    """Every invariant of a recovered run, from the two files."""
    journal = sqlite3.connect(workdir / "journal.db")
    backend = sqlite3.connect(workdir / "backend.db")
    try:
        _check(journal, backend, scenario)
    finally:
        journal.close()
        backend.close()


def _check(
    journal: sqlite3.Connection, backend: sqlite3.Connection, scenario: Mapping[str, Any]
) -> None:
    jobs = {r[0]: r[1:] for r in _rows(backend, "SELECT id, disk, state, dismissed FROM jobs")}
    present = dict(_rows(backend, "SELECT id, present FROM disks"))
    (vm_removed,) = backend.execute("SELECT removed FROM vms").fetchone()
    end_calls = _rows(backend, "SELECT command_id, outcome, attempt FROM end_calls")
    end_effects = _rows(backend, "SELECT command_id, outcome FROM end_effects")
    has_schema = _rows(journal, "SELECT 1 FROM sqlite_schema WHERE name = 'commands'")
    command = (
        journal.execute(
            "SELECT state, outcome, result, end_attempts FROM commands WHERE id = ?",
            (COMMAND_ID,),
        ).fetchone()
        if has_schema
        else None
    )
    if command is None:
        # Killed before the command and all its tasks were recorded: nothing
        # may have started.
        assert jobs == {}
        assert set(present.values()) == {1}
        assert not vm_removed and not end_calls and not end_effects
        return

    state, outcome, result, attempts = command
    tasks = _rows(
        journal,
        "SELECT name, state, backend_id, error, params FROM tasks WHERE command_id = ?"
        " ORDER BY position",
        (COMMAND_ID,),
    )
    # No task lost, none left unfinished, nothing else unfinished.
    assert [t[0] for t in tasks] == [f"disk-{i}" for i in range(scenario["disks"])]
    assert {t[1] for t in tasks} <= {"succeeded", "failed"}
    assert _rows(journal, "SELECT id FROM commands WHERE state IN ('running', 'ending')") == []
    assert _rows(journal, "SELECT id FROM entities WHERE active = 1") == []
    # Done only if every task was done; the end action could always complete.
    assert state == outcome
    all_ok = all(t[1] == "succeeded" for t in tasks)
    assert (state == "succeeded") == all_ok
    # The end action: its effect exactly once, each call was claimed first.
    assert end_effects == [(COMMAND_ID, outcome)]
    assert 1 <= len(end_calls) <= attempts
    assert [c[2] for c in end_calls] == sorted({c[2] for c in end_calls})
    assert json.loads(result) == {"vm_removed": state == "succeeded"}

    task_of_job = {t[2]: t for t in tasks if t[2] is not None}
    for name, task_state, job_id, error, params_json in tasks:
        params = json.loads(params_json)
        job = jobs.get(job_id) if job_id is not None else None
        if task_state == "succeeded":
            # Reported done: the backend really did it.
            assert job is not None and job[1] == "succeeded", name
            assert present[params["disk"]] == 0
            assert not params["fail"]
        else:
            assert error
            assert job is None or job[1] == "failed", (name, job)
        if job is not None and job[1] != "running":
            # Journaled outcomes are released at the backend.
            assert job[2] == 1, (name, job)
    for job_id, (disk, job_state, _dismissed) in jobs.items():
        if job_id in task_of_job:
            assert job_state != "running", job_id
            continue
        # Work the journal cannot know about: only a job whose id the backend
        # chose and the crash kept from being recorded; its task failed.
        assert scenario["backend_assigns_ids"], job_id
        (task,) = [t for t in tasks if json.loads(t[4])["disk"] == disk]
        assert task[1] == "failed" and "never recorded" in task[3], task
    # A sane VM: removed exactly when the command succeeded, never with disks left.
    assert bool(vm_removed) == (state == "succeeded")
    if vm_removed:
        assert set(present.values()) == {0}


#: Half the profile's examples (each one forks two or three workers):
#: 30 in CI, 1,000 in ``deep``.
EXAMPLES = max(10, settings().max_examples // 2)


@settings(max_examples=EXAMPLES)
@given(scenario=scenarios(), data=st.data())
def test_sigkill_anywhere_in_a_multi_task_command(
    server: ForkServer, scenario: dict[str, Any], data: st.DataObject
) -> None:
    total = statements_of(server, scenario)
    kill_at = data.draw(st.integers(1, total), label="kill_at")
    downtime = data.draw(st.integers(0, 3), label="backend steps while down")
    kill_recovery_at = data.draw(st.none() | st.integers(1, 80), label="kill_recovery_at")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        create_backend(workdir, scenario)
        assert server.run("command", workdir, scenario, kill_at) == KILLED
        advance(workdir, downtime)
        if kill_recovery_at is not None:
            server.run("recover", workdir, kill_at=kill_recovery_at)
        assert server.run("recover", workdir) == DONE
        check(workdir, scenario)
