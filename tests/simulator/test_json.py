"""The QMP JSON streamer against QEMU 7.2's observed behaviour.

Every expectation here was observed on a real qemu-system-x86_64 7.2
(``tests/conformance`` re-checks the ones that matter on the wire).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl_simulators.qemu._json import JsonParseError, JsonStreamer, encode_message


def feed_all(*chunks: bytes) -> list[object]:
    streamer = JsonStreamer()
    out: list[object] = []
    for chunk in chunks:
        out.extend(streamer.feed(chunk))
    return out


def err(desc: str) -> JsonParseError:
    return JsonParseError(f"JSON parse error, {desc}")


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'{"execute": "x"}'], [{"execute": "x"}]),
        ([b'{"execute": ', b'"x"}'], [{"execute": "x"}]),
        ([b'{"a": 1} {"b": 2}\n'], [{"a": 1}, {"b": 2}]),
        # a keyword ends only at the next character
        ([b"garbage"], []),
        ([b"garbage", b"{}"], [err("invalid keyword 'garbage'"), {}]),
        ([b'{"a": tru}'], [err("invalid keyword 'tru'")]),
        # lexical errors, then recovery skips to a structural/control char
        ([b"\xff\xfe"], [err("stray '\ufffd'"), err("stray '\ufffd'")]),
        ([b'\xff"abc', b'"\n', b"123 "], [err("stray '\ufffd'"), 123]),
        ([b"}"], [err("expecting value")]),
        ([b'{"execute": "q", "id": 1', b"]"], [err("expected separator in dict")]),
        ([b'{"a": 1, "a": 2}'], [err("duplicate key")]),
        ([b"[1 2]"], [err("expected separator in list")]),
        ([b"[1,]"], [err("expecting value")]),
        ([b"{1: 2}"], [err("key is not a string in object")]),
        ([b'{"a" 1}'], [err("missing : in object pair")]),
        ([b'{"a": }'], [err("expecting value")]),
        ([b"01 "], [err("stray '01'")]),
        ([b'{"a": "x\ny"}'], [err("stray '\"x\n'"), err("expecting value")]),
        ([b"{'single': 'quotes'}"], [{"single": "quotes"}]),
        ([b'["\\u00e9\\ud83d\\ude00"]'], [["é😀"]]),
        ([b'["\\ud800"]'], [err("\\ud800 is not a valid Unicode character")]),
        ([b'["\\q"]'], [err("invalid escape sequence in string")]),
        ([b'["\x80"]'], [err("invalid UTF-8 sequence in string")]),
        ([b'["\xc0\x80"]'], [["\x00"]]),  # modified UTF-8 NUL
        ([b"[true, false, null, -0, 1.5e3]"], [[True, False, None, 0, 1500.0]]),
        ([b"18446744073709551615 "], [18446744073709551615]),  # uint64
        ([b"18446744073709551616 "], [1.8446744073709552e19]),  # beyond: a double
        ([b"-9223372036854775809 "], [-9.223372036854776e18]),
    ],
)
def test_messages(chunks: list[bytes], expected: list[object]) -> None:
    assert feed_all(*chunks) == expected


def test_nesting_limit() -> None:
    assert feed_all(b"[" * 1025) == [JsonParseError("JSON nesting depth limit exceeded")]


def test_encode_is_qemus_format() -> None:
    assert encode_message({"return": {}, "id": "é"}) == b'{"return": {}, "id": "\\u00e9"}\n'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    values=st.lists(st.dictionaries(st.text(), json_values, max_size=4), max_size=4), cut=st.data()
)
def test_any_chunking_of_valid_objects_round_trips(
    values: list[dict[str, object]], cut: st.DataObject
) -> None:
    wire = b"".join(json.dumps(value).encode() + b"\n" for value in values)
    points = sorted(cut.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert feed_all(*chunks) == values


@given(noise=st.binary(max_size=64))
def test_garbage_never_breaks_the_streamer(noise: bytes) -> None:
    streamer = JsonStreamer()
    streamer.feed(noise)
    # 0xFF is never valid: QMP's documented way to resynchronise the parser
    streamer.feed(b"\xff")
    assert streamer.feed(b'\n{"execute": "query-status"}') == [{"execute": "query-status"}]
