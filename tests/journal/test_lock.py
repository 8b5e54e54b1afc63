"""One writer per journal *file*: a second process cannot open the database
for writing through a symlink, a hard link, a renamed path, or after the
files beside it were removed, and the attempt changes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl.journal import (
    JournalCorruptError,
    JournalInUseError,
    SqliteJournalStore,
    TaskSpec,
    TaskState,
    open_journal,
)

from ._forkserver import DONE, ForkServer
from ._support import raw

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


async def intrude(server: ForkServer, workdir: Path, path: Path, n: int) -> dict[str, Any]:
    """Another process tries to open ``path`` and write; what happened."""
    scenario = {"path": str(path), "answer": f"answer-{n}.json"}
    answer = await anyio.to_thread.run_sync(partial(server.run, "intrude", workdir, scenario))
    assert answer == DONE
    result: dict[str, Any] = json.loads((workdir / f"answer-{n}.json").read_text())
    return result


def remove_lock_files(directory: Path, journal: Path) -> list[str]:
    """What an operator "cleaning up stale locks" would delete: every file
    beside the journal that is not SQLite's (none is a lock file)."""
    removed = []
    for entry in directory.iterdir():
        keep = {journal.name, f"{journal.name}-wal", f"{journal.name}-shm", f"{journal.name}-seal"}
        if entry.name.startswith(journal.name) and entry.name not in keep:
            entry.unlink()
            removed.append(entry.name)
    return removed


async def test_a_second_process_cannot_write_the_file_by_any_name(
    server: ForkServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "j.db"
    symlink = tmp_path / "link.db"
    hard = tmp_path / "hard.db"
    renamed = tmp_path / "renamed.db"
    async with open_journal(path) as journal:
        first = await journal.begin_command("k", [TaskSpec("a", "mem")], command_id="c1")
        symlink.symlink_to(path)
        os.link(path, hard)
        (tmp_path / "j.db-lock").write_text("a lock file of an older jobctl\n")
        assert remove_lock_files(tmp_path, path) == ["j.db-lock"]
        answers = [
            await intrude(server, work, symlink, 0),
            await intrude(server, work, hard, 1),
            await intrude(server, work, path, 2),
        ]
        # The same file under a new name, while it is open.
        path.rename(renamed)
        answers.append(await intrude(server, work, renamed, 3))
        renamed.rename(path)
        for answer in answers:
            assert answer["error"] == "JournalInUseError", answer
            assert answer["pid"] == os.getpid(), answer
            assert answer["path"] in (str(path), str(renamed), str(hard)), answer
            assert f"by process {os.getpid()}" in answer["message"], answer
            assert answer["path"] in answer["message"], answer
        # The holder was not disturbed by the attempts: it still writes.
        await journal.update_task(first.tasks[0].id, TaskState.RUNNING)
        await journal.begin_command("k", [], command_id="c2")
    # Nothing of the intruders was committed; all of the holder's was.
    assert raw(path, "SELECT id FROM commands ORDER BY id") == [("c1",), ("c2",)]
    async with open_journal(path) as journal:
        assert (await journal.command("c1")).tasks[0].state is TaskState.RUNNING
    # Closed: the lock is free again, through the symlink too.
    assert await intrude(server, work, symlink, 4) == {"opened": True}
    assert [r[0] for r in raw(path, "SELECT id FROM commands ORDER BY id")][-1].startswith(
        "intruder-"
    )


async def test_a_second_store_in_the_same_process_is_refused_by_any_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    symlink = tmp_path / "link.db"
    hard = tmp_path / "hard.db"
    async with await SqliteJournalStore.open(path) as store:
        symlink.symlink_to(path)
        os.link(path, hard)
        for other in (path, symlink, hard):
            with pytest.raises(JournalInUseError, match=f"by process {os.getpid()}") as info:
                await SqliteJournalStore.open(other)
            assert info.value.pid == os.getpid()
        # The refused opens closed nothing of ours: the store still writes.
        await store.add_command("c1", "k", {}, [], [])
    assert raw(path, "SELECT id FROM commands") == [("c1",)]


async def test_a_journal_is_opened_by_one_name(tmp_path: Path) -> None:
    # SQLite keeps the -wal beside the name it was given; the seal too. A
    # hard link is another name: it has no seal, so it is refused rather
    # than risk a -wal left under the first name.
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await journal.begin_command("k", [], command_id="c1")
    os.link(path, tmp_path / "hard.db")
    with pytest.raises(JournalCorruptError, match=r"hard\.db-seal' is missing"):
        await SqliteJournalStore.open(tmp_path / "hard.db")
    # A symlink resolves to the real name.
    (tmp_path / "link.db").symlink_to(path)
    async with await SqliteJournalStore.open(tmp_path / "link.db") as store:
        assert store.path == str(path)
        assert (await store.get_command("c1")).id == "c1"


async def sqlite_locks(path: Path) -> list[str]:
    """The POSIX locks this process holds on ``path`` (SQLite's own)."""
    st = os.stat(path)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    locks = await anyio.Path("/proc/locks").read_text()
    return [
        line.split(":", 1)[1]
        for line in locks.splitlines()
        if " POSIX " in line and f" {os.getpid()} {wanted} " in line
    ]


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
async def test_a_refused_open_leaves_sqlites_locks_alone(tmp_path: Path) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process
    # holds on it: a refused second store must not open (and close) one.
    path = tmp_path / "j.db"
    (tmp_path / "link.db").symlink_to(path)
    async with open_journal(path) as journal:
        await journal.begin_command("k", [], command_id="c1")
        await journal.unfinished_commands()
        held = await sqlite_locks(path)
        assert held, "SQLite holds a shared lock on a WAL database it reads"
        for other in (path, tmp_path / "link.db"):
            with pytest.raises(JournalInUseError):
                await SqliteJournalStore.open(other)
            assert await sqlite_locks(path) == held
