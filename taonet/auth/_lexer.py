"""Tokens of the auth text syntax, and Go-compatible string quoting.

The lexer follows the CloudProxy Go lexer: strings are double-quoted Go string
literals, bytes are ``[hex]`` (whitespace may separate groups of whole bytes) or
``{base64url}`` (padded), integers are ``-?[0-9]+`` and must fit in int64,
lower-case words are keywords or principal types, and words starting with an
upper-case letter are identifiers.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re

import attrs

from taonet._errors import CodecError
from taonet.auth._ast import INT64_MAX, INT64_MIN

__all__ = ["MAX_TEXT_SIZE", "Kind", "Token", "go_quote", "lex"]

#: Longest text (in characters) the parsers accept.
MAX_TEXT_SIZE = 1 << 20


class Kind(enum.Enum):
    EOF = "end of input"
    WORD = "keyword"  # lower-case word: keyword or principal type
    IDENT = "identifier"
    STR = "string"
    BYTES = "bytes"
    INT = "integer"
    LP = "'('"
    RP = "')'"
    COMMA = "','"
    DOT = "'.'"
    COLON = "':'"


@attrs.frozen
class Token:
    kind: Kind
    start: int
    end: int
    text: str = ""  # WORD and IDENT
    value: str | bytes | int | None = None  # STR, BYTES, INT

    def describe(self) -> str:
        if self.kind in (Kind.WORD, Kind.IDENT):
            return f"{self.kind.value!s} {self.text!r:.40}"
        if self.kind is Kind.INT:
            return f"integer {self.value!r}"
        return str(self.kind.value)


_PUNCT = {"(": Kind.LP, ")": Kind.RP, ",": Kind.COMMA, ".": Kind.DOT, ":": Kind.COLON}
_WORD_RE = re.compile(r"[a-z][a-z0-9]*")
_IDENT_RE = re.compile(r"[A-Z][A-Za-z0-9_]*")
_INT_RE = re.compile(r"-?[0-9]+")
_HEX = frozenset("0123456789abcdefABCDEF")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=\r\n")
_B64_RE = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?")
_SIMPLE_ESCAPES = {
    "a": 0x07,
    "b": 0x08,
    "f": 0x0C,
    "n": 0x0A,
    "r": 0x0D,
    "t": 0x09,
    "v": 0x0B,
    "\\": 0x5C,
    '"': 0x22,
}
_QUOTE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def _error(pos: int, message: str) -> CodecError:
    return CodecError(f"at offset {pos}: {message}")


def is_space(ch: str) -> bool:
    """Whitespace as Go's unicode.IsSpace sees it (closely enough)."""
    return ch in " \t\n\v\f\r" or (ch >= "\x80" and ch.isspace())


