"""Block devices: the ``-blockdev`` nodes of a simulated VM, and image locks.

Only what ``query-block``, ``query-blockstats`` and the backup jobs need: a
format node (qcow2 or raw) over an anonymous ``file`` node, optionally
attached to a guest device (``-device virtio-blk-pci,drive=NODE,id=ID``).
Replies have the keys and types of QEMU 7.2's; the numbers are plausible,
not measured.

:class:`ImageLocks` models QEMU's image locking (file-posix's OFD locks) for
the VMs of one :class:`~jobctl_simulators.qemu.SimulatedHost`: an *active* node
holds the "write" lock of its image file, and a second node that wants the
same file (in any VM of the host, or the same VM) fails with QEMU's
``Failed to get "write" lock``. Nodes are inactive while an incoming
migration runs and after an outgoing one completed; ``cont`` activates them
again. Locks are not seen across processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, final

import attrs

from ._errors import CommandErrorReply
from ._ids import id_wellformed

__all__ = ["BlockNodes", "Disk", "ImageLocks"]

#: QEMU's error when another node holds an image's lock.
WRITE_LOCK_ERROR: Final = 'Failed to get "write" lock'

MiB: Final = 1 << 20


def _positive(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _format(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ("qcow2", "raw"):
        raise ValueError(f"{attribute.name} must be 'qcow2' or 'raw', got {value!r}")


@final
@attrs.frozen
class Disk:
    """A block node. ``device`` is the id of the guest device it is attached
    to (it then appears in ``query-block``), or None for a bare node such as
    a backup target."""

    node_name: str
    size: int = attrs.field(default=64 * MiB, validator=_positive)
    filename: str | None = None
    format: str = attrs.field(default="qcow2", validator=_format)
    device: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.node_name or self.node_name.startswith("#"):
            raise ValueError(f"invalid node name {self.node_name!r}")

    @property
    def path(self) -> str:
        """The image file: ``filename``, or a made-up path under
        ``/var/lib/simulated-qemu/`` named after the node and format.
        """
        return self.filename or f"/var/lib/simulated-qemu/{self.node_name}.{self.format}"

    @property
    def qdev(self) -> str | None:
        """The QOM path of the attached device's backend (as ``query-block``
        shows it), or None for a bare node.
        """
        return None if self.device is None else f"/machine/peripheral/{self.device}/virtio-backend"

    def query_block(self) -> dict[str, Any]:
        """This disk's ``query-block`` entry (attached disks only)."""
        assert self.qdev is not None
        image: dict[str, Any] = {
            "virtual-size": self.size,
            "filename": self.path,
            "format": self.format,
            "actual-size": 200704,
            "dirty-flag": False,
        }
        if self.format == "qcow2":
            image["cluster-size"] = 65536
            image["format-specific"] = {
                "type": "qcow2",
                "data": {
                    "compat": "1.1",
                    "compression-type": "zlib",
                    "lazy-refcounts": False,
                    "refcount-bits": 16,
                    "corrupt": False,
                    "extended-l2": False,
                },
            }
        return {
            "io-status": "ok",
            "device": "",
            "locked": False,
            "removable": False,
            "inserted": {
                "iops_rd": 0,
                "detect_zeroes": "off",
                "image": image,
                "iops_wr": 0,
                "ro": False,
                "node-name": self.node_name,
                "backing_file_depth": 0,
                "drv": self.format,
                "iops": 0,
                "bps_wr": 0,
                "write_threshold": 0,
                "encrypted": False,
                "bps": 0,
                "bps_rd": 0,
                "cache": {"no-flush": False, "direct": False, "writeback": True},
                "file": self.path,
            },
            "qdev": self.qdev,
            "type": "unknown",
        }

    def query_blockstats(self, file_node: str, *, as_backend: bool) -> dict[str, Any]:
        """This disk's ``query-blockstats`` entry: as a device's backend
        (``query-nodes`` false) or as a node."""
        entry: dict[str, Any] = {}
        if as_backend:
            entry["device"] = ""
        entry["parent"] = file_node_stats(file_node)
        entry["stats"] = _stats(accounted=as_backend)
        entry["node-name"] = self.node_name
        if as_backend and self.qdev is not None:
            entry["qdev"] = self.qdev
        return entry


