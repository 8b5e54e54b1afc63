"""QMP's wire format: one JSON object per line, in both directions.

QEMU ends its lines with ``\\r\\n``; JSON ignores the ``\\r``.
Commands are encoded strictly so that QEMU's parser answers each request with
exactly one reply: valid JSON only (no ``NaN``), at most
:data:`MAX_COMMAND_BYTES` (under QEMU's token limits), and nested less deeply
than QEMU's 1024 levels, because Python's encoder refuses to go deeper than
the recursion limit (1000 unless raised).

Incoming lines are decoded strictly, so that whatever the peer sends, the
reader yields a JSON object or raises :class:`QMPProtocolError`: a line is
at most ``max_line`` bytes (:data:`DEFAULT_MAX_LINE` unless the client is
opened with another ``max_line=``; the reader buffers at most that plus
one chunk of the stream, 64 KiB on a socket), UTF-8, and standard JSON:
no ``NaN`` or ``Infinity``, no number literal longer than
:data:`MAX_NUMBER_CHARS` characters (QEMU's numbers are 64-bit integers and
doubles, far shorter), nesting within the interpreter's recursion limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final, NoReturn, final

import anyio
from anyio.abc import AnyByteReceiveStream

from jobctl.qmp._errors import QMPClosedError, QMPProtocolError
from jobctl.qmp._show import clip

__all__ = [
    "DEFAULT_MAX_LINE",
    "MAX_COMMAND_BYTES",
    "MAX_NUMBER_CHARS",
    "LineReader",
    "decode_message",
    "encode_command",
]

#: Default limit on one incoming line (and so on what the reader buffers).
#: ``query-qmp-schema`` is the largest reply QEMU sends (a few hundred KiB).
DEFAULT_MAX_LINE: Final = 8 * 1024 * 1024

#: Longest number literal accepted from the peer. QEMU's integers are 64-bit
#: (20 digits) and its doubles print in at most 24 characters; longer
#: literals are refused rather than converted (a 400-digit integer does not
#: fit a float, and converting huge ones takes quadratic time).
MAX_NUMBER_CHARS: Final = 64

#: Largest encoded command the client writes. QEMU's parser splits a request
#: past 2**21 tokens into several error replies without ids; a request of
#: fewer bytes than that can never reach the limit.
MAX_COMMAND_BYTES: Final = 1024 * 1024

_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def encode_command(command: str, arguments: Mapping[str, Any] | None, call_id: int) -> bytes:
    """One ``execute`` request as a line of bytes.

    Raises :class:`TypeError` or :class:`ValueError`, naming the command, if the
    request cannot be encoded or is larger than :data:`MAX_COMMAND_BYTES`.
    """
    if type(command) is not str:
        raise TypeError(f"QMP command name must be a str, not {type(command).__name__}")
    if arguments is None and type(call_id) is int:
        # What the general path writes for it, byte for byte (a test says so).
        line = b'{"execute":%s,"id":%d}\n' % (_encode(command).encode(), call_id)
    else:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            if not isinstance(arguments, Mapping):
                raise TypeError(
                    f"arguments of {command!r} must be a mapping, not {type(arguments).__name__}"
                )
            request["arguments"] = arguments if type(arguments) is dict else dict(arguments)
        request["id"] = call_id
        try:
            line = _encode(request).encode() + b"\n"
        except (TypeError, ValueError, RecursionError) as exc:
            raise type(exc)(f"arguments of {command!r} cannot be sent as JSON: {exc}") from exc
    if len(line) > MAX_COMMAND_BYTES:
        raise ValueError(
            f"{command!r} encodes to {len(line)} bytes, more than the "
            f"{MAX_COMMAND_BYTES}-byte limit of one QMP command"
        )
    return line


def _long_number(text: str) -> NoReturn:
    raise ValueError(
        f"a number literal of {len(text)} characters, more than {MAX_NUMBER_CHARS}: {text[:40]}..."
    )


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        _long_number(text)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        _long_number(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of a double's range")
    return value


def _parse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


#: The strict decoder: every number literal's length checked.
_decode_checked: Final = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
).decode
#: The same, with integers converted by the decoder itself (in C): for a
#: line with no run of number characters longer than
#: :data:`MAX_NUMBER_CHARS` (:func:`_may_hold_a_long_number`), in which no
#: literal can be too long.
_decode_fast: Final = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_parse_constant
).decode
#: Every byte a number literal may hold as ``0``, every other one as a space.
_NUMBER_MARKS: Final = bytes(0x30 if chr(i) in "-+.0123456789eE" else 0x20 for i in range(256))
_LONG_RUN: Final = b"0" * (MAX_NUMBER_CHARS + 1)


def _may_hold_a_long_number(line: bytes) -> bool:
    """Whether ``line`` has a run of number characters (in a literal or a
    string) longer than :data:`MAX_NUMBER_CHARS`: then it is decoded with
    every literal checked. Two passes in C, far cheaper than a Python call
    per integer."""
    return _LONG_RUN in line.translate(_NUMBER_MARKS)


def decode_message(line: bytes) -> dict[str, Any]:
    """One line from the peer as a JSON object; :class:`QMPProtocolError`
    naming what is wrong otherwise (never another exception)."""
    try:
        decode = _decode_checked if _may_hold_a_long_number(line) else _decode_fast
        message = decode(line.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        if isinstance(exc, UnicodeDecodeError):
            why = f"not UTF-8: {exc.reason} at byte {exc.start}"
        else:
            why = str(exc) or type(exc).__name__
        raise QMPProtocolError(
            f"bad JSON from QMP peer ({clip(why, 120)}): {_excerpt(line)}"
        ) from None
    if type(message) is not dict:
        raise QMPProtocolError(f"QMP message is not a JSON object: {_excerpt(line)}")
    return message


def _excerpt(line: bytes | bytearray) -> str:
    shown = bytes(line[:80])
    return repr(shown) + ("..." if len(line) > 80 else "")


@final
class LineReader:
    """Receives whole JSON objects, one per line, from a byte stream.

    ``receive`` raises :class:`anyio.EndOfStream` at a clean end of stream,
    :class:`QMPClosedError` when the stream ends inside a line and
    :class:`QMPProtocolError` for a line that is too long, not JSON or not a
    JSON object. It buffers at most ``max_line`` bytes plus one chunk.
    """

    __slots__ = ("_buffer", "_max_line", "_receive", "_searched")

    def __init__(self, stream: AnyByteReceiveStream, max_line: int) -> None:
        if type(max_line) is not int or max_line < 1:
            raise ValueError(f"max_line must be a positive number of bytes, not {max_line!r}")
        self._receive = stream.receive
        self._max_line = max_line
        #: What was received and not yet taken as lines.
        self._buffer = bytearray()
        #: How many bytes at the start of ``_buffer`` hold no newline.
        self._searched = 0

    async def receive(self) -> dict[str, Any]:
        """The next message (may return without a checkpoint when one is buffered)."""
        while True:
            line = self._buffered_line()
            if line is None:
                line = await self._received_line()
            if line.strip():  # JSON allows whitespace between messages
                return decode_message(line)

    def _buffered_line(self) -> bytes | None:
        buffer = self._buffer
        end = buffer.find(b"\n", self._searched)
        if end < 0:
            self._searched = len(buffer)
            return None
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        self._searched = 0
        return self._checked(line)

    async def _received_line(self) -> bytes:
        """Receive until a line ends (the buffer holds none)."""
        buffer = self._buffer
        while True:
            if len(buffer) > self._max_line:  # no newline in it: the line is longer
                raise QMPProtocolError(
                    f"QMP line longer than the {self._max_line}-byte limit: {_excerpt(buffer)}"
                )
            try:
                data = await self._receive()
            except anyio.EndOfStream:
                if not buffer.strip():
                    raise
                raise QMPClosedError(
                    f"QMP stream ended inside a message: {_excerpt(buffer)}"
                ) from None
            buffer += data
            line = self._buffered_line()
            if line is not None:
                return line

    def _checked(self, line: bytes) -> bytes:
        if len(line) > self._max_line:
            raise QMPProtocolError(
                f"QMP line of {len(line)} bytes, longer than the {self._max_line}-byte limit: "
                f"{_excerpt(line)}"
            )
        return line
