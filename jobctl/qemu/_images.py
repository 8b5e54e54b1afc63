"""Disk images, kernels and initrds as files: what a machine's spec names, read
before any QEMU starts.

:func:`check_file` and :func:`check_image` are the checks both machine
backends run on a spec's files (see :meth:`~jobctl.qemu.MachineSpec.check_files`):
the file is there and readable (a disk: writable too), a qcow2 image has a
qcow2 header, and every file of its backing chain is there. They read the
header only (a few hundred bytes), so they are quick enough to run in the
event loop. :func:`write_empty_qcow2` writes an empty qcow2 image (v3, 64 KiB
clusters, as ``qemu-img create -f qcow2`` does), for hosts that have no
``qemu-img``: the simulated one.

This module knows files, not machines (it imports only the QEMU layer's errors).
"""

from __future__ import annotations

import math
import os
import stat
import struct
from typing import Final, final

import attrs

from jobctl.qemu._errors import MachineSpecError

__all__ = ["FORMATS", "Qcow2Header", "check_file", "check_image", "read_qcow2", "write_empty_qcow2"]

#: The image formats jobctl attaches (``-blockdev`` drivers).
FORMATS: Final = ("qcow2", "raw")

_QCOW2_MAGIC: Final = b"QFI\xfb"
#: The header extension that names the backing file's format.
_BACKING_FORMAT: Final = 0xE2792ACA
_V2_HEADER: Final = 72
_V3_HEADER: Final = 104
_CLUSTER_BITS: Final = 16
_CLUSTER: Final = 1 << _CLUSTER_BITS
#: What QEMU allows for a backing file name (``qcow2_do_open``).
_MAX_BACKING_NAME: Final = 1023
#: Longer chains are refused (QEMU itself has no limit; this is a guard against loops).
_MAX_CHAIN: Final = 64
#: How much of an image's head is read: the header, its extensions, the backing name.
_HEAD: Final = _CLUSTER


@final
@attrs.frozen
class Qcow2Header:
    """What jobctl reads of a qcow2 image's header."""

    version: int
    size: int
    #: The backing file's name as the header stores it (relative names are
    #: relative to the image's directory), or None.
    backing: str | None
    #: The backing file's format, if the header names it.
    backing_format: str | None


def check_file(path: str, what: str, *, writable: bool = False) -> None:
    """Raise :class:`MachineSpecError` unless ``path`` is a regular file this
    process can read (and write, with ``writable``). ``what`` names the file
    in the message (``"MachineSpec.kernel"``)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MachineSpecError(f"{what} {path!r}: no such file") from None
    except OSError as exc:
        raise MachineSpecError(f"{what} {path!r}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MachineSpecError(f"{what} {path!r}: not a regular file")
    mode = os.R_OK | (os.W_OK if writable else 0)
    if not os.access(path, mode):
        needed = "read and write" if writable else "read"
        raise MachineSpecError(f"{what} {path!r}: permission denied (QEMU must {needed} it)")


def check_image(path: str, image_format: str, what: str) -> int:
    """Check a disk image and its backing chain; return its virtual size in bytes.

    The image must be a regular file this process can read and write; a
    ``qcow2`` one must have a qcow2 header (version 2 or 3), and each file
    of its backing chain must be there and readable (a backing file whose
    format the header does not name is taken for qcow2 if it has a qcow2
    header, else for raw, as QEMU probes it). A raw image's size is its
    file's. Raises :class:`MachineSpecError`.
    """
    if image_format not in FORMATS:
        raise MachineSpecError(f"{what} {path!r}: unknown format {image_format!r}")
    check_file(path, what, writable=True)
    if image_format == "raw":
        return os.stat(path).st_size
    header = read_qcow2(path, what)
    _check_chain(path, header, what)
    return header.size


def _check_chain(path: str, header: Qcow2Header, what: str) -> None:
    seen = {os.path.realpath(path)}
    while header.backing is not None:
        backing = os.path.join(os.path.dirname(path), header.backing)
        whose = f"the backing file of {what} {path!r}:"
        check_file(backing, whose)
        real = os.path.realpath(backing)
        if real in seen:
            raise MachineSpecError(f"{whose} {backing!r} is already in its chain (a loop)")
        if len(seen) > _MAX_CHAIN:
            raise MachineSpecError(f"{what}: a backing chain of more than {_MAX_CHAIN} images")
        seen.add(real)
        if header.backing_format not in (None, "qcow2"):
            return  # raw (or a format QEMU reads and jobctl does not look into)
        if header.backing_format is None and not _has_qcow2_magic(backing):
            return  # QEMU probes it as raw
        path, header = backing, read_qcow2(backing, whose)


def _has_qcow2_magic(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(len(_QCOW2_MAGIC)) == _QCOW2_MAGIC


def read_qcow2(path: str, what: str) -> Qcow2Header:
    """The header of qcow2 image ``path``; :class:`MachineSpecError` if it has none."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD)
    except OSError as exc:
        raise MachineSpecError(f"{what} {path!r}: {exc.strerror}") from None
    if head[:4] != _QCOW2_MAGIC:
        raise MachineSpecError(f"{what} {path!r}: not a qcow2 image (no qcow2 header)")
    if len(head) < _V2_HEADER:
        raise MachineSpecError(f"{what} {path!r}: a truncated qcow2 header")
    version, backing_offset, backing_size, _, size = struct.unpack_from(">IQIIQ", head, 4)
    if version not in (2, 3):
        raise MachineSpecError(f"{what} {path!r}: qcow2 version {version} (QEMU reads 2 and 3)")
    end = _V2_HEADER
    if version == 3:
        if len(head) < _V3_HEADER:
            raise MachineSpecError(f"{what} {path!r}: a truncated qcow2 header")
        (end,) = struct.unpack_from(">I", head, 100)
    backing = None
    if backing_offset:
        stop = backing_offset + backing_size
        if backing_size > _MAX_BACKING_NAME or stop > len(head):
            raise MachineSpecError(f"{what} {path!r}: a qcow2 header with a bad backing file name")
        backing = head[backing_offset:stop].decode(errors="surrogateescape")
    return Qcow2Header(version, size, backing, _backing_format(head, end))


