"""Takeover between real manager processes on one real PostgreSQL server.

Manager A owns four domains and runs commands on them. It dies (SIGKILL) or
stops answering (SIGSTOP past its lease); manager B takes the domains over
and runs ``recover()``: every unfinished command is resolved within lease +
10 s, and no end action ran in a stale epoch. The stopped A, once resumed,
finds its journal writes and its monitor commands refused, naming B.

No sleep synchronises anything: the test waits on what the processes write
(their event lines) and on the database, each wait bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobctl.testing import ThrowawayPostgres

from ._manager import TABLES, sql

LEASE = 2.0
DOMAINS = ["vm1", "vm2", "vm3", "vm4"]
ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    """Poll ``probe`` until it returns something true; fail naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout} s")
        time.sleep(0.02)


def events(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    lines = out.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


class Managers:
    def __init__(self, conninfo: str, tmp: Path) -> None:
        self.conninfo = conninfo
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.tmp / f"{name}.jsonl"
        with open(self.tmp / f"{name}.err", "wb") as err:
            proc = self._popen(name, mode, out, err)
        self.procs.append(proc)
        return proc, out

    def _popen(self, name: str, mode: str, out: Path, err: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cluster._manager",
                self.conninfo,
                name,
                str(out),
                mode,
                ",".join(DOMAINS),
                str(LEASE),
            ],
            cwd=ROOT,
            stderr=err,
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=30)

    def stderr(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("*.err")))


@pytest.fixture
def managers(postgres_server: ThrowawayPostgres, tmp_path: Path) -> Iterator[Managers]:
    conninfo = postgres_server.create_database()
    import anyio

    from jobctl.journal import PostgresJournalStore

    async def schema() -> None:
        async with await PostgresJournalStore.open(conninfo):
            pass

    anyio.run(schema)
    for statement in TABLES:
        sql(conninfo, statement)
    group = Managers(conninfo, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def unfinished(conninfo: str) -> list[tuple[Any, ...]]:
    return sql(conninfo, "SELECT id FROM jobctl_commands WHERE state IN ('running', 'ending')")


def check_history(conninfo: str) -> None:
    """No end action ran twice in one epoch; none ran in an epoch after the
    next owner took the domain; every final command's end ran."""
    runs = sql(
        conninfo,
        "SELECT r.command_id, r.owner, r.epoch, r.at, c.domain FROM end_runs r"
        " JOIN jobctl_commands c ON c.id = r.command_id",
    )
    keys = [(r[0], r[2]) for r in runs]
    assert len(keys) == len(set(keys)), "an end action ran twice in one epoch"
    ((taken,),) = sql(conninfo, "SELECT min(acquired) FROM jobctl_leases WHERE epoch = 2")
    for command_id, owner, epoch, at, _domain in runs:
        if epoch == 1:
            assert at < taken, f"{owner} ran the end of {command_id} after the takeover"
    final = sql(conninfo, "SELECT id FROM jobctl_commands WHERE state IN ('succeeded', 'failed')")
    ran = {r[0] for r in runs}
    never_started = sql(conninfo, "SELECT command_id FROM jobctl_tasks WHERE state = 'failed'")
    assert {r[0] for r in final} - ran <= {r[0] for r in never_started}


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_takeover_resolves_everything_and_fences_the_old_owner(
    managers: Managers, fault: str
) -> None:
    a, a_out = managers.start("mgr-a", "own")
    wait_for(
        "mgr-a running a command on every domain",
        lambda: (
            {
                e["domain"]
                for e in events(a_out)
                if e["event"] == "ending" or e["event"] == "running"
            }
            >= set(DOMAINS)
        ),
        60,
    )
    os.kill(a.pid, getattr(signal, fault))
    faulted = time.monotonic()
    _b, b_out = managers.start("mgr-b", "takeover")
    recovered = wait_for(
        "mgr-b's recovery of mgr-a's domains",
        lambda: [e for e in events(b_out) if e["event"] == "recovered"],
        LEASE + 10 + 30,  # the bound is checked below; this wait only keeps from hanging
    )
    assert recovered[0]["commands"], "mgr-a left no unfinished command: the test proves nothing"
    took = min(e["t"] for e in events(b_out) if e["event"] == "took")
    assert recovered[0]["t"] - took < 10.0
    assert time.monotonic() - faulted < LEASE + 10.0 + 5.0  # + mgr-b's interpreter start
    assert unfinished(managers.conninfo) == []
    leases = sql(managers.conninfo, "SELECT domain, owner, epoch FROM jobctl_leases ORDER BY 1")
    assert leases == [(d, "mgr-b", 2) for d in DOMAINS]
    if fault == "SIGSTOP":
        os.kill(a.pid, signal.SIGCONT)
        refusals = wait_for(
            "mgr-a's refusals, journal and monitor, on every domain",
            lambda: (
                lambda r: (
                    r
                    if {(e["where"], e["domain"]) for e in r}
                    >= {(w, d) for w in ("journal", "monitor") for d in DOMAINS}
                    else None
                )
            )([e for e in events(a_out) if e["event"] == "refused"]),
            30,
        )
        for refusal in refusals:
            assert refusal["owner"] == "mgr-b", refusal
            assert refusal["current_epoch"] == 2, refusal
            assert "'mgr-b' at epoch 2" in refusal["message"], refusal
        assert not [e for e in events(a_out) if e["event"] == "monitor-not-refused"]
        assert unfinished(managers.conninfo) == []
    check_history(managers.conninfo)