@final
class ImageLocks:
    """Which node holds the "write" lock of each image file (by path)."""

    def __init__(self) -> None:
        self._holders: dict[str, tuple[object, str]] = {}

    def holder(self, path: str) -> tuple[object, str] | None:
        """The (owner, node name) holding ``path``'s lock, if any."""
        return self._holders.get(path)

    def acquire(self, owner: object, disks: Iterable[Disk]) -> None:
        """Lock every disk's image for ``owner``, all or none; raise
        :class:`CommandErrorReply` (QEMU's text) if another node holds one."""
        disks = tuple(disks)
        wanted: dict[str, str] = {}
        for disk in disks:
            held = self._holders.get(disk.path)
            if disk.path in wanted or (held is not None and held != (owner, disk.node_name)):
                raise CommandErrorReply(WRITE_LOCK_ERROR)
            wanted[disk.path] = disk.node_name
        for path, node_name in wanted.items():
            self._holders[path] = (owner, node_name)

    def release(self, owner: object, disks: Iterable[Disk]) -> None:
        """Unlock the disks' images that ``owner`` holds."""
        for disk in disks:
            if self._holders.get(disk.path) == (owner, disk.node_name):
                del self._holders[disk.path]

    def release_all(self, owner: object) -> None:
        """Unlock every image ``owner`` holds (its process ended)."""
        for path, (holder, _) in list(self._holders.items()):
            if holder is owner:
                del self._holders[path]

    def __len__(self) -> int:
        """How many images are locked."""
        return len(self._holders)


_QCOW2_MAGIC: Final = b"QFI\xfb"


def _image_size(path: str, driver: str) -> int:
    """The virtual size of an existing image (qcow2 header or raw file size);
    64 MiB when the file is absent (no real disk I/O is modelled)."""
    try:
        with open(path, "rb") as file:
            header = file.read(32)
            size = file.seek(0, 2)
    except OSError:
        return 64 * MiB
    if driver == "qcow2" and header[:4] == _QCOW2_MAGIC and len(header) == 32:
        return int.from_bytes(header[24:32], "big") or 64 * MiB
    return size or 64 * MiB


