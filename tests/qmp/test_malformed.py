"""One bad field of a well-formed QMP message is one typed error for that
connection: the pending caller gets a :class:`QMPProtocolError` that names
what was wrong, in a message of bounded length, and nothing else escapes.
"""

from __future__ import annotations

import json
import logging

import pytest

from jobctl.qmp import (
    MAX_NUMBER_CHARS,
    QMPClosedError,
    QMPCommandError,
    QMPProtocolError,
    open_qmp_unix,
)

from ._fake import Peer, fake_qmp

pytestmark = pytest.mark.anyio

#: Longest error message the client may produce about the peer's data.
MAX_MESSAGE = 600


def stamp(seconds: str = "1700000000", micros: str = "0") -> str:
    return f'{{"seconds": {seconds}, "microseconds": {micros}}}'


def event(name: str = '"STOP"', data: str = "{}", timestamp: str | None = None) -> bytes:
    text = f'{{"event": {name}, "data": {data}, "timestamp": {timestamp or stamp()}}}'
    return text.encode() + b"\r\n"


#: (the line the peer sends while query-status is in flight, what the error names)
CASES = [
    # the timestamp of an event
    (event(timestamp=stamp("1" + "0" * 400)), "number literal of 401 characters"),
    (event(timestamp=stamp("1" + "0" * 30)), r"'timestamp.seconds' is int 1000.*not an int64"),
    (event(timestamp=stamp(micros="1000000")), r"'timestamp.microseconds' is int 1000000"),
    (event(timestamp=stamp(micros="-1")), r"'timestamp.microseconds' is int -1"),
    (event(timestamp=stamp("1.5")), r"'timestamp.seconds' is float 1.5"),
    (event(timestamp=stamp("true")), r"'timestamp.seconds' is bool True"),
    (event(timestamp=stamp("NaN")), "NaN is not JSON"),
    (event(timestamp=stamp("Infinity")), "Infinity is not JSON"),
    (event(timestamp=stamp("-Infinity")), "-Infinity is not JSON"),
    (event(timestamp=stamp("1e400")), "out of a double's range"),
    (event(timestamp='"now"'), "'timestamp' is a str, not an object"),
    (event(timestamp="[1, 2]"), "'timestamp' is a list, not an object"),
    (event(timestamp='{"seconds": 1}'), "'timestamp.microseconds' is missing"),
    (event(timestamp="{}"), "'timestamp.seconds' is missing"),
    (b'{"event": "STOP", "data": {}}\r\n', "'timestamp' is missing"),
    # the rest of an event
    (event(name="7"), "'event' is int 7, not a string"),
    (event(name='["STOP"]'), "'event' is a list, not a string"),
    (event(data="[]"), "'data' is a list, not an object"),
    (event(data='"x"'), "'data' is a str, not an object"),
    (event(data="null"), "'data' is missing or null, not an object"),
    (event(data="[" * 100_000 + "]" * 100_000), "bad JSON"),
    # replies
    (b'{"return": {}, "id": "2"}\r\n', "reply for id '2', which no command"),
    (b'{"return": {}, "id": [2]}\r\n', r"reply for id \[2\], which no command"),
    (b'{"return": {}, "id": {"a": 2}}\r\n', r"reply for id \{'a': 2\}, which no command"),
    (b'{"return": {}, "id": 2.0}\r\n', "reply for id 2.0, which no command"),
    (b'{"return": {}, "id": true}\r\n', "reply for id True, which no command"),
    (b'{"return": {}, "id": 12345}\r\n', "reply for id 12345, which no command"),
    (b'{"return": {}, "id": null}\r\n', "reply for id None, which no command"),
    (b'{"return": {}}\r\n', "reply without an id"),
    (b'{"return": {}, "error": {"class": "X", "desc": "y"}, "id": 2}\r\n', "error and return"),
    (b'{"return": {}, "event": "STOP", "id": 2}\r\n', "event and return"),
    (b'{"error": "oops", "id": 2}\r\n', "malformed QMP error reply"),
    (b'{"error": {"class": 1, "desc": "d"}, "id": 2}\r\n', "malformed QMP error reply"),
    (b'{"error": {"class": "C"}, "id": 2}\r\n', "malformed QMP error reply"),
    (b'{"QMP": {}}\r\n', "unrecognised QMP message"),
    (b"{}\r\n", "unrecognised QMP message"),
    # framing
    (b'{"return": ' + b"1" * 65 + b', "id": 2}\r\n', "number literal of 65 characters"),
    (b'{"return": "\xff", "id": 2}\r\n', "not UTF-8"),
    (b'{"return": "\xed\xa0\x80", "id": 2}\r\n', "not UTF-8"),
    (b"\xfe\xff\x00{\x00}\r\n", "not UTF-8"),
    (b'{"return": {}, "id": 2} trailing\r\n', "Extra data"),
    (b"[]\r\n", "not a JSON object"),
    (b"null\r\n", "not a JSON object"),
]