def lex(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an EOF token; CodecError on bad input."""
    if not isinstance(text, str):
        raise CodecError(f"auth text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_SIZE:
        raise CodecError(f"auth text is {len(text)} characters, more than {MAX_TEXT_SIZE}")
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if is_space(ch):
            i += 1
        elif ch in _PUNCT:
            tokens.append(Token(_PUNCT[ch], i, i + 1))
            i += 1
        elif ch == '"':
            end, s = _lex_string(text, i)
            tokens.append(Token(Kind.STR, i, end, value=s))
            i = end
        elif ch == "[":
            end, b = _lex_hex(text, i)
            tokens.append(Token(Kind.BYTES, i, end, value=b))
            i = end
        elif ch == "{":
            end, b = _lex_base64(text, i)
            tokens.append(Token(Kind.BYTES, i, end, value=b))
            i = end
        elif ch == "-" or "0" <= ch <= "9":
            m = _INT_RE.match(text, i)
            if m is None:
                raise _error(i, "expected digits after '-'")
            value = int(m.group())
            if not INT64_MIN <= value <= INT64_MAX:
                raise _error(i, "integer does not fit in 64 bits")
            tokens.append(Token(Kind.INT, i, m.end(), value=value))
            i = m.end()
        elif "a" <= ch <= "z":
            m = _WORD_RE.match(text, i)
            assert m is not None
            tokens.append(Token(Kind.WORD, i, m.end(), text=m.group()))
            i = m.end()
        elif "A" <= ch <= "Z":
            m = _IDENT_RE.match(text, i)
            assert m is not None
            tokens.append(Token(Kind.IDENT, i, m.end(), text=m.group()))
            i = m.end()
        else:
            raise _error(i, f"unexpected character {ch!r}")
    tokens.append(Token(Kind.EOF, n, n))
    return tokens


def _lex_string(text: str, start: int) -> tuple[int, str]:
    """A Go double-quoted string literal starting at ``text[start] == '"'``."""
    out = bytearray()
    i = start + 1
    n = len(text)
    while True:
        if i >= n:
            raise _error(start, "unterminated string")
        ch = text[i]
        if ch == '"':
            break
        if ch == "\n":
            raise _error(i, "newline in string")
        if ch != "\\":
            if "\ud800" <= ch <= "\udfff":
                raise _error(i, "lone surrogate in string")
            out += ch.encode("utf-8")
            i += 1
            continue
        if i + 1 >= n:
            raise _error(start, "unterminated string")
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == "x":
            out.append(_hex_digits(text, i, i + 2, 2))
            i += 4
        elif esc in "01234567":
            digits = text[i + 1 : i + 4]
            if len(digits) != 3 or any(c not in "01234567" for c in digits):
                raise _error(i, "octal escape needs three octal digits")
            value = int(digits, 8)
            if value > 0xFF:
                raise _error(i, "octal escape is more than 255")
            out.append(value)
            i += 4
        elif esc in "uU":
            width = 4 if esc == "u" else 8
            cp = _hex_digits(text, i, i + 2, width)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise _error(i, f"escape \\{esc} names an invalid code point")
            out += chr(cp).encode("utf-8")
            i += 2 + width
        else:
            raise _error(i, f"unknown escape \\{esc}")
    try:
        s = out.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(start, "string escapes do not form valid UTF-8") from None
    return i + 1, s


def _hex_digits(text: str, esc_pos: int, start: int, width: int) -> int:
    digits = text[start : start + width]
    if len(digits) != width or any(c not in _HEX for c in digits):
        raise _error(esc_pos, f"escape needs {width} hex digits")
    return int(digits, 16)


def _lex_hex(text: str, start: int) -> tuple[int, bytes]:
    out = bytearray()
    i = start + 1
    n = len(text)
    group_start = i
    while True:
        if i >= n:
            raise _error(start, "unterminated bytes, expected ']'")
        ch = text[i]
        if ch in _HEX:
            i += 1
            continue
        if ch == "]" or is_space(ch):
            group = text[group_start:i]
            if len(group) % 2:
                raise _error(group_start, "odd number of hex digits in bytes")
            out += bytes.fromhex(group)
            i += 1
            group_start = i
            if ch == "]":
                return i, bytes(out)
            continue
        raise _error(i, f"unexpected character {ch!r} in hex bytes")


def _lex_base64(text: str, start: int) -> tuple[int, bytes]:
    i = start + 1
    n = len(text)
    while i < n and text[i] in _B64_CHARS:
        i += 1
    if i >= n:
        raise _error(start, "unterminated bytes, expected '}'")
    if text[i] != "}":
        raise _error(i, f"unexpected character {text[i]!r} in base64url bytes")
    body = text[start + 1 : i].replace("\r", "").replace("\n", "")
    if not _B64_RE.fullmatch(body):
        raise _error(start, "malformed base64url (padded) bytes")
    try:
        value = base64.urlsafe_b64decode(body)
    except (binascii.Error, ValueError):  # pragma: no cover - the regex rules this out
        raise _error(start, "malformed base64url bytes") from None
    return i + 1, value


def go_quote(s: str) -> str:
    """Quote ``s`` the way Go's strconv.Quote does."""
    parts = ['"']
    for ch in s:
        esc = _QUOTE_ESCAPES.get(ch)
        if esc is not None:
            parts.append(esc)
        elif ch.isprintable():
            parts.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x20 or cp == 0x7F:
                parts.append(f"\\x{cp:02x}")
            elif cp < 0x10000:
                parts.append(f"\\u{cp:04x}")
            else:
                parts.append(f"\\U{cp:08x}")
    parts.append('"')
    return "".join(parts)
