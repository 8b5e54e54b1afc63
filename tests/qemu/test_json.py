"""Every value docs/JSON.md documents converts, with ``to_json()``, to a dict
that survives ``json.dumps``/``json.loads`` unchanged and has exactly the
documented keys, nested values following their own tables; live values
from real flows on simulated hosts (real time: save and restore stream
through a real socket)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import Domain, Job
from jobctl.qemu import (
    BackupTarget,
    MigrationOptions,
    backup,
    destroy,
    domstats,
    migrate,
    restore,
    save,
)

from ._support import cluster

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[2] / "docs" / "JSON.md"
OPTIONS = MigrationOptions(bandwidth=1 << 30, poll_interval=0.02)


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return (request.param, {})


def documented() -> dict[str, dict[str, str]]:
    """docs/JSON.md's tables: type name -> key -> JSON type."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"### (\w+)", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
            continue
        row = re.fullmatch(r"\| `(\w+)` \| ([^|]+) \|.*", line)
        if row and current is not None:
            current[row.group(1)] = row.group(2).strip()
    return tables


SCHEMA = documented()
_SCALARS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "object": lambda v: isinstance(v, dict),
}


def conforms(value: Any, json_type: str, seen: set[str], where: str) -> None:
    """``value`` is of the documented ``json_type``; records the tables met."""
    if json_type.endswith(" or null"):
        if value is None:
            return
        json_type = json_type.removesuffix(" or null")
    if json_type.startswith("["):
        assert isinstance(value, list), where
        for n, item in enumerate(value):
            conforms(item, json_type[1:-1], seen, f"{where}[{n}]")
        return
    if json_type in _SCALARS:
        assert _SCALARS[json_type](value), f"{where}: {value!r} is not {json_type}"
        return
    assert json_type in SCHEMA, f"{where}: {json_type!r} is not documented"
    assert isinstance(value, dict), where
    assert set(value) == set(SCHEMA[json_type]), (where, json_type, set(value))
    seen.add(json_type)
    for key, member in SCHEMA[json_type].items():
        conforms(value[key], member, seen, f"{where}.{key}")
    if json_type == "Stamp":
        utc = datetime.datetime.fromisoformat(value["utc"])
        assert utc.utcoffset() == datetime.timedelta(0)
        assert utc.timestamp() == pytest.approx(value["wall"], abs=1e-5)


def check(value: Any, json_type: str, seen: set[str]) -> dict[str, Any]:
    data = value.to_json()
    assert json.loads(json.dumps(data)) == data
    conforms(data, json_type, seen, json_type)
    return data  # type: ignore[no-any-return]


async def test_the_documented_schema_matches_live_values(tmp_path: Path) -> None:
    seen: set[str] = set()
    async with cluster() as c:
        src, dst = await c.started()
        polled: list[dict[str, Any]] = []
        infos: list[dict[str, Any]] = []

        async def poll() -> None:
            while True:
                stats = await domstats(src.domain)
                if stats.migration is not None:
                    polled.append(check(stats, "DomainStats", seen))
                    infos.append(check(src.domain.info(), "DomainInfo", seen))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            migrated = await migrate(src, dst, OPTIONS)
            tg.cancel_scope.cancel()
        check(migrated, "MigrationResult", seen)
        assert polled and infos[0]["async_job"]["kind"] == "migration_out"
        done = check(src.domain.info(), "DomainInfo", seen)
        assert done["completed_async_job"]["outcome"] == "ok"
        assert done["completed_async_job"]["ended"] is not None

        check(await backup(dst, BackupTarget("backup0"), poll_interval=0.01), "BackupResult", seen)
        assert dst.machine is not None
        spec = dst.machine.spec
        path = str(tmp_path / "vm1.save")
        check(await save(dst, path), "SaveResult", seen)
        check(await restore(dst, spec, path), "RestoreResult", seen)
        check(dst.domain.statistics(), "DomainStatistics", seen)
        await destroy(dst)

    # A regular job running and a waiter queued behind it.
    dom = Domain("vm2")
    async with anyio.create_task_group() as tg, dom.job(Job.MODIFY):

        async def wait() -> None:
            async with dom.job(Job.QUERY):
                pass

        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        info = check(dom.info(), "DomainInfo", seen)
        assert len(info["regular_jobs"]) == 1 and len(info["waiters"]) == 1
    assert seen == set(SCHEMA), set(SCHEMA) - seen
