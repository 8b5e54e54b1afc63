"""QMP's wire format: QEMU 7.2's JSON streamer, byte for byte.

QEMU does not read lines: a lexer turns the byte stream into tokens, a
streamer cuts a *message* whenever the braces and brackets it has counted
balance, and a parser turns the message's tokens into a value. Errors are
answered, never fatal, and carry QEMU's exact texts ("JSON parse error,
invalid keyword 'tru'", "JSON parse error, stray '\\xff'", ...). After a
lexical error the lexer skips input until a structural character, a control
character or the impossible bytes 0xFE/0xFF, as QEMU does, so a client can
resynchronise.

This is a port of ``qobject/json-lexer.c``, ``json-streamer.c`` and
``json-parser.c`` as of QEMU 7.2 (without the printf-style interpolation QEMU
uses internally). Values come out as Python objects: dict (insertion order),
list, str, int, float, bool, None; a JSON integer beyond 64 bits is a float,
as in QEMU.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Any, Final, final

import attrs

__all__ = ["JsonParseError", "JsonStreamer", "encode_message"]

MAX_TOKEN_SIZE: Final = 64 << 20
MAX_TOKEN_COUNT: Final = 2 << 20
MAX_NESTING: Final = 1 << 10


@attrs.frozen
class JsonParseError:
    """One unparsable message; ``desc`` is QEMU's error text."""

    desc: str


class _Tok(enum.Enum):
    ERROR = "error"
    LCURLY = "{"
    RCURLY = "}"
    LSQUARE = "["
    RSQUARE = "]"
    COLON = ":"
    COMMA = ","
    INTEGER = "integer"
    FLOAT = "float"
    KEYWORD = "keyword"
    STRING = "string"


class _St(enum.Enum):
    RECOVERY = enum.auto()
    DQ_STRING_ESCAPE = enum.auto()
    DQ_STRING = enum.auto()
    SQ_STRING_ESCAPE = enum.auto()
    SQ_STRING = enum.auto()
    ZERO = enum.auto()
    EXP_DIGITS = enum.auto()
    EXP_SIGN = enum.auto()
    EXP_E = enum.auto()
    MANTISSA = enum.auto()
    MANTISSA_DIGITS = enum.auto()
    DIGITS = enum.auto()
    SIGN = enum.auto()
    KEYWORD = enum.auto()
    START = enum.auto()


_STRUCTURAL: Final = {
    ord("{"): _Tok.LCURLY,
    ord("}"): _Tok.RCURLY,
    ord("["): _Tok.LSQUARE,
    ord("]"): _Tok.RSQUARE,
    ord(":"): _Tok.COLON,
    ord(","): _Tok.COMMA,
}
_WHITESPACE: Final = frozenset(b" \t\r\n")
_DIGITS: Final = frozenset(b"0123456789")
_LOWER: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz")

# (next state or finished token, lookahead): with lookahead the byte is not
# consumed and is fed again from the start state.
_Step = tuple[_St | _Tok, bool]


def _string_step(ch: int, quote: int, escape: _St, inside: _St) -> _Step:
    if ch == quote:
        return _Tok.STRING, False
    if ch == ord("\\"):
        return escape, False
    if 0x20 <= ch <= 0xFD:
        return inside, False
    return _Tok.ERROR, False