def _backing_format(head: bytes, offset: int) -> str | None:
    """The backing format header extension's value, if there is one."""
    while offset + 8 <= len(head):
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == 0:
            return None
        if kind == _BACKING_FORMAT:
            return head[offset + 8 : offset + 8 + length].decode(errors="replace")
        offset += 8 + (length + 7) // 8 * 8
    return None


def write_empty_qcow2(
    path: str, size: int, *, backing: str | None = None, backing_format: str | None = None
) -> None:
    """Write a new, empty qcow2 image of ``size`` bytes (rounded up to 512)
    at ``path``, over ``backing`` (of ``backing_format``) if given: what
    ``qemu-img create -f qcow2 [-b backing -F format] path size`` writes
    (v3, 64 KiB clusters, 16-bit refcounts; ``qemu-img check`` finds it clean).
    A file at ``path`` is replaced, as ``qemu-img create`` replaces it."""
    size = -(-size // 512) * 512
    l2_covers = (_CLUSTER // 8) * _CLUSTER
    l1_size = max(1, math.ceil(size / l2_covers))
    l1_clusters = math.ceil(l1_size * 8 / _CLUSTER)
    refcount_table, refcount_block, l1_table = _CLUSTER, 2 * _CLUSTER, 3 * _CLUSTER
    clusters = 3 + l1_clusters
    if clusters > _CLUSTER // 2:  # one refcount block covers 32768 clusters
        raise ValueError(f"a qcow2 image of {size} bytes is too large to write here")
    extensions = b""
    if backing_format is not None:
        name = backing_format.encode()
        extensions += struct.pack(">II", _BACKING_FORMAT, len(name)) + _pad8(name)
    extensions += struct.pack(">II", 0, 0)
    header_length = 112  # with the compression type (zlib) and padding, as QEMU 7.2 writes
    backing_name = b"" if backing is None else os.fsencode(backing)
    if len(backing_name) > _MAX_BACKING_NAME:
        raise ValueError(f"a backing file name of more than {_MAX_BACKING_NAME} bytes")
    backing_offset = header_length + len(extensions) if backing_name else 0
    header = _QCOW2_MAGIC + struct.pack(
        ">IQIIQIIQQIIQQQQII",
        3,
        backing_offset,
        len(backing_name),
        _CLUSTER_BITS,
        size,
        0,  # no encryption
        l1_size,
        l1_table,
        refcount_table,
        1,  # refcount table clusters
        0,  # snapshots
        0,
        0,  # incompatible features
        0,  # compatible features
        0,  # autoclear features
        4,  # refcount order: 16 bits
        header_length,
    )
    header += bytes(header_length - len(header)) + extensions + backing_name
    with open(path, "wb") as file:
        file.write(header)
        file.seek(refcount_table)
        file.write(struct.pack(">Q", refcount_block))
        file.seek(refcount_block)
        file.write(struct.pack(f">{clusters}H", *([1] * clusters)))
        file.truncate(l1_table + l1_size * 8)


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)
