"""Binary codec of the authorization logic, byte-compatible with CloudProxy's Go ``auth`` package.

Each element is a uvarint tag followed by its fields. Integers (and Says
times) are the uvarint of the int64's two's-complement bits, so negatives take
ten bytes; strings and bytes are a uvarint length then the raw bytes; a bool
is the varint 0 or 1; a count is a uvarint. Tags::

    1 Prin (type, key_hash term, SubPrin)   10 And (count, forms)
    2 PrinTail (SubPrin)                    11 Or (count, forms)
    3 Str   4 Bytes   5 Int   6 TermVar     12 Implies (antecedent, consequent)
    7 Pred (name, count, terms)             13 Speaksfor (delegate, delegator)
    8 Const (bool)                          14 Says (speaker, has_time[, time],
    9 Not (form)                                     has_exp[, exp], message)
    15 Forall / 16 Exists (var, form)       17 SubPrin (count, PrinExts)
    18 PrinExt (name, count, terms)

Decoding is strict and bounded: trailing bytes, truncation, an overlong or
non-minimal varint, a bool other than 0/1, invalid UTF-8, a count or length
larger than what remains, nesting deeper than MAX_DEPTH and a tag of the wrong
kind all raise CodecError (and nothing else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from taonet._errors import CodecError
from taonet.auth._ast import (
    And,
    Bytes,
    Const,
    Element,
    Exists,
    Forall,
    Form,
    Implies,
    Int,
    Not,
    Or,
    Pred,
    Prin,
    PrinExt,
    PrinTail,
    Says,
    Speaksfor,
    Str,
    SubPrin,
    Term,
    TermVar,
)
from taonet.auth._text import MAX_DEPTH

__all__ = [
    "decode_form",
    "decode_prin",
    "decode_prinext",
    "decode_subprin",
    "decode_term",
    "encode",
]

_T = TypeVar("_T")

TAG_PRIN = 1
TAG_PRIN_TAIL = 2
TAG_STR = 3
TAG_BYTES = 4
TAG_INT = 5
TAG_TERM_VAR = 6
TAG_PRED = 7
TAG_CONST = 8
TAG_NOT = 9
TAG_AND = 10
TAG_OR = 11
TAG_IMPLIES = 12
TAG_SPEAKSFOR = 13
TAG_SAYS = 14
TAG_FORALL = 15
TAG_EXISTS = 16
TAG_SUBPRIN = 17
TAG_PRIN_EXT = 18

_U64 = 1 << 64

# ---------------------------------------------------------------- encoding


def _uvarint(out: bytearray, value: int) -> None:
    value %= _U64  # two's complement for negative int64
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _string(out: bytearray, data: bytes) -> None:
    _uvarint(out, len(data))
    out += data


def _enc_terms(out: bytearray, terms: tuple[Term, ...]) -> None:
    _uvarint(out, len(terms))
    for t in terms:
        _enc_term(out, t)


def _enc_subprin(out: bytearray, s: SubPrin) -> None:
    _uvarint(out, TAG_SUBPRIN)
    _uvarint(out, len(s.exts))
    for e in s.exts:
        _enc_prinext(out, e)


def _enc_prinext(out: bytearray, e: PrinExt) -> None:
    _uvarint(out, TAG_PRIN_EXT)
    _string(out, e.name.encode())
    _enc_terms(out, e.args)


def _enc_term(out: bytearray, t: Term) -> None:
    if isinstance(t, Prin):
        _uvarint(out, TAG_PRIN)
        _string(out, t.type.encode())
        _enc_term(out, t.key_hash)
        _enc_subprin(out, t.ext)
    elif isinstance(t, PrinTail):
        _uvarint(out, TAG_PRIN_TAIL)
        _enc_subprin(out, t.ext)
    elif isinstance(t, Str):
        _uvarint(out, TAG_STR)
        _string(out, t.value.encode())
    elif isinstance(t, Bytes):
        _uvarint(out, TAG_BYTES)
        _string(out, t.value)
    elif isinstance(t, Int):
        _uvarint(out, TAG_INT)
        _uvarint(out, t.value)
    elif isinstance(t, TermVar):
        _uvarint(out, TAG_TERM_VAR)
        _string(out, t.name.encode())
    else:
        raise TypeError(f"not an auth Term: {type(t).__name__}")


def _enc_forms(out: bytearray, tag: int, forms: tuple[Form, ...]) -> None:
    _uvarint(out, tag)
    _uvarint(out, len(forms))
    for f in forms:
        _enc_form(out, f)


def _enc_form(out: bytearray, f: Form) -> None:
    if isinstance(f, Pred):
        _uvarint(out, TAG_PRED)
        _string(out, f.name.encode())
        _enc_terms(out, f.args)
    elif isinstance(f, Const):
        _uvarint(out, TAG_CONST)
        _uvarint(out, int(f.value))
    elif isinstance(f, Not):
        _uvarint(out, TAG_NOT)
        _enc_form(out, f.negand)
    elif isinstance(f, And):
        _enc_forms(out, TAG_AND, f.conjuncts)
    elif isinstance(f, Or):
        _enc_forms(out, TAG_OR, f.disjuncts)
    elif isinstance(f, Implies):
        _uvarint(out, TAG_IMPLIES)
        _enc_form(out, f.antecedent)
        _enc_form(out, f.consequent)
    elif isinstance(f, Speaksfor):
        _uvarint(out, TAG_SPEAKSFOR)
        _enc_term(out, f.delegate)
        _enc_term(out, f.delegator)
    elif isinstance(f, Says):
        _uvarint(out, TAG_SAYS)
        _enc_term(out, f.speaker)
        for opt in (f.time, f.expiration):
            if opt is None:
                _uvarint(out, 0)
            else:
                _uvarint(out, 1)
                _uvarint(out, opt)
        _enc_form(out, f.message)
    elif isinstance(f, Forall | Exists):
        _uvarint(out, TAG_FORALL if isinstance(f, Forall) else TAG_EXISTS)
        _string(out, f.var.encode())
        _enc_form(out, f.body)
    else:
        raise TypeError(f"not an auth Form: {type(f).__name__}")


def encode(value: Element) -> bytes:
    """The CloudProxy binary encoding of a term, formula, SubPrin or PrinExt."""
    out = bytearray()
    if isinstance(value, SubPrin):
        _enc_subprin(out, value)
    elif isinstance(value, PrinExt):
        _enc_prinext(out, value)
    elif isinstance(value, Prin | PrinTail | Str | Bytes | Int | TermVar):
        _enc_term(out, value)
    else:
        _enc_form(out, value)
    return bytes(out)


# ---------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("data", "depth", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def error(self, message: str, at: int | None = None) -> CodecError:
        return CodecError(f"at offset {self.pos if at is None else at}: {message}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")

    def uvarint(self) -> int:
        data = self.data
        start = self.pos
        # Fast path: tags, counts and short lengths are single bytes.
        if start < len(data) and data[start] < 0x80:
            self.pos = start + 1
            return data[start]
        result = 0
        for i in range(10):
            p = start + i
            if p >= len(data):
                raise self.error("truncated varint", start)
            b = data[p]
            if i == 9 and b > 1:
                raise self.error("varint overflows 64 bits", start)
            result |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                if b == 0 and i > 0:
                    raise self.error("non-minimal varint", start)
                self.pos = p + 1
                return result
        raise self.error("varint longer than 10 bytes", start)

    def int64(self) -> int:
        u = self.uvarint()
        return u - _U64 if u >= 1 << 63 else u

    def boolean(self) -> bool:
        start = self.pos
        v = self.uvarint()
        if v > 1:
            raise self.error(f"bool must be 0 or 1, found {v}", start)
        return v == 1

    def count(self, what: str) -> int:
        start = self.pos
        n = self.uvarint()
        if n > len(self.data) - self.pos:
            raise self.error(f"{what} count {n} is more than the remaining bytes hold", start)
        return n

    def raw(self) -> bytes:
        start = self.pos
        n = self.uvarint()
        if n > len(self.data) - self.pos:
            raise self.error(f"length {n} runs past the end of the data", start)
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def text(self) -> str:
        start = self.pos
        raw = self.raw()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("string is not valid UTF-8", start) from None

    def expect_tag(self, tag: int, what: str) -> None:
        start = self.pos
        got = self.uvarint()
        if got != tag:
            raise self.error(f"expected {what} (tag {tag}), found tag {got}", start)

    # -- elements

    def terms(self) -> tuple[Term, ...]:
        n = self.count("term")
        out: list[Term] = []
        for _ in range(n):
            out.append(self.term())
        return tuple(out)

    def subprin(self) -> SubPrin:
        self.expect_tag(TAG_SUBPRIN, "SubPrin")
        n = self.count("extension")
        out: list[PrinExt] = []
        for _ in range(n):
            out.append(self.prinext())
        return SubPrin(tuple(out))

    def prinext(self) -> PrinExt:
        self.enter()
        self.expect_tag(TAG_PRIN_EXT, "PrinExt")
        name = self.text()
        ext = PrinExt(name, self.terms())
        self.depth -= 1
        return ext

    def term(self) -> Term:
        self.enter()
        start = self.pos
        tag = self.uvarint()
        t: Term
        if tag == TAG_PRIN:
            typ = self.text()
            key = self.term()
            t = Prin(typ, key, self.subprin())
        elif tag == TAG_PRIN_TAIL:
            t = PrinTail(self.subprin())
        elif tag == TAG_STR:
            t = Str(self.text())
        elif tag == TAG_BYTES:
            t = Bytes(self.raw())
        elif tag == TAG_INT:
            t = Int(self.int64())
        elif tag == TAG_TERM_VAR:
            t = TermVar(self.text())
        else:
            raise self.error(f"expected a term tag (1-6), found tag {tag}", start)
        self.depth -= 1
        return t

    def forms(self) -> tuple[Form, ...]:
        n = self.count("formula")
        out: list[Form] = []
        for _ in range(n):
            out.append(self.form())
        return tuple(out)

    def form(self) -> Form:
        self.enter()
        start = self.pos
        tag = self.uvarint()
        f: Form
        if tag == TAG_PRED:
            name = self.text()
            f = Pred(name, self.terms())
        elif tag == TAG_CONST:
            f = Const(self.boolean())
        elif tag == TAG_NOT:
            f = Not(self.form())
        elif tag == TAG_AND:
            f = And(self.forms())
        elif tag == TAG_OR:
            f = Or(self.forms())
        elif tag == TAG_IMPLIES:
            antecedent = self.form()
            f = Implies(antecedent, self.form())
        elif tag == TAG_SPEAKSFOR:
            delegate = self.term()
            f = Speaksfor(delegate, self.term())
        elif tag == TAG_SAYS:
            speaker = self.term()
            time = self.int64() if self.boolean() else None
            expiration = self.int64() if self.boolean() else None
            f = Says(speaker, self.form(), time=time, expiration=expiration)
        elif tag in (TAG_FORALL, TAG_EXISTS):
            var = self.text()
            body = self.form()
            f = Forall(var, body) if tag == TAG_FORALL else Exists(var, body)
        else:
            raise self.error(f"expected a formula tag (7-16), found tag {tag}", start)
        self.depth -= 1
        return f


def _decode(data: bytes, read: Callable[[_Reader], _T]) -> _T:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"auth encoding must be bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    try:
        value = read(r)
    except CodecError:
        raise
    except (TypeError, ValueError) as e:  # a validator refused a decoded field
        raise CodecError(f"invalid auth encoding near offset {r.pos}: {e}") from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH is meant to stop this first
        raise CodecError(f"auth encoding nests too deeply (limit {MAX_DEPTH})") from None
    if r.pos != len(r.data):
        raise r.error(f"{len(r.data) - r.pos} trailing bytes")
    return value


def decode_form(data: bytes) -> Form:
    """Decode a formula; CodecError on anything but exactly one well-formed formula."""
    return _decode(data, _Reader.form)


def decode_term(data: bytes) -> Term:
    """Decode a term."""
    return _decode(data, _Reader.term)


def decode_prin(data: bytes) -> Prin:
    """Decode a term that must be a principal."""
    t = decode_term(data)
    if not isinstance(t, Prin):
        raise CodecError(f"at offset 0: expected a principal, found {type(t).__name__}")
    return t


def decode_subprin(data: bytes) -> SubPrin:
    """Decode a SubPrin (tag 17)."""
    return _decode(data, _Reader.subprin)


def decode_prinext(data: bytes) -> PrinExt:
    """Decode a single PrinExt (tag 18)."""
    return _decode(data, _Reader.prinext)
