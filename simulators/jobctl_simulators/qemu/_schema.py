"""QEMU 7.2's QAPI schema for the commands the simulator implements.

Copied from ``qapi/*.json`` of QEMU 7.2 and checked against a real QEMU's
``query-qmp-schema`` by ``tests/conformance``. Members are in schema order,
base members first, because that order decides which error QEMU reports.
"""

from __future__ import annotations

from typing import Final

from ._qapi import Alternate, Array, Bool, Enum, Int, Str, Struct, UInt, Union, Unmodelled

__all__ = ["COMMAND_ARGUMENTS", "MIGRATION_CAPABILITIES", "MIGRATION_STATUS"]

QMP_CAPABILITY: Final = Enum("QMPCapability", ("oob",))

MIGRATION_STATUS: Final = Enum(
    "MigrationStatus",
    (
        "none",
        "setup",
        "cancelling",
        "cancelled",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "completed",
        "failed",
        "colo",
        "pre-switchover",
        "device",
        "wait-unplug",
    ),
)

MIGRATION_CAPABILITIES: Final = (
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
)

_STR_OR_NULL: Final = Alternate("StrOrNull")
_U8: Final = UInt(8)
_U32: Final = UInt(32)
_U64: Final = UInt(64)
_SIZE: Final = UInt(64)  # QEMU's 'size' visits exactly like uint64

_BITMAP_ALIAS: Final = Struct.of(
    {"name": Str(), "alias": Str(), "*transform": Struct.of({"*persistent": Bool()})}
)
_NODE_ALIAS: Final = Struct.of(
    {"node-name": Str(), "alias": Str(), "bitmaps": Array(_BITMAP_ALIAS)}
)

MIGRATE_SET_PARAMETERS: Final = Struct.of(
    {
        "*announce-initial": _SIZE,
        "*announce-max": _SIZE,
        "*announce-rounds": _SIZE,
        "*announce-step": _SIZE,
        "*compress-level": _U8,
        "*compress-threads": _U8,
        "*compress-wait-thread": Bool(),
        "*decompress-threads": _U8,
        "*throttle-trigger-threshold": _U8,
        "*cpu-throttle-initial": _U8,
        "*cpu-throttle-increment": _U8,
        "*cpu-throttle-tailslow": Bool(),
        "*tls-creds": _STR_OR_NULL,
        "*tls-hostname": _STR_OR_NULL,
        "*tls-authz": _STR_OR_NULL,
        "*max-bandwidth": _SIZE,
        "*downtime-limit": _U64,
        "*x-checkpoint-delay": _U32,
        "*block-incremental": Bool(),
        "*multifd-channels": _U8,
        "*xbzrle-cache-size": _SIZE,
        "*max-postcopy-bandwidth": _SIZE,
        "*max-cpu-throttle": _U8,
        "*multifd-compression": Enum("MultiFDCompression", ("none", "zlib", "zstd")),
        "*multifd-zlib-level": _U8,
        "*multifd-zstd-level": _U8,
        "*block-bitmap-mapping": Array(_NODE_ALIAS),
    }
)

_ON_ERROR: Final = Enum("BlockdevOnError", ("report", "ignore", "enospc", "stop", "auto"))

BACKUP_COMMON: Final = Struct.of(
    {
        "*job-id": Str(),
        "device": Str(),
        "sync": Enum("MirrorSyncMode", ("top", "full", "none", "incremental", "bitmap")),
        "*speed": Int(),
        "*bitmap": Str(),
        "*bitmap-mode": Enum("BitmapSyncMode", ("on-success", "never", "always")),
        "*compress": Bool(),
        "*on-source-error": _ON_ERROR,
        "*on-target-error": _ON_ERROR,
        "*auto-finalize": Bool(),
        "*auto-dismiss": Bool(),
        "*filter-node-name": Str(),
        "*x-perf": Struct.of(
            {"*use-copy-range": Bool(), "*max-workers": Int(), "*max-chunk": Int()}
        ),
    }
)

BLOCKDEV_DRIVER: Final = Enum(
    "BlockdevDriver",
    (
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
        "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
        "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
        "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed",
        "quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc",
        "vvfat",
    ),
)  # fmt: skip

