"""A damaged journal never lies: each open either serves every acknowledged
record exactly as it was acknowledged, or raises ``JournalCorruptError``
naming the file (at open, or at the read that meets the damage). Never an
altered record, never a journal silently emptier than what was
acknowledged, never a raw ``KeyError`` or an ``ExceptionGroup``.

The first tests are the damage cases found by hand; the last one draws
random damage (byte flips, truncation, zeroed pages, appended garbage,
deleted ``-wal``/``-shm``/seal, another journal's ``-wal`` or seal) to real
journals that a real process wrote and then closed or died holding.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from jobctl import Entity
from jobctl.journal import (
    JournalCorruptError,
    JournalNotFoundError,
    SqliteJournalStore,
    TaskSpec,
    open_journal,
    recover,
)

from ._corpus import dump
from ._forkserver import DONE, KILLED, ForkServer
from ._support import raw
from ._version_1 import SCHEMA_1


def page_of(path: Path, name: str) -> tuple[int, int]:
    """Offset and size of the root page of table or index ``name``."""
    conn = sqlite3.connect(path)
    try:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (name,)
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    return (root - 1) * size, size


def flip_in_page(path: Path, name: str, needle: bytes, at: int, bit: int) -> None:
    """Flip one bit of the ``at``-th byte of ``needle`` inside page ``name``."""
    offset, size = page_of(path, name)
    data = bytearray(path.read_bytes())
    found = data.find(needle, offset, offset + size)
    assert found >= 0, (name, needle)
    data[found + at] ^= 1 << bit
    path.write_bytes(bytes(data))


async def unfinished(path: Path, n: int) -> None:
    async with open_journal(path) as journal:
        for c in range(n):
            await journal.begin_command("k", [], command_id=f"cmd-{c:02d}")


# -- the damage cases found by hand ---------------------------------------------------


@pytest.mark.anyio
async def test_an_empty_file_is_not_a_new_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"")
    with pytest.raises(JournalCorruptError, match=r"is empty \(0 bytes\)") as info:
        async with open_journal(path):
            pass
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert path.read_bytes() == b""
    assert [p.name async for p in anyio.Path(tmp_path).iterdir()] == ["j.db"]


@pytest.mark.anyio
async def test_a_flipped_byte_in_an_index_is_found_at_open(tmp_path: Path) -> None:
    # quick_check passes this file; the old journal then raised a raw
    # KeyError from unfinished_commands().
    path = tmp_path / "j.db"
    await unfinished(path, 6)
    flip_in_page(path, "commands_unfinished", b"cmd-03", 5, 6)
    assert raw(path, "PRAGMA quick_check") == [("ok",)]
    before = path.read_bytes()
    with pytest.raises(JournalCorruptError, match="missing from index commands_unfinished") as info:
        await SqliteJournalStore.open(path)
    assert info.value.path == str(path)
    assert path.read_bytes() == before


@pytest.mark.anyio
async def test_undecodable_text_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await journal.begin_command("k", [TaskSpec("a", "mem")], command_id="c1", data={"n": "é"})
    # Valid b-trees, an invalid UTF-8 sequence where the text was.
    raw(path, "UPDATE commands SET data = CAST(X'7B226E223A22FF227D' AS TEXT)")
    async with open_journal(path) as journal:
        for read in (journal.unfinished_commands, lambda: journal.command("c1")):
            with pytest.raises(JournalCorruptError, match="Could not decode to UTF-8") as info:
                await read()
            assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.anyio
async def test_recover_meets_damage_as_one_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await unfinished(path, 6)
    ended: list[str] = []

    async def end(ctx: Any) -> None:
        ended.append(ctx.key)
        await anyio.lowlevel.checkpoint()

    async with open_journal(path) as journal:
        # Damage appears while the journal is open (after its checks): the
        # last key of the commands' primary-key index no longer matches.
        flip_in_page(path, "sqlite_autoindex_commands_1", b"cmd-05", 5, 6)
        # A commit by another connection: the store's connections drop
        # their cached pages and read the damaged one.
        raw(path, "PRAGMA user_version = 2")
        with pytest.raises(JournalCorruptError, match="recovery read command 'cmd-05'") as info:
            await recover(journal, backends={}, end_actions={"k": end})
        assert info.value.path == str(path)
    assert "cmd-05" not in ended
    # At rest, the next open finds it before anything runs.
    with pytest.raises(JournalCorruptError, match="sqlite_autoindex_commands_1"):
        await SqliteJournalStore.open(path)


@pytest.mark.anyio
async def test_a_restored_backup_is_refused_until_resealed(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await unfinished(path, 2)
    backup = path.read_bytes()
    async with open_journal(path) as journal:
        await journal.begin_command("k", [], command_id="after-backup")
    path.write_bytes(backup)
    with pytest.raises(JournalCorruptError, match=r"holds 2 commits, but 3 were acknowledged"):
        await SqliteJournalStore.open(path)
    # The operator accepts the loss explicitly.
    async with open_journal(path, reseal=True) as journal:
        assert [c.id for c in await journal.unfinished_commands()] == ["cmd-00", "cmd-01"]
    async with open_journal(path) as journal:
        assert len(await journal.unfinished_commands()) == 2


@pytest.mark.anyio
async def test_a_deleted_journal_is_not_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await unfinished(path, 1)
    path.unlink()
    with pytest.raises(JournalCorruptError, match=r"is missing, but its seal .* says 1 commits"):
        await SqliteJournalStore.open(path)
    assert not path.exists()
    with pytest.raises(JournalNotFoundError, match="no journal file"):
        await SqliteJournalStore.open(tmp_path / "other.db", create=False)
    assert not (tmp_path / "other.db").exists()
    async with open_journal(path, reseal=True) as journal:
        assert await journal.unfinished_commands() == ()


@pytest.mark.anyio
async def test_a_version_1_journal_is_migrated_with_checksums(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in SCHEMA_1:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO commands VALUES ('c1', 'k', 'running', NULL, '{}', NULL, NULL, 0, 1.0, 1.0)"
    )
    conn.execute(
        "INSERT INTO tasks VALUES"
        " ('c1.0', 'c1', 0, 'a', 'mem', 'j1', 'running', '{}', NULL, NULL, 1.0)"
    )
    conn.execute("INSERT INTO entities VALUES ('vm', 'vm1', 'c1', 0, 1)")
    conn.close()
    async with open_journal(path) as journal:
        (command,) = await journal.unfinished_commands()
        assert (command.id, command.tasks[0].backend_id) == ("c1", "j1")
        assert command.entities == (Entity("vm", "vm1").exclusive(),)  # shared = 0
        assert await journal.active_commands("vm", "vm1") == ("c1",)
    assert raw(path, "PRAGMA user_version") == [(2,)]
    # Migrated rows carry checksums like new ones.
    raw(path, "UPDATE tasks SET backend_id = 'j2'")
    async with open_journal(path) as journal:
        with pytest.raises(JournalCorruptError, match="checksum mismatch"):
            await journal.command("c1")


# -- random damage to real journals ----------------------------------------------------

NAME = "journal.db"


class Corpus(dict[str, tuple[Path, dict[str, Any]]]):
    """The journals, by name: directory and what it served before damage.
    (A short repr: Hypothesis 6.170 reports a large argument as a flaky
    strategy instead of showing the failing example.)"""

    def __repr__(self) -> str:
        return f"<corpus {sorted(self)}>"


@pytest.fixture(scope="module")
def corpus() -> Iterator[Corpus]:
    """Journals written by a real process: closed cleanly, or SIGKILLed with
    its newest commits only in the ``-wal`` (with and without a checkpoint
    halfway), and another journal's, for its ``-wal`` and seal."""
    server = ForkServer()
    with tempfile.TemporaryDirectory() as tmp:
        built = Corpus()
        try:
            for name, scenario, ending in [
                ("closed", {"seed": 1, "close": True}, DONE),
                ("crashed", {"seed": 2}, KILLED),
                ("checkpointed", {"seed": 3, "checkpoint": True}, KILLED),
                ("other", {"seed": 4}, KILLED),
            ]:
                workdir = Path(tmp) / name
                workdir.mkdir()
                assert server.run("corpus", workdir, scenario) == ending
                expected = json.loads((workdir / "expected.json").read_text())
                assert len(expected["commands"]) == 24 and expected["unfinished"]
                built[name] = (workdir, expected)
            assert (built["crashed"][0] / f"{NAME}-wal").stat().st_size > 0
            yield built
        finally:
            server.close()


