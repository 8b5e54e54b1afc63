"""Argument checking with QEMU 7.2's error texts (observed on real QEMU)."""

from __future__ import annotations

from typing import Any

import pytest

from jobctl_simulators.qemu import CommandErrorReply
from jobctl_simulators.qemu._qapi import check_arguments
from jobctl_simulators.qemu._schema import COMMAND_ARGUMENTS


def error_of(command: str, arguments: dict[str, Any]) -> str:
    with pytest.raises(CommandErrorReply) as info:
        check_arguments(COMMAND_ARGUMENTS[command], arguments)
    assert info.value.error_class == "GenericError"
    return info.value.desc


@pytest.mark.parametrize(
    ("command", "arguments", "desc"),
    [
        ("migrate", {}, "Parameter 'uri' is missing"),
        ("migrate", {"uri": 5}, "Invalid parameter type for 'uri', expected: string"),
        ("migrate", {"uri": "x", "foo": 5}, "Parameter 'foo' is unexpected"),
        (
            "migrate",
            {"uri": "x", "blk": "yes"},
            "Invalid parameter type for 'blk', expected: boolean",
        ),
        ("query-status", {"x": 1}, "Parameter 'x' is unexpected"),
        ("qmp_capabilities", {"enable": ["foo"]}, "Parameter 'null' does not accept value 'foo'"),
        (
            "qmp_capabilities",
            {"enable": "oob"},
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            "qmp_capabilities",
            {"enable": [5]},
            "Invalid parameter type for 'enable[0]', expected: string",
        ),
        (
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events"}]},
            "Parameter 'capabilities[0].state' is missing",
        ),
        (
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "evts", "state": True}]},
            "Parameter 'capability' does not accept value 'evts'",
        ),
        (
            "migrate-set-capabilities",
            {"capabilities": {}},
            "Invalid parameter type for 'capabilities', expected: array",
        ),
        (
            "migrate-set-capabilities",
            {"capabilities": [5]},
            "Invalid parameter type for 'capabilities[0]', expected: object",
        ),
        (
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": "true"}]},
            "Invalid parameter type for 'capabilities[0].state', expected: boolean",
        ),
        (
            "migrate-set-parameters",
            {"max-bandwidth": "1"},
            "Parameter 'max-bandwidth' expects uint64",
        ),
        (
            "migrate-set-parameters",
            {"max-bandwidth": 1.0},
            "Parameter 'max-bandwidth' expects uint64",
        ),
        (
            "migrate-set-parameters",
            {"max-bandwidth": 2**64},
            "Parameter 'max-bandwidth' expects uint64",
        ),
        (
            "migrate-set-parameters",
            {"downtime-limit": "x"},
            "Parameter 'downtime-limit' expects uint64",
        ),
        (
            "migrate-set-parameters",
            {"compress-level": 300},
            "Parameter 'compress-level' expects uint8_t",
        ),
        (
            "migrate-set-parameters",
            {"compress-level": "x"},
            "Parameter 'compress-level' expects uint64",
        ),
        (
            "migrate-set-parameters",
            {"x-checkpoint-delay": -1},
            "Parameter 'x-checkpoint-delay' expects uint32_t",
        ),
        (
            "migrate-set-parameters",
            {"tls-creds": 5},
            "Invalid parameter type for 'tls-creds', expected: StrOrNull",
        ),
        (
            "migrate-set-parameters",
            {"multifd-compression": "x"},
            "Parameter 'multifd-compression' does not accept value 'x'",
        ),
        ("blockdev-backup", {"device": "d", "target": "t"}, "Parameter 'sync' is missing"),
        (
            "blockdev-backup",
            {"device": "d", "target": "t", "sync": "full", "speed": 1.0},
            "Invalid parameter type for 'speed', expected: integer",
        ),
        (
            "blockdev-backup",
            {"device": "d", "target": "t", "sync": "full", "x-perf": {"use-copy-range": 1}},
            "Invalid parameter type for 'x-perf.use-copy-range', expected: boolean",
        ),
        ("job-cancel", {}, "Parameter 'id' is missing"),
        ("migrate-continue", {"state": "bogus"}, "Parameter 'state' does not accept value 'bogus'"),
    ],
)
def test_error_texts(command: str, arguments: dict[str, Any], desc: str) -> None:
    assert error_of(command, arguments) == desc


def test_missing_member_is_reported_before_unexpected_one() -> None:
    assert error_of("migrate", {"foo": 1}) == "Parameter 'uri' is missing"


def test_valid_arguments_pass_through() -> None:
    arguments = {"tls-creds": None, "downtime-limit": -1, "max-bandwidth": -2}
    checked = check_arguments(COMMAND_ARGUMENTS["migrate-set-parameters"], arguments)
    # uint64 and size wrap negative numbers like QEMU (range checks come later)
    assert checked == {"tls-creds": None, "downtime-limit": 2**64 - 1, "max-bandwidth": 2**64 - 2}
