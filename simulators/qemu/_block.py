"""Block devices: the ``-blockdev`` nodes a simulated VM starts with.

Only what ``query-block``, ``query-blockstats`` and the backup jobs need: a
format node (qcow2 or raw) over an anonymous ``file`` node, optionally
attached to a guest device (``-device virtio-blk-pci,drive=NODE,id=ID``).
Replies have the keys and types of QEMU 7.2's; the numbers are plausible,
not measured.
"""

from __future__ import annotations

from typing import Any, Final, final

import attrs

__all__ = ["Disk"]

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
        return self.filename or f"/var/lib/simulated-qemu/{self.node_name}.{self.format}"

    @property
    def qdev(self) -> str | None:
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
