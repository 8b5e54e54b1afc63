"""FileTarget: a real file written with pwrite and made durable with fsync."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobctl.restore import FileTarget


def test_create_makes_a_sparse_file_of_the_size(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with FileTarget.create(path, 1 << 20) as target:
        assert target.skip_zeros
        target.write(4096, b"abc")
        target.flush()
    assert path.stat().st_size == 1 << 20
    data = path.read_bytes()
    assert data[4096:4099] == b"abc"
    assert data.count(0) == (1 << 20) - 3
    # nothing but the written page is allocated (the file is sparse)
    assert path.stat().st_blocks * 512 < 1 << 20


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        FileTarget.create(path, 10)
    assert path.read_bytes() == b"old"


def test_create_rejects_negative_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must not be negative, got -1"):
        FileTarget.create(tmp_path / "disk.img", -1)
    assert not (tmp_path / "disk.img").exists()


def test_open_keeps_contents_and_writes_zeros(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"x" * 8)
    with FileTarget.open(path) as target:
        assert not target.skip_zeros
        target.write(2, bytes(3))
    assert path.read_bytes() == b"xx\0\0\0xxx"


def test_open_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileTarget.open(tmp_path / "missing.img")


def test_short_pwrite_is_repeated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    calls: list[int] = []

    def short_pwrite(fd: int, data: memoryview, offset: int) -> int:
        calls.append(offset)
        return real_pwrite(fd, data[:3], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    path = tmp_path / "disk.img"
    with FileTarget.create(path, 16) as target:
        target.write(5, b"0123456789")
    assert calls == [5, 8, 11, 14]
    assert path.read_bytes() == b"\0" * 5 + b"0123456789" + b"\0"


def test_closed_target_refuses_writes_and_close_is_idempotent(tmp_path: Path) -> None:
    target = FileTarget.create(tmp_path / "disk.img", 4)
    target.close()
    target.close()
    assert target.closed
    assert "closed" in repr(target)
    with pytest.raises(ValueError, match="FileTarget is closed"):
        target.write(0, b"a")
    with pytest.raises(ValueError, match="FileTarget is closed"):
        target.flush()