def _step(state: _St, ch: int) -> _Step:
    if state is _St.START:
        if ch in _WHITESPACE:
            return _St.START, False
        if ch in _STRUCTURAL:
            return _STRUCTURAL[ch], False
        if ch == ord('"'):
            return _St.DQ_STRING, False
        if ch == ord("'"):
            return _St.SQ_STRING, False
        if ch == ord("0"):
            return _St.ZERO, False
        if ch in _DIGITS:
            return _St.DIGITS, False
        if ch == ord("-"):
            return _St.SIGN, False
        if ch in _LOWER:
            return _St.KEYWORD, False
        return _Tok.ERROR, False
    if state is _St.RECOVERY:
        if ch == ord("\t") or (0x20 <= ch <= 0xFD and ch not in _STRUCTURAL):
            return _St.RECOVERY, False
        return _St.START, True
    if state is _St.DQ_STRING:
        return _string_step(ch, ord('"'), _St.DQ_STRING_ESCAPE, _St.DQ_STRING)
    if state is _St.SQ_STRING:
        return _string_step(ch, ord("'"), _St.SQ_STRING_ESCAPE, _St.SQ_STRING)
    if state is _St.DQ_STRING_ESCAPE:
        return (_St.DQ_STRING, False) if 0x20 <= ch <= 0xFD else (_Tok.ERROR, False)
    if state is _St.SQ_STRING_ESCAPE:
        return (_St.SQ_STRING, False) if 0x20 <= ch <= 0xFD else (_Tok.ERROR, False)
    if state is _St.ZERO:
        if ch in _DIGITS:
            return _Tok.ERROR, False
        if ch == ord("."):
            return _St.MANTISSA, False
        return _Tok.INTEGER, True
    if state is _St.DIGITS:
        if ch in _DIGITS:
            return _St.DIGITS, False
        if ch in b"eE":
            return _St.EXP_E, False
        if ch == ord("."):
            return _St.MANTISSA, False
        return _Tok.INTEGER, True
    if state is _St.SIGN:
        if ch == ord("0"):
            return _St.ZERO, False
        return (_St.DIGITS, False) if ch in _DIGITS else (_Tok.ERROR, False)
    if state is _St.MANTISSA:
        return (_St.MANTISSA_DIGITS, False) if ch in _DIGITS else (_Tok.ERROR, False)
    if state is _St.MANTISSA_DIGITS:
        if ch in _DIGITS:
            return _St.MANTISSA_DIGITS, False
        if ch in b"eE":
            return _St.EXP_E, False
        return _Tok.FLOAT, True
    if state is _St.EXP_E:
        if ch in b"+-":
            return _St.EXP_SIGN, False
        return (_St.EXP_DIGITS, False) if ch in _DIGITS else (_Tok.ERROR, False)
    if state is _St.EXP_SIGN:
        return (_St.EXP_DIGITS, False) if ch in _DIGITS else (_Tok.ERROR, False)
    if state is _St.EXP_DIGITS:
        return (_St.EXP_DIGITS, False) if ch in _DIGITS else (_Tok.FLOAT, True)
    assert state is _St.KEYWORD
    return (_St.KEYWORD, False) if ch in _LOWER else (_Tok.KEYWORD, True)


_Token = tuple[_Tok, bytes]


