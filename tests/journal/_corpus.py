"""Worker phases for the lock and corruption tests (run by the fork server).

``corpus`` writes a journal of acknowledged records in a real process, dumps
everything the journal's read API serves (``expected.json``), then either
closes the journal or dies by SIGKILL with it open (its ``-wal`` holding
the newest commits). ``intrude`` tries to open a journal that another
process holds and reports what happened (``answer.json``).
"""

from __future__ import annotations

import enum
import json
import os
import random
import signal
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs

from jobctl import AsyncJob, Entity, Job, LockMode, Need
from jobctl.journal import (
    AsyncJobRecord,
    EndContext,
    Journal,
    JournalError,
    TaskSpec,
    TaskState,
    open_journal,
)

COMMANDS = 24


def to_json(value: Any) -> Any:
    """A record as plain JSON data (for comparing what two runs served)."""
    if attrs.has(type(value)):
        return {f.name: to_json(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(to_json(v) for v in value)
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def _entity_key(need: Mapping[str, Any]) -> str:
    """``type/id`` of a need as :func:`to_json` gives it."""
    return f"{need['entity']['type']}/{need['entity']['id']}"


async def dump(journal: Journal, expected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the read API serves: each command by id, the unfinished
    ones, the async jobs and each entity's active commands (the ids and
    entities are those of ``expected`` when given)."""
    unfinished = [to_json(c) for c in await journal.unfinished_commands()]
    if expected is None:
        ids = sorted({c["id"] for c in unfinished} | {f"cmd-{c:02d}" for c in range(COMMANDS)})
        entities = sorted({_entity_key(n) for c in unfinished for n in c["entities"]})
    else:
        ids, entities = sorted(expected["commands"]), sorted(expected["active"])
    commands = {command_id: to_json(await journal.command(command_id)) for command_id in ids}
    if expected is None:
        entities = sorted({_entity_key(n) for c in commands.values() for n in c["entities"]})
    active = {}
    for entity in entities:
        type_, id_ = entity.split("/")
        active[entity] = list(await journal.active_commands(type_, id_))
    return {
        "commands": commands,
        "unfinished": unfinished,
        "async_jobs": [to_json(j) for j in await journal.async_jobs()],
        "active": active,
    }


async def _end(ctx: EndContext) -> Mapping[str, Any]:
    await anyio.lowlevel.checkpoint()
    return {"ended": ctx.key, "attempt": ctx.attempt}


async def corpus(workdir: Path, scenario: Any) -> None:
    """Write the corpus journal ``journal.db`` (see the module)."""
    rng = random.Random(scenario["seed"])
    path = workdir / "journal.db"
    async with open_journal(path, synchronous="normal") as journal:
        for c in range(COMMANDS):
            specs = [
                TaskSpec(
                    f"t{i}",
                    "mem",
                    backend_id=f"{scenario['seed']}-{c}-{i}" if rng.random() < 0.5 else None,
                    params={"disk": f"d{c}.{i}", "pad": "é" * rng.randint(0, 300)},
                )
                for i in range(rng.randint(0, 4))
            ]
            vm_mode = LockMode.SHARED if c % 2 == 1 else LockMode.EXCLUSIVE
            vm, disk = Entity("vm", f"vm{c % 5}"), Entity("disk", str(c))
            entities = [Need(vm, vm_mode), disk.exclusive()]
            command = await journal.begin_command(
                "remove_vm", specs, entities=entities, data={"c": c}, command_id=f"cmd-{c:02d}"
            )
            done = 0
            for task in command.tasks:
                state = rng.choice([TaskState.STARTING, TaskState.RUNNING, TaskState.SUCCEEDED])
                if state is TaskState.SUCCEEDED:
                    backend_id = None if task.backend_id else f"b{c}.{task.position}"
                    await journal.update_task(task.id, TaskState.RUNNING, backend_id=backend_id)
                    await journal.update_task(task.id, state, result={"freed": c})
                    done += 1
                else:
                    await journal.update_task(task.id, state)
            if done == len(command.tasks) and rng.random() < 0.7:
                await journal.end_command(command.id, _end)
            if scenario.get("checkpoint") and c == COMMANDS // 2:
                # Another connection checkpoints: the file holds the older
                # half, the -wal the newer.
                other = sqlite3.connect(path)
                other.execute("PRAGMA wal_checkpoint(PASSIVE)")
                other.close()
        for d in range(3):
            await journal.store.save_async_job(
                AsyncJobRecord(
                    domain=f"vm{d}",
                    job_id=d + 1,
                    kind=AsyncJob.MIGRATION_OUT,
                    phase="perform",
                    owner="migrate",
                    allowed=frozenset({Job.QUERY, Job.DESTROY}),
                    private={"uri": f"tcp:dst:{4444 + d}"},
                    session=journal.session,
                    saved=1000.0 + d,
                )
            )
        expected = await dump(journal)
        (workdir / "expected.json").write_text(json.dumps(expected))
        if not scenario.get("close"):
            os.kill(os.getpid(), signal.SIGKILL)


async def intrude(workdir: Path, scenario: Any) -> None:
    """Try to open ``scenario["path"]`` and write; report the outcome."""
    answer: dict[str, Any]
    try:
        async with open_journal(scenario["path"], synchronous="normal") as journal:
            await journal.begin_command("intruder", [], command_id=f"intruder-{os.getpid()}")
        answer = {"opened": True}
    except JournalError as exc:
        answer = {
            "error": type(exc).__name__,
            "message": str(exc),
            "path": getattr(exc, "path", None),
            "pid": getattr(exc, "pid", None),
        }
    (workdir / scenario["answer"]).write_text(json.dumps(answer))