@final
class BlockNodes:
    """A VM's block nodes: format nodes (:class:`Disk`) over their ``file``
    nodes, and whether they are active (hold their images' locks).

    ``blockdev-add`` and ``blockdev-del`` cover what a backup target needs:
    a ``qcow2`` or ``raw`` node over an inline ``file`` node.
    """

    def __init__(self, disks: Iterable[Disk], locks: ImageLocks, owner: object) -> None:
        disks = tuple(disks)
        names = [disk.node_name for disk in disks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate node names in {names}")
        self.disks: dict[str, Disk] = {disk.node_name: disk for disk in disks}
        self._anonymous = 0
        #: The file node under each format node.
        self.file_nodes: dict[str, str] = {name: self._anonymous_name() for name in names}
        self._locks = locks
        self._owner = owner
        #: Whether the nodes hold their images' locks (see :class:`ImageLocks`).
        self.active = False

    def _anonymous_name(self) -> str:
        name = f"#block{100 + 37 * self._anonymous:03d}"
        self._anonymous += 1
        return name

    # -- activation -------------------------------------------------------------

    def activate(self) -> None:
        """Take every image's lock (QEMU's ``bdrv_activate_all``); raise
        :class:`CommandErrorReply` if another node holds one."""
        if not self.active:
            self._locks.acquire(self._owner, self.disks.values())
            self.active = True

    def activate_at_start(self) -> list[str]:
        """Take the locks of the images nobody holds; return the node names
        whose images another node holds. (Real QEMU would refuse to start;
        the simulator starts, and such a node holds no lock.)"""
        conflicts = []
        for disk in self.disks.values():
            try:
                self._locks.acquire(self._owner, (disk,))
            except CommandErrorReply:
                conflicts.append(disk.node_name)
        self.active = True
        return conflicts

    def inactivate(self) -> None:
        """Give the locks up (QEMU's ``bdrv_inactivate_all``)."""
        if self.active:
            self._locks.release(self._owner, self.disks.values())
            self.active = False

    def close(self) -> None:
        """The process ended: every lock is gone."""
        self._locks.release_all(self._owner)
        self.active = False

    # -- blockdev-add / blockdev-del ---------------------------------------------

    def _name_taken(self, name: str) -> bool:
        return name in self.disks or name in self.file_nodes.values()

    def _check_new_name(self, name: str) -> None:
        if not id_wellformed(name):
            raise CommandErrorReply("Invalid node-name: '" + name + "'")
        if self._name_taken(name):
            raise CommandErrorReply(f"Duplicate nodes with node-name='{name}'")

    def add(self, options: dict[str, Any]) -> Disk:
        """``blockdev-add`` of a qcow2/raw node over an inline file node
        (``options`` already checked against the schema)."""
        name = options.get("node-name")
        if name is None:
            raise CommandErrorReply("'node-name' must be specified for the root node")
        driver = options["driver"]
        if driver not in ("qcow2", "raw"):
            raise CommandErrorReply(
                f"the simulator's blockdev-add models qcow2 and raw nodes, not driver '{driver}'"
            )
        for member in ("backing", "data-file"):
            if options.get(member) is not None:
                raise CommandErrorReply(f"the simulator's blockdev-add does not model '{member}'")
        file = options["file"]
        if isinstance(file, str):
            if not self._name_taken(file):
                raise CommandErrorReply(f"Cannot find device='{file}' nor node-name='{file}'")
            raise CommandErrorReply(
                "the simulator's blockdev-add models an inline 'file' only, "
                f"not a reference to '{file}'"
            )
        if file["driver"] != "file":
            raise CommandErrorReply(
                "the simulator's blockdev-add models 'file' children of driver 'file', "
                f"not '{file['driver']}'"
            )
        self._check_new_name(name)
        file_name = file.get("node-name")
        if file_name is not None:
            if file_name == name:
                raise CommandErrorReply(f"Duplicate nodes with node-name='{name}'")
            self._check_new_name(file_name)
        path = file["filename"]
        disk = Disk(name, size=_image_size(path, driver), filename=path, format=driver)
        if self.active:
            self._locks.acquire(self._owner, (disk,))
        self.disks[name] = disk
        self.file_nodes[name] = file_name if file_name is not None else self._anonymous_name()
        return disk

    def removable(self, name: str) -> Disk:
        """The node ``blockdev-del`` would remove; :class:`CommandErrorReply` (QEMU's
        texts) if there is none or it is attached to a guest device."""
        disk = self.disks.get(name)
        if disk is None:
            if name in self.file_nodes.values():
                raise CommandErrorReply(f"Node {name} is not owned by the monitor")
            raise CommandErrorReply(f"Failed to find node with node-name='{name}'")
        if disk.device is not None:
            raise CommandErrorReply(f"Block device {name} is in use")
        return disk

    def remove(self, name: str) -> None:
        """``blockdev-del`` (after :meth:`removable` and the job checks)."""
        disk = self.disks.pop(name)
        del self.file_nodes[name]
        self._locks.release(self._owner, (disk,))


def file_node_stats(node_name: str) -> dict[str, Any]:
    """A protocol (``file``) node's ``query-blockstats`` entry."""
    return {
        "stats": _stats(accounted=False),
        "node-name": node_name,
        "driver-specific": {
            "discard-bytes-ok": 0,
            "discard-nb-ok": 0,
            "driver": "file",
            "discard-nb-failed": 0,
        },
    }


def _stats(*, accounted: bool) -> dict[str, Any]:
    return {
        "unmap_operations": 0,
        "unmap_merged": 0,
        "flush_total_time_ns": 0,
        "wr_highest_offset": 0,
        "wr_total_time_ns": 0,
        "failed_wr_operations": 0,
        "failed_rd_operations": 0,
        "wr_merged": 0,
        "wr_bytes": 0,
        "timed_stats": [],
        "failed_unmap_operations": 0,
        "failed_flush_operations": 0,
        "account_invalid": accounted,
        "rd_total_time_ns": 0,
        "invalid_unmap_operations": 0,
        "flush_operations": 0,
        "wr_operations": 0,
        "unmap_bytes": 0,
        "rd_merged": 0,
        "rd_bytes": 0,
        "unmap_total_time_ns": 0,
        "invalid_flush_operations": 0,
        "account_failed": accounted,
        "rd_operations": 0,
        "invalid_wr_operations": 0,
        "invalid_rd_operations": 0,
    }