@final
class JsonStreamer:
    """Cuts a QMP byte stream into messages, as QEMU 7.2 does.

    :meth:`feed` accepts any chunking of the input and returns, in order, one
    item per complete message: the parsed value, or a :class:`JsonParseError`
    (which QEMU answers without an ``id``). Incomplete input stays buffered.
    """

    def __init__(self) -> None:
        self._state = _St.START
        self._token = bytearray()
        self._tokens: list[_Token] = []
        self._token_size = 0
        self._brace_count = 0
        self._bracket_count = 0
        self._out: list[Any] = []

    def feed(self, data: bytes) -> list[Any | JsonParseError]:
        """Consume ``data``; return the messages it completed."""
        for ch in data:
            self._feed_byte(ch)
        out, self._out = self._out, []
        return out

    def _feed_byte(self, ch: int) -> None:
        consumed = False
        while not consumed:
            target, lookahead = _step(self._state, ch)
            consumed = not lookahead
            if consumed:
                self._token.append(ch)
            if target is _Tok.ERROR:
                self._process_token(_Tok.ERROR, bytes(self._token))
                self._token.clear()
                self._state = _St.RECOVERY
            elif isinstance(target, _Tok):
                self._process_token(target, bytes(self._token))
                self._token.clear()
                self._state = _St.START
            else:
                if target is _St.START or target is _St.RECOVERY:
                    self._token.clear()
                self._state = target

    def _process_token(self, kind: _Tok, text: bytes) -> None:
        if kind is _Tok.LCURLY:
            self._brace_count += 1
        elif kind is _Tok.RCURLY:
            self._brace_count -= 1
        elif kind is _Tok.LSQUARE:
            self._bracket_count += 1
        elif kind is _Tok.RSQUARE:
            self._bracket_count -= 1
        elif kind is _Tok.ERROR:
            self._emit(JsonParseError(f"JSON parse error, stray '{_text(text)}'"))
            return
        if self._token_size + len(text) + 1 > MAX_TOKEN_SIZE:
            self._emit(JsonParseError("JSON token size limit exceeded"))
            return
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            self._emit(JsonParseError("JSON token count limit exceeded"))
            return
        if self._bracket_count + self._brace_count > MAX_NESTING:
            self._emit(JsonParseError("JSON nesting depth limit exceeded"))
            return
        self._tokens.append((kind, text))
        self._token_size += len(text)
        # QEMU 7.2 tests bracket_count twice here (and brace_count never):
        # kept, because it decides when "{]" is cut.
        if (self._brace_count > 0 or self._bracket_count > 0) and self._bracket_count >= 0:
            return
        self._emit(_Parser(self._tokens).parse())

    def _emit(self, item: Any | JsonParseError) -> None:
        self._brace_count = 0
        self._bracket_count = 0
        self._tokens = []
        self._token_size = 0
        self._out.append(item)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


class _Failed(Exception):
    pass


