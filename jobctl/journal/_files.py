"""The journal's files beside SQLite's: the writer lock and the seal.

**The writer lock** is an exclusive ``flock`` on the database file itself
(on an open file description of it), so it belongs to the file, not to a
name: a symlink, a hard link or a renamed path reaches the same lock, and
there is no lock file to delete. Within one process a registry keyed by
(device, inode) refuses a second store before it opens anything: closing
any descriptor of a file drops every POSIX lock the process holds on it,
SQLite's included, so the journal never opens and closes a descriptor of a
file that one of its stores is using. ``flock`` and SQLite's POSIX byte
locks do not interact on local Linux filesystems.

It does not hold across machines: on NFS or SMB ``flock`` is emulated
or advisory per client, and SQLite's WAL mode needs shared memory, which
network filesystems do not give; keep the journal on a local filesystem. It
binds only stores: a process that opens the file with plain ``sqlite3`` and
writes is not stopped. A process that inherits the descriptor across
``fork`` (without ``exec``) shares the lock.

**The seal** (``<journal>-seal``) records, outside SQLite's files, how many
write transactions were acknowledged: after each commit the writer stores
the commit's sequence number (also kept in the ``seal`` table, inside the
same transaction), ``fdatasync``-ed before the commit is acknowledged with
``synchronous="full"``. On open, a journal that holds fewer commits than
its seal, or a seal of another journal, is damaged: its ``-wal`` was
deleted, truncated or swapped for another journal's, or the file was
restored from a backup; SQLite alone would open it as a consistent, older
journal. A journal is sealed before it exists (before its file is linked
into place, or before its migration from version 1 commits), so an existing
journal without its seal is damaged too. The seal has two slots written
alternately, each with its own CRC-32, so a torn write leaves the previous
value readable.

What the seal cannot see: with ``synchronous="normal"`` it is not
``fsync``-ed either, so after a power loss it may lag and the loss of the
last commits goes unseen (that mode does not promise them anyway); and
removing *all* of the journal's files leaves nothing to compare with.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Final, final

import attrs

from ._errors import JournalCorruptError, JournalError, JournalInUseError

__all__ = ["Seal", "SealFile", "WriterLock", "directory_lock", "fsync_directory", "read_seal"]

_HELD: dict[tuple[int, int], str] = {}
_HELD_LOCK = threading.Lock()
#: Descriptors this process opened on a file one of its stores holds (a
#: path renamed under us between ``stat`` and ``open``): closed with the lock.
_DEFERRED: dict[tuple[int, int], list[int]] = {}


def _holder_pid(st: os.stat_result) -> int | None:
    """The pid holding a ``flock`` on the file, from ``/proc/locks`` (Linux)."""
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                if "->" in fields:  # a waiter, not a holder
                    continue
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    pid = int(fields[4])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None


def _in_use(path: str, pid: int | None) -> JournalInUseError:
    holder = f"process {pid}" if pid is not None else "another process (pid unknown)"
    return JournalInUseError(
        f"journal {path!r} is already open for writing by {holder}; the lock is on the"
        " database file itself, whatever name opens it",
        path=path,
        pid=pid,
    )


@final
class WriterLock:
    """The exclusive writer lock of one journal file (see the module)."""

    __slots__ = ("_fd", "_key", "path")

    def __init__(self, path: str, fd: int, key: tuple[int, int]) -> None:
        self.path = path
        self._fd = fd
        self._key = key

    @classmethod
    def acquire(cls, path: str) -> WriterLock:
        """Lock the existing file ``path`` (symlinks already resolved).

        Raises :class:`JournalInUseError` if a store of this or another
        process holds it, :class:`FileNotFoundError` if it does not exist.
        """
        with _HELD_LOCK:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise JournalError(f"journal {path!r} is not a regular file")
            key = (st.st_dev, st.st_ino)
            if key in _HELD:
                raise _in_use(path, os.getpid())
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != key:
                # Renamed under us: never close a descriptor of a file we hold.
                other = (opened.st_dev, opened.st_ino)
                if other in _HELD:
                    _DEFERRED.setdefault(other, []).append(fd)
                    raise _in_use(path, os.getpid())
                os.close(fd)
                raise JournalError(f"journal {path!r} was replaced while it was being opened")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)  # no store of ours uses this file: safe
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise _in_use(path, _holder_pid(st)) from None
                raise JournalError(f"journal {path!r} cannot be locked: {exc}") from None
            _HELD[key] = path
        return cls(path, fd, key)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def release(self) -> None:
        """Unlock; call only once no connection of this process uses the file."""
        with _HELD_LOCK:
            if _HELD.pop(self._key, None) is None:
                return
            for fd in (*_DEFERRED.pop(self._key, ()), self._fd):
                os.close(fd)


@contextlib.contextmanager
def directory_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``'s directory: creators of a
    journal (and its seal) there take turns."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fsync_directory(path: str) -> None:
    """Make a new or removed name in ``path``'s directory durable."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_MAGIC: Final = b"jobjseal"
