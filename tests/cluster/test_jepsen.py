"""A Jepsen-style test: three manager processes share 300 domains through one
PostgreSQL journal while a nemesis SIGKILLs (and restarts), SIGSTOPs and
resumes them at drawn times. A checker reads the history the database and
the managers recorded and shows:

* no two managers acted on one domain in overlapping epochs (every fenced
  end-action effect of a domain comes in epoch order, one owner per epoch);
* no acknowledged task lost, none reported done that was not (every command
  a manager reported SUCCEEDED is succeeded in the journal, its task too, and
  its end action's effect was written);
* no end action twice (at most one effect per command and epoch, and one
  final record);
* nothing left to clean up by hand: once the nemesis stops, every command is
  resolved within lease + 10 s.

Faults: ``HYPOTHESIS_PROFILE=deep`` draws 200, otherwise 12 (about 40 s).
The seed is printed with the figures (``JOBCTL_JEPSEN_SEED`` replays one).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from jobctl.journal import PostgresJournalStore
from jobctl.testing import ThrowawayPostgres

from ._manager import TABLES, sql
from .test_takeover import ROOT, events, wait_for

LEASE = 1.5
DOMAINS = [f"d{i:03}" for i in range(300)]
FAULTS = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 12


class Cluster:
    def __init__(self, conninfo: str, tmp: Path) -> None:
        self.conninfo = conninfo
        self.tmp = tmp
        self.live: dict[int, subprocess.Popen[bytes]] = {}
        self.stopped: set[int] = set()
        self.all: list[subprocess.Popen[bytes]] = []
        self.runs = collections.Counter[int]()

    def start(self, slot: int, domains: list[str]) -> None:
        self.runs[slot] += 1
        name = f"m{slot}.{self.runs[slot]}"
        env = {**os.environ, "JOBCTL_PAUSE": "8"}
        with open(self.tmp / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.cluster._manager",
                    self.conninfo,
                    name,
                    str(self.tmp / f"{name}.jsonl"),
                    "member",
                    ",".join(domains) or "-",
                    str(LEASE),
                ],
                cwd=ROOT,
                stderr=err,
                env=env,
            )
        self.live[slot] = proc
        self.all.append(proc)

    def history(self) -> list[dict[str, Any]]:
        return [e for path in sorted(self.tmp.glob("*.jsonl")) for e in events(path)]

    def stop_all(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=30)


def test_three_managers_under_a_nemesis(postgres_server: ThrowawayPostgres, tmp_path: Path) -> None:
    seed = int(os.environ.get("JOBCTL_JEPSEN_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    conninfo = postgres_server.create_database()

    async def schema() -> None:
        async with await PostgresJournalStore.open(conninfo):
            pass

    anyio.run(schema)
    for statement in TABLES:
        sql(conninfo, statement)
    cluster = Cluster(conninfo, tmp_path)
    faults = collections.Counter[str]()
    try:
        for slot in range(3):
            cluster.start(slot, DOMAINS[slot * 100 : (slot + 1) * 100])
        wait_for(
            "every domain owned",
            lambda: sql(conninfo, "SELECT count(*) FROM jobctl_leases")[0][0] == len(DOMAINS),
            60,
        )
        resume_at: dict[int, float] = {}
        next_fault = time.monotonic() + rng.uniform(0.5, 2.0)

        def drawn() -> int:
            return faults["SIGKILL"] + faults["SIGSTOP"]

        while drawn() < FAULTS or resume_at:
            now = time.monotonic()
            for slot, at in list(resume_at.items()):
                if now >= at:
                    os.kill(cluster.live[slot].pid, signal.SIGCONT)
                    del resume_at[slot]
                    faults["SIGCONT"] += 1
            if drawn() < FAULTS and now >= next_fault:
                slot = rng.randrange(3)
                if slot not in resume_at:
                    if rng.random() < 0.4:
                        cluster.live[slot].kill()
                        cluster.live[slot].wait(timeout=30)
                        faults["SIGKILL"] += 1
                        cluster.start(slot, [])
                    else:
                        os.kill(cluster.live[slot].pid, signal.SIGSTOP)
                        faults["SIGSTOP"] += 1
                        # Past the lease mostly; sometimes a pause within it.
                        pause = rng.choice(
                            [rng.uniform(0.2, LEASE / 2), rng.uniform(LEASE, 3 * LEASE)]
                        )
                        resume_at[slot] = now + pause
                next_fault = now + rng.uniform(0.5, 2.5)
            time.sleep(0.02)
        # Quiesce: no new commands; everything begun must be resolved.
        quiet = time.monotonic()
        for proc in cluster.live.values():
            os.kill(proc.pid, signal.SIGUSR1)
        wait_for(
            "every command resolved after the nemesis stopped",
            lambda: (
                not sql(
                    conninfo, "SELECT 1 FROM jobctl_commands WHERE state IN ('running', 'ending')"
                )
            ),
            LEASE + 10 + 20,
        )
        settle = time.monotonic() - quiet
        history = cluster.history()
    finally:
        cluster.stop_all()
    errors = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.err")) if p.read_text())
    assert "Traceback" not in errors, errors[-4000:]

    # -- the checker ----------------------------------------------------------------------
    commands = {
        r[0]: (r[1], r[2]) for r in sql(conninfo, "SELECT id, state, domain FROM jobctl_commands")
    }
    tasks = dict(sql(conninfo, "SELECT command_id, state FROM jobctl_tasks"))
    runs = sql(
        conninfo,
        "SELECT r.command_id, r.owner, r.epoch, r.at, c.domain FROM end_runs r"
        " JOIN jobctl_commands c ON c.id = r.command_id ORDER BY r.at",
    )
    # No two managers acting on one domain in overlapping epochs.
    by_domain: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for _command, owner, epoch, _at, domain in runs:
        by_domain[domain].append((epoch, owner))
    for domain, acts in by_domain.items():
        epochs = [epoch for epoch, _ in acts]
        assert epochs == sorted(epochs), f"{domain}: an older epoch acted after a newer one"
        owners: dict[int, set[str]] = collections.defaultdict(set)
        for epoch, owner in acts:
            owners[epoch].add(owner)
        assert all(len(o) == 1 for o in owners.values()), f"{domain}: two owners in one epoch"
    # No end action twice: at most one effect per command and epoch.
    per_epoch = collections.Counter((r[0], r[2]) for r in runs)
    assert max(per_epoch.values(), default=1) == 1
    effects = collections.Counter(r[0] for r in runs)
    # No acknowledged task lost, none reported done that was not.
    acknowledged = {
        e["command"] for e in history if e["event"] == "ended" and e["state"] == "succeeded"
    }
    for command_id in acknowledged:
        assert commands[command_id][0] == "succeeded", command_id
        assert tasks[command_id] == "succeeded", command_id
        assert effects[command_id] >= 1, f"{command_id} reported done without its end action"
    for command_id, (state, _domain) in commands.items():
        if state == "succeeded":
            assert tasks[command_id] == "succeeded" and effects[command_id] >= 1, command_id
    assert settle < LEASE + 10 + 5
    refusals = [e for e in history if e["event"] == "refused"]
    for refusal in refusals:
        assert refusal["error"] in {"StaleEpochError", "LeaseLostError"}
    takeovers = sum(len(e["domains"]) for e in history if e["event"] == "took")
    max_epoch = sql(conninfo, "SELECT max(epoch) FROM jobctl_leases")[0][0]
    again = sum(1 for count in effects.values() if count > 1)
    print(
        f"\njepsen: seed {seed}; faults {dict(faults)}; {len(commands)} commands"
        f" ({sum(1 for s, _ in commands.values() if s == 'succeeded')} succeeded,"
        f" {sum(1 for s, _ in commands.values() if s == 'failed')} failed),"
        f" {len(acknowledged)} acknowledged; {takeovers} domain takeovers, max epoch"
        f" {max_epoch}; {len(refusals)} stale writes or commands refused; {again} end actions"
        f" run again in a later epoch after a cut-short attempt; settled in {settle:.1f} s"
    )
    assert takeovers > 0 and commands
