"""Line framing: messages survive any chunking; broken input is named."""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl.qmp import (
    MAX_COMMAND_BYTES,
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