@final
class _Parser:
    """``json-parser.c``: recursive descent over one message's tokens; the
    first error wins."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens: Iterator[_Token] = iter(tokens)
        self._peeked: _Token | None = next(self._tokens, None)
        self._error: str | None = None

    def parse(self) -> Any | JsonParseError:
        try:
            return self._value()
        except _Failed:
            assert self._error is not None
            return JsonParseError(f"JSON parse error, {self._error}")

    def _fail(self, message: str) -> _Failed:
        if self._error is None:
            self._error = message
        return _Failed()

    def _peek(self) -> _Token | None:
        return self._peeked

    def _pop(self) -> _Token | None:
        token, self._peeked = self._peeked, next(self._tokens, None)
        return token

    def _value(self) -> Any:
        token = self._peek()
        if token is None:
            raise self._fail("premature EOI")
        kind = token[0]
        if kind is _Tok.LCURLY:
            return self._object()
        if kind is _Tok.LSQUARE:
            return self._array()
        if kind in (_Tok.INTEGER, _Tok.FLOAT, _Tok.STRING):
            return self._literal()
        if kind is _Tok.KEYWORD:
            return self._keyword()
        raise self._fail("expecting value")

    def _pair(self, result: dict[str, Any]) -> None:
        if self._peek() is None:
            raise self._fail("premature EOI")
        try:
            key = self._value()
        except _Failed:
            raise self._fail("key is not a string in object") from None
        if not isinstance(key, str):
            raise self._fail("key is not a string in object")
        token = self._pop()
        if token is None:
            raise self._fail("premature EOI")
        if token[0] is not _Tok.COLON:
            raise self._fail("missing : in object pair")
        try:
            value = self._value()
        except _Failed:
            raise self._fail("Missing value in dict") from None
        if key in result:
            raise self._fail("duplicate key")
        result[key] = value

    def _object(self) -> dict[str, Any]:
        self._pop()
        result: dict[str, Any] = {}
        peek = self._peek()
        if peek is None:
            raise self._fail("premature EOI")
        if peek[0] is _Tok.RCURLY:
            self._pop()
            return result
        self._pair(result)
        token = self._pop()
        while True:
            if token is None:
                raise self._fail("premature EOI")
            if token[0] is _Tok.RCURLY:
                return result
            if token[0] is not _Tok.COMMA:
                raise self._fail("expected separator in dict")
            self._pair(result)
            token = self._pop()

    def _array(self) -> list[Any]:
        self._pop()
        result: list[Any] = []
        peek = self._peek()
        if peek is None:
            raise self._fail("premature EOI")
        if peek[0] is _Tok.RSQUARE:
            self._pop()
            return result
        result.append(self._element())
        token = self._pop()
        while True:
            if token is None:
                raise self._fail("premature EOI")
            if token[0] is _Tok.RSQUARE:
                return result
            if token[0] is not _Tok.COMMA:
                raise self._fail("expected separator in list")
            result.append(self._element())
            token = self._pop()

    def _element(self) -> Any:
        try:
            return self._value()
        except _Failed:
            raise self._fail("expecting value") from None

    def _keyword(self) -> Any:
        token = self._pop()
        assert token is not None
        word = token[1]
        if word == b"true":
            return True
        if word == b"false":
            return False
        if word == b"null":
            return None
        raise self._fail(f"invalid keyword '{_text(word)}'")

    def _literal(self) -> Any:
        token = self._pop()
        assert token is not None
        kind, text = token
        if kind is _Tok.STRING:
            return self._string(text)
        if kind is _Tok.INTEGER:
            value = int(text)
            if -(1 << 63) <= value < (1 << 64):  # int64, else uint64, else double
                return value
        return float(text)

    def _string(self, text: bytes) -> str:
        quote = text[0]
        out: list[str] = []
        i = 1
        while text[i] != quote:
            if text[i] == ord("\\"):
                begin = i
                escape = text[i + 1]
                i += 2
                if escape in _SIMPLE_ESCAPES:
                    out.append(_SIMPLE_ESCAPES[escape])
                    continue
                if escape != ord("u"):
                    raise self._fail("invalid escape sequence in string")
                cp = _hex4(text, i)
                i += 4
                if 0xD800 <= cp <= 0xDBFF and text[i : i + 2] == b"\\u":
                    cp = 0x10000 + ((cp & 0x3FF) << 10)
                    trailing = _hex4(text, i + 2)
                    if 0xDC00 <= trailing <= 0xDFFF:
                        cp |= trailing & 0x3FF
                        i += 6
                    else:
                        cp = -1
                if not _valid_codepoint(cp):
                    escaped = _text(text[begin:i])
                    raise self._fail(f"{escaped} is not a valid Unicode character")
                out.append(chr(cp))
            else:
                cp, i = _mod_utf8_codepoint(text, i)
                if cp < 0:
                    raise self._fail("invalid UTF-8 sequence in string")
                out.append(chr(cp))
        return "".join(out)


_SIMPLE_ESCAPES: Final = {
    ord('"'): '"',
    ord("'"): "'",
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}


def _hex4(text: bytes, at: int) -> int:
    digits = text[at : at + 4]
    if len(digits) != 4 or any(d not in b"0123456789abcdefABCDEF" for d in digits):
        return -1
    return int(digits, 16)


def _valid_codepoint(cp: int) -> bool:
    if cp < 0 or cp > 0x10FFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False  # noncharacter
    return not 0xD800 <= cp <= 0xDFFF  # surrogate


_MIN_CP: Final = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def _mod_utf8_codepoint(text: bytes, at: int) -> tuple[int, int]:
    """``util/unicode.c``: decode one modified-UTF-8 character at ``at``;
    return (codepoint or -1, index after it)."""
    byte = text[at]
    at += 1
    if byte < 0x80:
        return byte, at
    if byte >= 0xFE or not byte & 0x40:
        return -1, at
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = text[at] if at < len(text) else 0
        if nxt & 0xC0 != 0x80:
            return -1, at
        at += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not _valid_codepoint(cp) or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2)):
        return -1, at
    return cp, at


def encode_message(message: object) -> bytes:
    """One QMP output line as QEMU writes it: ``", "``/``": "`` separators,
    non-ASCII escaped, a newline at the end."""
    return json.dumps(message, ensure_ascii=True).encode("ascii") + b"\n"
