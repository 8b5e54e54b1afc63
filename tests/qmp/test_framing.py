"""Line framing: messages survive any chunking; broken input is named."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl.qmp import (
    MAX_COMMAND_BYTES,
    MAX_NUMBER_CHARS,
    LineReader,
    QMPClosedError,
    QMPProtocolError,
    encode_command,
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_messages = st.lists(st.dictionaries(st.text(max_size=5), _json, max_size=3), max_size=5)


async def _read_all(chunks: list[bytes], max_line: int = 1 << 16) -> list[dict[str, Any]]:
    send, receive = anyio.create_memory_object_stream[bytes](len(chunks) + 1)
    with send:
        for chunk in chunks:
            send.send_nowait(chunk)
    reader = LineReader(receive, max_line)
    messages = []
    with receive:
        while True:
            try:
                messages.append(await reader.receive())
            except anyio.EndOfStream:
                return messages


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@given(messages=_messages, cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_any_chunking_yields_the_same_messages(
    backend: str, messages: list[dict[str, Any]], cuts: list[int]
) -> None:
    data = b"".join(json.dumps(m).encode() + b"\r\n" for m in messages)
    assert anyio.run(_read_all, _split(data, cuts), backend=backend) == messages


@pytest.mark.parametrize(
    ("chunks", "error", "match"),
    [
        ([b'{"a": 1}\r\n{"b"'], QMPClosedError, "ended inside a message"),
        ([b"  \r\n"], None, None),
        ([b'{"a": 1}\r\n', b"x" * 40], QMPProtocolError, "32-byte limit"),
        ([b'{"a": "' + b"x" * 40 + b'"}\n'], QMPProtocolError, "32-byte limit"),
        ([b'"just a string"\n'], QMPProtocolError, "not a JSON object"),
        ([b"[" * 100_000 + b"\n"], QMPProtocolError, "bad JSON"),
        ([b'{"a": "\xff"}\n'], QMPProtocolError, "bad JSON"),
    ],
)
def test_broken_input(chunks: list[bytes], error: type[Exception] | None, match: str) -> None:
    if error is None:
        assert anyio.run(_read_all, chunks, 32) == []
    else:
        with pytest.raises(error, match=match):
            anyio.run(_read_all, chunks, 32 if len(chunks[-1]) < 1000 else 1 << 20)


def test_encode_command() -> None:
    assert encode_command("stop", None, 7) == b'{"execute":"stop","id":7}\n'
    line = encode_command("x", {"s": "é\x00"}, 1)
    assert line == b'{"execute":"x","arguments":{"s":"\\u00e9\\u0000"},"id":1}\n'
    with pytest.raises(ValueError, match="cannot be sent as JSON"):
        encode_command("x", {"n": float("inf")}, 1)
    with pytest.raises(ValueError, match="byte limit"):
        encode_command("x", {"s": "a" * MAX_COMMAND_BYTES}, 1)


@given(
    command=st.text(max_size=20),
    call_id=st.integers(min_value=-(2**70), max_value=2**70),
)
def test_a_command_without_arguments_is_written_as_the_general_encoder_writes_it(
    command: str, call_id: int
) -> None:
    """The short path for argument-less commands writes what json writes."""
    general = (
        json.dumps({"execute": command, "id": call_id}, separators=(",", ":")).encode() + b"\n"
    )
    assert encode_command(command, None, call_id) == general
    assert encode_command(command, {}, call_id) != general  # the other path, arguments and all


def test_a_command_name_past_the_size_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="byte limit"):
        encode_command("x" * MAX_COMMAND_BYTES, None, 1)


_number_text = st.text(alphabet='-+.0123456789eE"x ,:[]{}', max_size=200)


def _oracle_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError("too long")
    return int(text)


def _oracle_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS or not math.isfinite(float(text)):
        raise ValueError("too long or not finite")
    return float(text)


def _no_constant(name: str) -> None:
    raise ValueError(name)


#: What the reader must decode: standard JSON, every literal's length checked.
_oracle = json.JSONDecoder(
    parse_int=_oracle_int, parse_float=_oracle_float, parse_constant=_no_constant
).decode


def _decoded(line: bytes) -> object:
    try:
        return anyio.run(_read_all, [line + b"\n"])
    except QMPProtocolError:
        return QMPProtocolError


@given(
    text=_number_text
    | st.builds(
        lambda n, wrap: wrap.replace("N", n),
        st.text(alphabet="0123456789", min_size=60, max_size=70),
        st.sampled_from(["N", "-N", "[N]", '{"a": N}', '"N"', "N.5", "1.N", "1eN", '["-N"]']),
    )
)
def test_every_line_decodes_as_the_strict_decoder_decodes_it(text: str) -> None:
    """The reader takes a short path (integers converted in C) unless a line
    has a run of number characters that could be a literal too long: either
    way it yields what a decoder that checks every literal yields, or refuses
    what that one refuses."""
    line = b'{"v": ' + text.encode() + b"}"
    try:
        expected: object = [_oracle(line.decode())]
    except (ValueError, RecursionError):
        expected = QMPProtocolError
    assert _decoded(line) == expected


@pytest.mark.parametrize(
    ("literal", "refused"),
    [
        ("1" * MAX_NUMBER_CHARS, False),
        ("1" * (MAX_NUMBER_CHARS + 1), True),
        ("-" + "1" * (MAX_NUMBER_CHARS - 1), False),
        ("-" + "1" * MAX_NUMBER_CHARS, True),
        ("1." + "1" * (MAX_NUMBER_CHARS - 2), False),
        ("1." + "1" * 30 + "e-" + "0" * 31 + "1", True),  # no run of 65 digits alone
        ('"' + "1" * 200 + '"', False),  # in a string: taken, by the checking path
    ],
)
def test_the_number_limit_holds_at_its_edge(literal: str, refused: bool) -> None:
    line = b'{"return": ' + literal.encode() + b', "id": 1}'
    if refused:
        assert _decoded(line) is QMPProtocolError
    else:
        decoded = _decoded(line)
        assert isinstance(decoded, list) and decoded[0]["id"] == 1


def test_a_literal_at_the_limit_is_taken_on_the_checking_path_too() -> None:
    """A long string sends the whole line to the checking decoder; a number
    of exactly MAX_NUMBER_CHARS characters is still taken there, one more is
    refused."""
    run = '"' + "7" * 200 + '"'
    taken = _decoded(
        b'{"return": [' + run.encode() + b", " + b"1" * MAX_NUMBER_CHARS + b'], "id": 1}'
    )
    assert isinstance(taken, list) and taken[0]["return"][1] == int("1" * MAX_NUMBER_CHARS)
    too_long = b"1" * (MAX_NUMBER_CHARS + 1)
    assert _decoded(b'{"return": [' + run.encode() + b", " + too_long + b'], "id": 1}') is (
        QMPProtocolError
    )


def _line_of(size: int) -> bytes:
    """A JSON object line of exactly ``size`` bytes (without its newline)."""
    line = b'{"s": ""}'
    return line[:-2] + b"a" * (size - len(line)) + line[-2:]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("split", [False, True])
def test_a_line_of_exactly_max_line_bytes_is_taken_however_it_arrives(
    backend: str, split: bool
) -> None:
    """The limit is on the line: one of max_line bytes is taken, whether its
    newline comes with it or in a later chunk; one byte more is refused."""
    limit = 64
    for size, taken in ((limit, True), (limit + 1, False)):
        line = _line_of(size)
        chunks = [line, b"\n"] if split else [line + b"\n"]
        if taken:
            assert anyio.run(_read_all, chunks, limit, backend=backend) == [json.loads(line)]
        else:
            with pytest.raises(QMPProtocolError, match=f"{limit}-byte limit"):
                anyio.run(_read_all, chunks, limit, backend=backend)


def test_the_line_limit_is_a_positive_whole_number() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](1)
    with send, receive:
        LineReader(receive, 1)  # the smallest limit there is
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="max_line must be a positive number"):
                LineReader(receive, bad)  # type: ignore[arg-type]


def test_a_command_of_exactly_the_size_limit_is_written() -> None:
    base = len(encode_command("x", {"s": ""}, 1))
    line = encode_command("x", {"s": "a" * (MAX_COMMAND_BYTES - base)}, 1)
    assert len(line) == MAX_COMMAND_BYTES
    with pytest.raises(ValueError, match=f"{MAX_COMMAND_BYTES + 1} bytes"):
        encode_command("x", {"s": "a" * (MAX_COMMAND_BYTES - base + 1)}, 1)


def test_a_bad_request_is_refused_naming_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="command name must be a str, not int"):
        encode_command(5, None, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="arguments of 'x' must be a mapping, not list"):
        encode_command("x", [1], 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_bad_line_is_quoted_in_its_error_up_to_80_bytes(backend: str) -> None:
    short = b'{"a": nope}'
    with pytest.raises(QMPProtocolError) as caught:
        anyio.run(_read_all, [short + b"\n"], backend=backend)
    assert str(caught.value).endswith(repr(short))
    long = b'{"a": nope, "b": "' + b"x" * 100 + b'"}'
    with pytest.raises(QMPProtocolError) as caught:
        anyio.run(_read_all, [long + b"\n"], backend=backend)
    assert str(caught.value).endswith(repr(long[:80]) + "...")
