"""QEMU 7.2's QAPI schema for the commands the simulator implements.

Copied from ``qapi/*.json`` of QEMU 7.2 and checked against a real QEMU's
``query-qmp-schema`` by ``tests/conformance``. Members are in schema order,
base members first, because that order decides which error QEMU reports.
"""

from __future__ import annotations

from typing import Final

from ._qapi import Alternate, Array, Bool, Enum, Int, Str, Struct, UInt

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

_NO_ARGUMENTS: Final = Struct(())
_JOB_ID: Final = Struct.of({"id": Str()})

#: Every simulated command with its argument type, in ``query-commands`` order.
COMMAND_ARGUMENTS: Final[dict[str, Struct]] = {
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
    "query-jobs": _NO_ARGUMENTS,
    "query-block-jobs": _NO_ARGUMENTS,
    "job-cancel": _JOB_ID,
    "job-finalize": _JOB_ID,
    "job-dismiss": _JOB_ID,
    "block-job-cancel": Struct.of({"device": Str(), "*force": Bool()}),
}