_SLOT: Final = struct.Struct(">8sI16sQ")
_SLOT_SIZE: Final = _SLOT.size + 4
#: Slots in separate sectors: a torn write damages one of them.
_SLOT_OFFSETS: Final = (0, 512)


@final
@attrs.frozen
class Seal:
    """What a seal slot says: the journal's id, its schema version, and how
    many write transactions were acknowledged."""

    journal_id: str
    version: int
    seq: int


def _pack(seal: Seal) -> bytes:
    body = _SLOT.pack(_MAGIC, seal.version, bytes.fromhex(seal.journal_id), seal.seq)
    return body + struct.pack(">I", zlib.crc32(body))


def _unpack(data: bytes) -> Seal | None:
    if len(data) < _SLOT_SIZE:
        return None
    body, (crc,) = data[: _SLOT.size], struct.unpack(">I", data[_SLOT.size : _SLOT_SIZE])
    if zlib.crc32(body) != crc:
        return None
    magic, version, journal_id, seq = _SLOT.unpack(body)
    if magic != _MAGIC:
        return None
    return Seal(journal_id.hex(), version, seq)


def read_seal(path: str, journal: str) -> Seal | None:
    """The newest valid slot of the seal at ``path`` (None: no seal file).
    Raises :class:`JournalCorruptError` if the file exists but no slot is
    valid, or its slots name two journals."""
    try:
        with open(path, "rb") as file:
            data = file.read(_SLOT_OFFSETS[-1] + _SLOT_SIZE)
    except FileNotFoundError:
        return None
    slots = [_unpack(data[offset : offset + _SLOT_SIZE]) for offset in _SLOT_OFFSETS]
    valid = [slot for slot in slots if slot is not None]
    if not valid or len({slot.journal_id for slot in valid}) > 1:
        raise JournalCorruptError(
            f"journal file {journal!r} is damaged: its seal {path!r} is unreadable, so the"
            " journal cannot prove it still holds every acknowledged commit",
            path=journal,
        )
    return max(valid, key=lambda slot: slot.seq)


@final
class SealFile:
    """The seal, open for writing by the journal's one writer."""

    __slots__ = ("_fd", "_sync", "path", "seal")

    def __init__(self, path: str, fd: int, seal: Seal, sync: bool) -> None:
        self.path = path
        self.seal = seal
        self._fd = fd
        self._sync = sync

    @classmethod
    def write_new(cls, path: str, seal: Seal, *, sync: bool, name_durable: bool = True) -> SealFile:
        """Write both slots with ``seal`` (creating the file), durably; the
        file's name too, unless the caller syncs the directory itself."""
        created = not os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            packed = _pack(seal)
            for offset in _SLOT_OFFSETS:
                os.pwrite(fd, packed, offset)
            os.fsync(fd)
            if created and name_durable:
                fsync_directory(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, seal, sync)

    @classmethod
    def reopen(cls, path: str, seal: Seal, *, sync: bool) -> SealFile:
        """The existing seal file that already says ``seal``."""
        return cls(path, os.open(path, os.O_RDWR | os.O_CLOEXEC), seal, sync)

    def advance(self, seq: int) -> None:
        """Record that commit ``seq`` was made (before it is acknowledged)."""
        seal = attrs.evolve(self.seal, seq=seq)
        os.pwrite(self._fd, _pack(seal), _SLOT_OFFSETS[seq % 2])
        if self._sync:
            os.fdatasync(self._fd)
        self.seal = seal

    def close(self) -> None:
        os.close(self._fd)