#: ``blockdev-add``'s arguments. Only the ``file``, ``qcow2`` and ``raw``
#: variants are modelled; members with an :class:`Unmodelled` type are
#: refused with a message that says so.
BLOCKDEV_OPTIONS: Final = Union(
    "BlockdevOptions",
    Struct.of(
        {
            "driver": BLOCKDEV_DRIVER,
            "*node-name": Str(),
            "*discard": Enum("BlockdevDiscardOptions", ("ignore", "unmap")),
            "*cache": Struct.of({"*direct": Bool(), "*no-flush": Bool()}),
            "*read-only": Bool(),
            "*auto-read-only": Bool(),
            "*force-share": Bool(),
            "*detect-zeroes": Enum("BlockdevDetectZeroesOptions", ("off", "on", "unmap")),
        }
    ),
    "driver",
)
_BLOCKDEV_REF: Final = Alternate("BlockdevRef", accepts_null=False, object_type=BLOCKDEV_OPTIONS)
_BLOCKDEV_REF_OR_NULL: Final = Alternate("BlockdevRefOrNull", object_type=BLOCKDEV_OPTIONS)
BLOCKDEV_OPTIONS.variants.update(
    {
        "file": Struct.of(
            {
                "filename": Str(),
                "*pr-manager": Str(),
                "*locking": Enum("OnOffAuto", ("auto", "on", "off")),
                "*aio": Enum("BlockdevAioOptions", ("threads", "native", "io_uring")),
                "*aio-max-batch": Int(),
                "*drop-cache": Bool(),
                "*x-check-cache-dropped": Bool(),
            }
        ),
        "qcow2": Struct.of(
            {
                "file": _BLOCKDEV_REF,
                "*backing": _BLOCKDEV_REF_OR_NULL,
                "*lazy-refcounts": Bool(),
                "*pass-discard-request": Bool(),
                "*pass-discard-snapshot": Bool(),
                "*pass-discard-other": Bool(),
                "*overlap-check": Unmodelled(),
                "*cache-size": Int(),
                "*l2-cache-size": Int(),
                "*l2-cache-entry-size": Int(),
                "*refcount-cache-size": Int(),
                "*cache-clean-interval": Int(),
                "*encrypt": Unmodelled(),
                "*data-file": _BLOCKDEV_REF,
            }
        ),
        "raw": Struct.of({"file": _BLOCKDEV_REF, "*offset": Int(), "*size": Int()}),
    }
)

_NO_ARGUMENTS: Final = Struct(())
_JOB_ID: Final = Struct.of({"id": Str()})

#: Every simulated command with its argument type, in ``query-commands`` order.
COMMAND_ARGUMENTS: Final[dict[str, Struct | Union]] = {
    "qmp_capabilities": Struct.of({"*enable": Array(QMP_CAPABILITY)}),
    "query-status": _NO_ARGUMENTS,
    "stop": _NO_ARGUMENTS,
    "cont": _NO_ARGUMENTS,
    "quit": _NO_ARGUMENTS,
    "query-version": _NO_ARGUMENTS,
    "query-commands": _NO_ARGUMENTS,
    "query-block": _NO_ARGUMENTS,
    "query-blockstats": Struct.of({"*query-nodes": Bool()}),
    "migrate-set-capabilities": Struct.of(
        {
            "capabilities": Array(
                Struct.of(
                    {
                        "capability": Enum("MigrationCapability", MIGRATION_CAPABILITIES),
                        "state": Bool(),
                    }
                )
            )
        }
    ),
    "query-migrate-capabilities": _NO_ARGUMENTS,
    "migrate-set-parameters": MIGRATE_SET_PARAMETERS,
    "query-migrate-parameters": _NO_ARGUMENTS,
    "migrate": Struct.of(
        {"uri": Str(), "*blk": Bool(), "*inc": Bool(), "*detach": Bool(), "*resume": Bool()}
    ),
    "migrate-incoming": Struct.of({"uri": Str()}),
    "query-migrate": _NO_ARGUMENTS,
    "migrate_cancel": _NO_ARGUMENTS,
    "migrate-continue": Struct.of({"state": MIGRATION_STATUS}),
    "blockdev-backup": Struct.of({"target": Str()}, base=BACKUP_COMMON),
    "drive-backup": Struct.of(
        {
            "target": Str(),
            "*format": Str(),
            "*mode": Enum("NewImageMode", ("existing", "absolute-paths")),
        },
        base=BACKUP_COMMON,
    ),
    "blockdev-add": BLOCKDEV_OPTIONS,
    "blockdev-del": Struct.of({"node-name": Str()}),
    "query-jobs": _NO_ARGUMENTS,
    "query-block-jobs": _NO_ARGUMENTS,
    "job-cancel": _JOB_ID,
    "job-finalize": _JOB_ID,
    "job-dismiss": _JOB_ID,
    "block-job-cancel": Struct.of({"device": Str(), "*force": Bool()}),
}