@pytest.mark.parametrize(("line", "match"), CASES, ids=range(len(CASES)))
async def test_one_bad_field_is_one_typed_error(line: bytes, match: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect("query-status")
        await peer.send(line)
        await peer.expect_eof()  # the client closed this connection

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with client.subscribe(None) as events:
            with pytest.raises(QMPProtocolError, match=match) as info:
                await client.execute("query-status")
            assert len(str(info.value)) <= MAX_MESSAGE, len(str(info.value))
            assert "could not handle" not in str(info.value)
            assert client.closed
            with pytest.raises(QMPProtocolError, match=match):  # later calls: the same
                await client.execute("query-status")
            with pytest.raises(QMPProtocolError, match=match):  # and subscribers
                await events.receive()


async def test_an_unknown_member_is_ignored() -> None:
    """The QMP specification asks clients to ignore members they do not know."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("query-status")
        await peer.send(
            {
                "event": "STOP",
                "timestamp": {"seconds": 1, "microseconds": 2, "extra": [1]},
                "future": {"x": 1},
            }
        )
        await peer.send({"return": {"running": True}, "id": request["id"], "future": 1})
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with client.subscribe("STOP") as events:
            assert await client.execute("query-status") == {"running": True}
            event = await events.receive()
    assert (event.name, event.timestamp) == ("STOP", 1.000002)


async def test_long_strings_are_quoted_short() -> None:
    """A megabyte of desc, or of event data, is cut in the error message
    (the command error keeps the whole desc as its attribute)."""
    desc = "d" * (1 << 20)

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.fail(await peer.expect("first"), "GenericError", desc)
        await peer.expect("second")
        await peer.send(event(name=json.dumps("E" * (1 << 20)), data="[]"))
        await peer.expect_eof()

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(QMPCommandError) as failed:
            await client.execute("first")
        assert failed.value.desc == desc
        assert len(str(failed.value)) < 1200
        with pytest.raises(QMPProtocolError, match="'data' is a list") as broken:
            await client.execute("second")
        assert len(str(broken.value)) <= MAX_MESSAGE


async def test_a_client_bug_on_a_message_closes_that_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the client fails on while reading, its reader ends with a
    QMPProtocolError for its own waiters and raises nothing: the ``async
    with`` of a second client beside it goes on. The bug is planted: the
    event dispatcher of one client raises an exception no validator knows."""

    async def broken(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect("query-status")
        await peer.event("STOP")
        await peer.expect_eof()

    async def healthy(peer: Peer) -> None:
        await peer.handshake()
        for _ in range(2):
            await peer.reply(await peer.expect("query-status"), {"running": True})
        await peer.expect_eof()

    async with (
        fake_qmp(broken) as bad_path,
        fake_qmp(healthy) as good_path,
        open_qmp_unix(bad_path) as bad,
        open_qmp_unix(good_path) as good,
    ):
        assert await good.execute("query-status") == {"running": True}
        bad._events.dispatch = _explode  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, "jobctl.qmp"):
            with pytest.raises(QMPProtocolError, match=r"could not handle a message.*boom"):
                await bad.execute("query-status")
        assert [r.message for r in caplog.records] == ["the QMP reader failed on a message"]
        assert await good.execute("query-status") == {"running": True}
        assert not good.closed


def _explode(message: object) -> None:
    raise ArithmeticError("boom")


async def test_max_number_chars_is_qmps() -> None:
    """QEMU's longest numbers fit: int64, uint64 and a double printed with
    %.17g."""
    values = [-(2**63), 2**64 - 1, -1.2345678901234567e-308, 1.7976931348623157e308]

    async def script(peer: Peer) -> None:
        await peer.handshake()
        request = await peer.expect("query-status")
        await peer.send({"return": values, "id": request["id"]})
        await peer.expect_eof()

    assert all(len(json.dumps(v)) <= MAX_NUMBER_CHARS for v in values)
    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        assert await client.execute("query-status") == values


async def test_end_of_stream_after_a_bad_line_is_still_the_bad_line() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.expect("query-status")
        await peer.send(event(data="7"))

    async with fake_qmp(script) as path, open_qmp_unix(path) as client:
        with pytest.raises(QMPProtocolError, match="'data' is int 7"):
            await client.execute("query-status")
        with pytest.raises(QMPClosedError, match="'data' is int 7"):
            await client.execute("query-status")