FILES = (NAME, f"{NAME}-wal", f"{NAME}-shm", f"{NAME}-seal")
KINDS = ("flip", "truncate", "zero", "append", "delete", "foreign-wal", "foreign-seal")


def damage(data: st.DataObject, work: Path, other: Path) -> str:
    """Apply one drawn damage to the journal's files; what it was."""
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    if kind.startswith("foreign"):
        name = f"{NAME}-wal" if kind == "foreign-wal" else f"{NAME}-seal"
        shutil.copyfile(other / name, work / name)
        return kind
    present = [name for name in FILES if (work / name).exists()]
    if kind == "delete":
        if not present:
            return "delete (no file left)"
        name = data.draw(st.sampled_from(present), label="file")
        (work / name).unlink()
        return f"delete {name}"
    sized = [n for n in present if (work / n).stat().st_size]
    if not sized:
        return f"{kind} (no file left to damage)"
    name = data.draw(st.sampled_from(sized), label="file")
    target = work / name
    content = bytearray(target.read_bytes())
    size = len(content)
    if kind == "flip":
        at = data.draw(st.integers(0, size - 1), label="offset")
        content[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    elif kind == "truncate":
        del content[data.draw(st.integers(0, size - 1), label="size") :]
    elif kind == "zero":
        page = data.draw(st.integers(0, (size - 1) // 4096), label="page")
        content[page * 4096 : (page + 1) * 4096] = bytes(
            len(content[page * 4096 : (page + 1) * 4096])
        )
    else:
        content += data.draw(st.binary(min_size=1, max_size=8192), label="garbage")
    target.write_bytes(bytes(content))
    return f"{kind} {name}"


async def serve_all(path: Path, expected: dict[str, Any]) -> dict[str, Any] | JournalCorruptError:
    """What the journal serves, or the corruption it reports."""
    try:
        async with open_journal(path, synchronous="normal") as journal:
            return await dump(journal, expected)
    except JournalCorruptError as exc:
        return exc


@given(data=st.data())
def test_damage_is_reported_never_served(corpus: Corpus, data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(["closed", "crashed", "checkpointed"]), label="journal")
    source, expected = corpus[base]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in FILES:
            if (source / name).exists():
                shutil.copyfile(source / name, work / name)
        done = [damage(data, work, corpus["other"][0]) for _ in range(data.draw(st.integers(1, 3)))]
        # Deleting the journal and its seal is removing it, not damaging it.
        assume((work / NAME).exists() or (work / f"{NAME}-seal").exists())
        backend = data.draw(st.sampled_from(["asyncio", "trio"]), label="backend")
        outcome = anyio.run(serve_all, work / NAME, expected, backend=backend)
        if isinstance(outcome, JournalCorruptError):
            why = re.sub(r"'/[^']*'|\d+", "_", str(outcome).split("is damaged: ", 1)[-1])
            event(f"reported: {why[:48]}")
            assert outcome.path == str(work / NAME), (done, outcome)
            assert str(work / NAME) in str(outcome), (done, outcome)
        else:
            event("served intact")
            assert outcome == expected, done
