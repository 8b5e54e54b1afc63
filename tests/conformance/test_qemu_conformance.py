"""Differential tests: the same QMP sessions against real QEMU 7.2 and the simulator.

Each scenario runs first on ``qemu-system-x86_64`` and then on the simulator;
the logs must match after :func:`normalize` (reply shapes, error classes and
descs, event order). Needs QEMU (skipped with a reason outside CI when it is
absent, failed in CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl_simulators.qemu import COMMANDS
from jobctl_simulators.qemu._qapi import Alternate, Array, Enum, QType, Struct, Union, Unmodelled
from jobctl_simulators.qemu._schema import COMMAND_ARGUMENTS
from tests._requires import require_qemu
from tests.simulator.rawqmp import RawQmp

from .harness import Env, QemuEnv, Scenario, differences, normalize, qemu_env, run_both

pytestmark = [pytest.mark.anyio, pytest.mark.qemu, pytest.mark.timeout(120)]

EVENTS = {"capabilities": [{"capability": "events", "state": True}]}
PAUSE = {"capabilities": [{"capability": "pause-before-switchover", "state": True}]}


async def protocol(env: Env) -> None:
    await env.start("vm")
    c = await env.connect("vm")
    await c.greeting()
    await c.execute("query-status")
    await c.execute("quit")
    await c.execute("no-such-command", id=1)
    for data in (
        b'{"foo": 1}',
        b'{"exec-oob": "query-status"}',
        b"[1]",
        b"garbage\n",
        b'{"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}',
        b'{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}',
    ):
        await c.raw(data)
    await c.execute("qmp_capabilities", id={"a": [1]})
    await c.execute("qmp_capabilities")
    await c.execute("no-such-command", id="x")
    await c.execute("migrate-cancel")
    await c.execute("query-status", {"x": 1})
    await c.execute("query-status", id="x")
    for data in (
        b'{"execute": "query-status", "arguments": 5}',
        b'{"execute": "query-status", "arguments": null}',
        b'{"execute": 5}',
        b'{"id": 1}',
        b'{"execute": "query-status", "foo": 1, "id": 3}',
        b'{"execute": "query-status", "execute": "stop"}',
        b"}",
        b'{"a": tru}',
        b"\xff",
        b'{"execute": "query-status", "id": 1]',
        b"[1 2]",
        b'{"a": "\\u00e9\\q"}',
        b"01 ",
        b'{"execute": "query-status"} {"execute": "query-version", "id": "v"}\n',
    ):
        await c.raw(data)
    await c.reply()  # the second of the pipelined pair
    await c.qmp.send(b'{"execute": "query-status"')  # incomplete: no answer yet
    await c.raw(b"}")
    await c.execute("query-commands")
    for command, arguments in (
        ("migrate", {}),
        ("migrate", {"uri": 5}),
        ("migrate", {"uri": "x", "foo": 5}),
        ("migrate", {"foo": 5}),
        ("migrate", {"uri": "tcp:127.0.0.1:1", "blk": "yes"}),
        ("migrate-set-capabilities", {"capabilities": [{"capability": "events"}]}),
        ("migrate-set-capabilities", {"capabilities": [{"capability": "evts", "state": True}]}),
        ("migrate-set-capabilities", {"capabilities": {}}),
        ("migrate-set-capabilities", {"capabilities": [5]}),
        ("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": "true"}]}),
        ("migrate-continue", {"state": "bogus"}),
        ("job-cancel", {}),
        ("job-cancel", {"id": 5}),
    ):
        await c.execute(command, arguments)


async def oob(env: Env) -> None:
    await env.start("vm")
    c = await env.connect("vm")
    await c.greeting()
    await c.execute("qmp_capabilities", {"enable": ["oob"]})
    await c.raw(b'{"exec-oob": "query-status", "id": 1}')
    await c.raw(b'{"exec-oob": "query-status", "execute": "stop", "id": 2}')
    await c.raw(b'{"exec-oob": "no-such-command", "id": 3}')


async def run_state(env: Env) -> None:
    await env.start("vm", monitors=2)
    a = await env.connect("vm", 0)
    b = await env.connect("vm", 1)
    await a.negotiate()
    await b.greeting()
    await a.execute("stop")  # b is not negotiated: no event for it
    await a.execute("stop")
    await a.execute("query-status")
    await b.execute("qmp_capabilities")
    await a.execute("cont")
    await b.until("RESUME")
    await a.execute("cont")
    await a.execute("quit", id="bye")
    await a.eof()
    await b.eof()
    assert await env.exit_status("vm") == 0


async def prelaunch(env: Env) -> None:
    await env.start("vm", paused=True)
    c = await env.connect("vm")
    await c.negotiate()
    await c.execute("query-status")
    await c.execute("stop")
    await c.execute("query-status")
    await c.execute("cont")
    await c.execute("query-status")


async def migration_settings(env: Env) -> None:
    await env.start("vm")
    c = await env.connect("vm")
    await c.negotiate()
    await c.execute("query-migrate")
    await c.execute("migrate_cancel")
    await c.execute("query-migrate-capabilities")
    await c.execute("query-migrate-parameters")
    for arguments in (
        {"max-bandwidth": -1},
        {"max-bandwidth": "1"},
        {"max-bandwidth": 1.5},
        {"max-bandwidth": 2**64},
        {"downtime-limit": 3000000},
        {"downtime-limit": "x"},
        {"downtime-limit": -1},
        {"compress-level": 300},
        {"compress-level": 10},
        {"x-checkpoint-delay": -1},
        {"tls-creds": 5},
        {"multifd-compression": "x"},
        {"block-incremental": 1},
        {"tls-creds": None, "max-bandwidth": 2**62, "downtime-limit": 200},
    ):
        await c.execute("migrate-set-parameters", arguments)
    await c.execute("migrate-set-capabilities", EVENTS)
    await c.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    await c.execute("migrate-continue", {"state": "active"})
    await c.execute("migrate", {"uri": "foo:bar"})
    await c.execute("query-migrate")
    await c.execute("migrate", {"uri": "unix:"})
    await c.execute("query-migrate")
    await c.execute("migrate", {"uri": "tcp:localhost"})
    await c.execute("migrate", {"uri": "tcp:127.0.0.1:1"})
    await c.until("MIGRATION", status="failed")
    await c.execute("query-migrate")
    await c.execute("migrate", {"uri": f"unix:{env.tmp}/nobody.sock"})
    await c.until("MIGRATION", status="failed")
    await c.execute("query-migrate")


async def _pair(env: Env, *, disks: bool = False) -> tuple[Any, Any, str]:
    await env.start("src", disks=disks)
    await env.start("dst", incoming="defer", disks=disks)
    s = await env.connect("src")
    d = await env.connect("dst")
    await s.negotiate()
    await d.negotiate()
    await d.execute("query-status")
    await d.execute("migrate-set-capabilities", EVENTS)
    await s.execute("migrate-set-capabilities", EVENTS)
    uri = f"unix:{env.tmp}/migrate.sock"
    await d.execute("migrate-incoming", {"uri": uri})
    await d.execute("migrate-incoming", {"uri": uri})
    await d.execute("query-migrate")
    return s, d, uri


async def settle_after_completion() -> None:
    """QEMU announces ``completed`` before it computes the totals and sets the
    run state ``postmigrate`` (the simulator models that window only while
    the switchover stalls commands): give real QEMU that moment."""
    await anyio.sleep(0.2)


async def migration(env: Env) -> None:
    s, d, uri = await _pair(env, disks=True)
    await s.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
    await s.execute("migrate", {"uri": uri})
    await s.until("MIGRATION", status="completed")
    await d.until("MIGRATION", status="completed")
    await settle_after_completion()
    await s.execute("query-migrate")
    await s.execute("query-status")
    await d.execute("query-migrate")
    await d.execute("query-status")
    await s.execute("migrate", {"uri": uri})
    await s.execute("cont")
    await d.execute("migrate-incoming", {"uri": uri})


async def migration_paused_before_switchover(env: Env) -> None:
    s, d, uri = await _pair(env)
    await s.execute("migrate-set-capabilities", PAUSE)
    await s.execute("migrate", {"uri": uri})
    await s.until("MIGRATION", status="pre-switchover")
    await d.until("MIGRATION", status="active")
    await s.execute("query-migrate")
    await s.execute("query-status")
    await s.execute("cont")
    await s.execute("migrate-continue", {"state": "active"})
    # The migration thread wakes on migrate-continue and emits "device" (then
    # "completed") while the main loop writes the reply: in QEMU either may
    # come first (CI saw "device" before the reply, local runs after it).
    await s.settle("migrate-continue", {"state": "pre-switchover"}, "MIGRATION", status="completed")
    await d.until("MIGRATION", status="completed")
    await settle_after_completion()
    await s.execute("query-status")


async def migration_cancelled(env: Env) -> None:
    s, d, uri = await _pair(env)
    await s.execute("migrate-set-parameters", {"max-bandwidth": 20000})
    await s.execute("migrate", {"uri": uri})
    await s.until("MIGRATION", status="active")
    await d.until("MIGRATION", status="active")
    await s.execute("migrate", {"uri": uri})
    await s.execute("migrate-set-capabilities", PAUSE)
    await s.execute("query-migrate")
    await d.execute("query-migrate")
    await s.execute("migrate_cancel")
    await s.until("MIGRATION", status="cancelled")
    await s.execute("query-migrate")
    await s.execute("query-status")
    await d.eof()
    assert await env.exit_status("dst") == 1


async def block_queries(env: Env) -> None:
    await env.start("vm", disks=True)
    c = await env.connect("vm")
    await c.negotiate()
    await c.execute("query-block")
    await c.execute("query-blockstats")
    await c.execute("query-blockstats", {"query-nodes": True})
    await c.execute("query-jobs")
    await c.execute("query-block-jobs")


def _backup(job: str | None = "j1", target: str = "tgt0", /, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"device": "disk0", "target": target, "sync": "full", **extra}
    if job is not None:
        arguments["job-id"] = job
    return arguments


MANUAL = {"auto-finalize": False, "auto-dismiss": False}
# Fast, yet slow enough that a job never completes before blockdev-backup
# returns (unlimited, QEMU copies an empty 64 MiB image that fast).
QUICK = 256 << 20


async def backup(env: Env) -> None:
    await env.start("vm", disks=True)
    c = await env.connect("vm")
    await c.negotiate()
    for arguments in (
        {**_backup(), "device": "nope"},
        _backup("j1", "nope"),
        _backup(sync="bogus"),
        {"device": "disk0", "target": "tgt0"},
        _backup(sync="incremental"),
        _backup("1bad"),
        _backup(None),
        _backup("j1", "disk0"),
        _backup(speed=-5),
        _backup(speed="x"),
    ):
        await c.execute("blockdev-backup", arguments)
    # a slow job, cancelled
    await c.execute("blockdev-backup", _backup(speed=65536, **MANUAL))
    await c.execute("blockdev-backup", _backup("j1", "tgt1"))
    await c.execute("blockdev-backup", _backup("j2"))
    await c.execute("query-jobs")
    await c.execute("query-block-jobs")
    await c.execute("job-finalize", {"id": "j1"})
    await c.execute("job-dismiss", {"id": "j1"})
    await c.settle("job-cancel", {"id": "j1"}, "JOB_STATUS_CHANGE", status="concluded")
    await c.execute("query-jobs")
    await c.execute("query-block-jobs")
    await c.execute("job-cancel", {"id": "j1"})
    await c.execute("job-dismiss", {"id": "j1"})
    await c.execute("query-jobs")
    # a job that completes, finalized and dismissed by hand
    await c.execute("blockdev-backup", _backup("j3", "tgt1", speed=QUICK, **MANUAL))
    await c.until("BLOCK_JOB_PENDING")
    await c.execute("query-jobs")
    await c.execute("query-block-jobs")
    await c.execute("job-dismiss", {"id": "j3"})
    await c.settle("job-finalize", {"id": "j3"}, "JOB_STATUS_CHANGE", status="concluded")
    await c.execute("query-jobs")
    await c.execute("job-dismiss", {"id": "j3"})
    # a pending job cancelled
    await c.execute("blockdev-backup", _backup("j4", "tgt1", speed=QUICK, **MANUAL))
    await c.until("BLOCK_JOB_PENDING")
    await c.settle("job-cancel", {"id": "j4"}, "JOB_STATUS_CHANGE", status="concluded")
    await c.execute("job-dismiss", {"id": "j4"})
    # automatic finalize and dismiss
    await c.execute("blockdev-backup", _backup("j5", "tgt1", speed=QUICK))
    await c.until("JOB_STATUS_CHANGE", status="null", id="j5")
    # drive-backup, cancelled
    target = f"{env.tmp}/drive-backup.qcow2"
    await c.execute(
        "drive-backup", {**_backup("j6", target, speed=65536, **MANUAL), "format": "qcow2"}
    )
    await c.execute("query-jobs")
    await c.settle("block-job-cancel", {"device": "j6"}, "JOB_STATUS_CHANGE", status="concluded")
    await c.execute("job-dismiss", {"id": "j6"})
    for command in ("job-cancel", "job-finalize", "job-dismiss"):
        await c.execute(command, {"id": "nope"})
    await c.execute("block-job-cancel", {"device": "nope"})


async def cont_after_migration(env: Env) -> None:
    """The source gets its images back once the destination quit."""
    s, d, uri = await _pair(env, disks=True)
    await s.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
    await s.execute("migrate", {"uri": uri})
    await s.until("MIGRATION", status="completed")
    await d.until("MIGRATION", status="completed")
    await settle_after_completion()
    await s.execute("cont")
    await d.execute("quit")
    await d.eof()
    assert await env.exit_status("dst") == 0
    await s.execute("cont")
    await s.execute("query-status")


async def _drain(listener: Any, done: anyio.Event) -> None:
    async with listener, await listener.accept() as stream:
        async for _ in stream:
            pass
    done.set()


async def save_then_cont(env: Env) -> None:
    """A save: migrate to a socket that only reads; then the VM runs on."""
    await env.start("vm", disks=True)
    c = await env.connect("vm")
    await c.negotiate()
    await c.execute("migrate-set-capabilities", EVENTS)
    path = env.tmp / "save.sock"
    listener = await anyio.create_unix_listener(path)
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_drain, listener, done)
        await c.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
        await c.execute("migrate", {"uri": f"unix:{path}"})
        await c.until("MIGRATION", status="completed")
        with anyio.fail_after(20):
            await done.wait()
    await settle_after_completion()
    await c.execute("query-status")
    await c.execute("cont")
    await c.execute("query-status")


async def _bad_incoming(env: Env, data: bytes) -> None:
    await env.start("dst", incoming="defer")
    d = await env.connect("dst")
    await d.negotiate()
    await d.execute("migrate-set-capabilities", EVENTS)
    path = env.tmp / "in.sock"
    await d.execute("migrate-incoming", {"uri": f"unix:{path}"})
    async with await anyio.connect_unix(path) as source:
        if data:
            await source.send(data)
        await source.send_eof()
        await d.until("MIGRATION", status="failed")
        await d.eof()
    assert await env.exit_status("dst") == 1


async def incoming_garbage(env: Env) -> None:
    await _bad_incoming(env, b"\x00\xff not a migration stream\n" * 10)


async def incoming_empty(env: Env) -> None:
    await _bad_incoming(env, b"")


def _node(name: str, path: str, driver: str = "qcow2", **file: Any) -> dict[str, Any]:
    return {
        "driver": driver,
        "node-name": name,
        "file": {"driver": "file", "filename": path, **file},
    }


async def blockdev(env: Env) -> None:
    await env.start("vm", disks=True)
    c = await env.connect("vm")
    await c.negotiate()
    new = str(env.tmp / "new.qcow2")
    await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", new, "64M"])
    raw = str(env.tmp / "new.raw")
    await anyio.run_process(["qemu-img", "create", "-q", "-f", "raw", raw, "64M"])
    for arguments in (
        _node("tgt0", new),
        _node("1bad", new),
        {"driver": "qcow2", "file": {"driver": "file", "filename": new}},
        {"driver": "qcow2", "node-name": "n", "file": "nope"},
        {"driver": "qcow2", "node-name": "n"},
        {"driver": "qcow2", "node-name": "n", "file": {"driver": "file"}},
        {**_node("n", new), "bogus": 1},
        {**_node("n", new), "driver": "nope"},
        _node("n", str(env.tmp / "tgt0.qcow2")),
    ):
        await c.execute("blockdev-add", arguments)
    await c.execute("blockdev-add", _node("new0", new, **{"node-name": "newfile"}))
    await c.execute("blockdev-add", _node("new1", raw, "raw"))
    await c.execute("blockdev-add", _node("new2", new))
    await c.execute("query-block")
    await c.execute("blockdev-backup", _backup("j1", "new0", speed=65536, **MANUAL))
    for node in ("nope", "disk0", "newfile", "new0"):
        await c.execute("blockdev-del", {"node-name": node})
    await c.settle("job-cancel", {"id": "j1"}, "JOB_STATUS_CHANGE", status="concluded")
    await c.execute("job-dismiss", {"id": "j1"})
    await c.execute("blockdev-del", {"node-name": "new0"})
    await c.execute("blockdev-del", {"node-name": "new1"})
    await c.execute("blockdev-del", {"node-name": "new0"})
    await c.execute("blockdev-add", _node("again", new))


SCENARIOS: dict[str, Scenario] = {
    "protocol": protocol,
    "oob": oob,
    "run_state": run_state,
    "prelaunch": prelaunch,
    "migration_settings": migration_settings,
    "migration": migration,
    "migration_paused_before_switchover": migration_paused_before_switchover,
    "migration_cancelled": migration_cancelled,
    "block_queries": block_queries,
    "backup": backup,
    "cont_after_migration": cont_after_migration,
    "save_then_cont": save_then_cont,
    "incoming_garbage": incoming_garbage,
    "incoming_empty": incoming_empty,
    "blockdev": blockdev,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_same_session_same_answers(name: str, tmp_path: Path) -> None:
    qemu = require_qemu()
    real, sim = await run_both(SCENARIOS[name], tmp_path, qemu)
    diff = differences(normalize(real, tmp_path / "qemu"), normalize(sim, tmp_path / "sim"))
    assert not diff, f"the simulator differs from QEMU 7.2:\n{diff}"


async def test_a_second_client_waits_for_the_first(tmp_path: Path) -> None:
    qemu = require_qemu()

    async def scenario(env: Env) -> list[bool]:
        await env.start("vm")
        first = await env.connect("vm")
        await first.negotiate()
        second = await env.connect("vm")
        waited = await second.silent_for(0.3)
        await first.aclose()
        await second.greeting()
        return [waited]

    from .harness import qemu_env as real_env
    from .harness import sim_env

    (tmp_path / "q").mkdir()
    (tmp_path / "s").mkdir()
    async with real_env(tmp_path / "q", qemu) as real:
        real_result = await scenario(real)
    async with sim_env(tmp_path / "s") as sim:
        sim_result = await scenario(sim)
    assert real_result == sim_result == [True]


# -- the schema ----------------------------------------------------------------


def _ours(qtype: QType) -> Any:
    if isinstance(qtype, Union):
        variants = {case: _ours(struct)[1] for case, struct in qtype.variants.items()}
        return ["union", qtype.tag, _ours(qtype.base)[1], variants]
    if isinstance(qtype, Struct):
        return ["object", [[m.name, m.optional, _ours(m.type)] for m in qtype.members]]
    if isinstance(qtype, Array):
        return ["array", _ours(qtype.element)]
    if isinstance(qtype, Enum):
        return ["enum", list(qtype.values)]
    if isinstance(qtype, Alternate):
        kinds = ["string"] * qtype.accepts_str + ["null"] * qtype.accepts_null
        return ["alternate", sorted(kinds + ["object"] * (qtype.object_type is not None))]
    if isinstance(qtype, Unmodelled):
        return "*"  # any type: the simulator refuses the member
    return qtype.json_type


def _theirs(schema: dict[str, dict[str, Any]], name: str) -> Any:
    entry = schema[name]
    meta = entry["meta-type"]
    if meta == "builtin":
        return entry["json-type"]
    if meta == "enum":
        return ["enum", [m["name"] for m in entry["members"]]]
    if meta == "array":
        return ["array", _theirs(schema, entry["element-type"])]
    if meta == "alternate":
        kinds = [
            schema[m["type"]].get("json-type", schema[m["type"]]["meta-type"])
            for m in entry["members"]
        ]
        return ["alternate", sorted(kinds)]
    assert meta == "object", entry
    members = [[m["name"], "default" in m, _theirs(schema, m["type"])] for m in entry["members"]]
    if "variants" not in entry:
        return ["object", members]
    variants = {v["case"]: _theirs(schema, v["type"])[1] for v in entry["variants"]}
    return ["union", entry["tag"], members, variants]


def _match(ours: Any, theirs: Any) -> bool:
    """Equal, where ``"*"`` in ours matches anything and a union's variants
    in ours need only be a subset of theirs."""
    if ours == "*":
        return True
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() <= theirs.keys() and all(_match(v, theirs[k]) for k, v in ours.items())
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(_match, ours, theirs))
    return bool(ours == theirs)


async def test_argument_schema_matches_query_qmp_schema(tmp_path: Path) -> None:
    qemu = require_qemu()
    async with qemu_env(tmp_path, qemu) as env:
        assert isinstance(env, QemuEnv)
        await env.start("vm")
        c = await env.connect("vm")
        await c.negotiate()
        reply = await c.execute("query-qmp-schema")
    schema = {entry["name"]: entry for entry in reply["return"]}
    for command in COMMANDS:
        ours = _ours(COMMAND_ARGUMENTS[command])
        theirs = _theirs(schema, schema[command]["arg-type"])
        assert _match(ours, theirs), (command, ours, theirs)


async def test_raw_client_helper_sees_eof(tmp_path: Path) -> None:
    """The harness's own client against real QEMU: quit gives SHUTDOWN, reply, EOF."""
    qemu = require_qemu()
    async with qemu_env(tmp_path, qemu) as env:
        await env.start("vm")
        c = await env.connect("vm")
        await c.negotiate()
        qmp: RawQmp = c.qmp
        events, reply = await qmp.execute("quit")
        assert [e["event"] for e in events] == ["SHUTDOWN"]
        assert reply == {"return": {}}
        with anyio.fail_after(10):
            assert await qmp.at_eof()
