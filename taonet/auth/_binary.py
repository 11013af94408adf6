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
    _EMPTY_SUBPRIN,
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
    _is_name,
    _is_prin_type,
    _trusted_bytes,
    _trusted_prin,
    _trusted_prinext,
    _trusted_says,
    _trusted_speaksfor,
    _trusted_subprin,
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
# The encodings of the string "key" and of an empty SubPrin (see _term).
_KEY_TYPE = b"\x03key"
_NO_EXTENSIONS = bytes((TAG_SUBPRIN, 0))

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
#
# Recursive descent over (bytes, offset) pairs: each reader takes the data, the
# offset it starts at and its parent's nesting depth, and returns the value and
# the offset after it. Single-byte varints (tags, counts, short lengths) are read
# in line; _varint holds the full rules. The nodes of attestation statements are
# built by the _trusted_* constructors of _ast, after the checks their validators
# would make (see there); the rest by their validating constructors. Two things
# are not read twice: an identifier already checked (_NAMES), and the delegator of
# "P says K speaksfor P", which repeats its speaker's bytes (see TAG_SPEAKSFOR).


def _error(message: str, at: int) -> CodecError:
    return CodecError(f"at offset {at}: {message}")


def _too_deep(p: int) -> CodecError:
    return _error(f"nesting deeper than {MAX_DEPTH} levels", p)


def _varint(data: bytes, start: int) -> tuple[int, int]:
    """The uvarint at ``start`` and the offset after it (strict: minimal, at most 64 bits)."""
    result = 0
    shift = 0
    for b in data[start : start + 10]:
        if b < 0x80:
            if b == 0 and shift:
                raise _error("non-minimal varint", start)
            if shift == 63 and b > 1:  # the tenth byte holds the 64th bit only
                raise _error("varint overflows 64 bits", start)
            return result | (b << shift), start + shift // 7 + 1
        result |= (b & 0x7F) << shift
        shift += 7
    if shift == 70:  # ten bytes, each continued
        raise _error("varint overflows 64 bits", start)
    raise _error("truncated varint", start)


def _uvarint_at(data: bytes, p: int) -> tuple[int, int]:
    if p < len(data) and data[p] < 0x80:
        return data[p], p + 1
    return _varint(data, p)


def _int64(data: bytes, p: int) -> tuple[int, int]:
    u, p = _uvarint_at(data, p)
    return (u - _U64 if u >= 1 << 63 else u), p


def _boolean(data: bytes, p: int) -> tuple[bool, int]:
    if p < len(data) and data[p] < 2:
        return data[p] == 1, p + 1
    v, _ = _uvarint_at(data, p)
    raise _error(f"bool must be 0 or 1, found {v}", p)


def _count(data: bytes, p: int, what: str) -> tuple[int, int]:
    n, q = _uvarint_at(data, p)
    if n > len(data) - q:
        raise _error(f"{what} count {n} is more than the remaining bytes hold", p)
    return n, q


def _text(data: bytes, p: int) -> tuple[str, int]:
    size = len(data)
    if p < size and data[p] < 0x80:
        n, q = data[p], p + 1
    else:
        n, q = _varint(data, p)
    end = q + n
    if end > size:
        raise _error(f"length {n} runs past the end of the data", p)
    try:
        return data[q:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise _error("string is not valid UTF-8", p) from None


# Identifiers already read, by their UTF-8 bytes: extension names repeat in every
# statement. Bounded in entries and in length; any other name is checked anew.
_NAMES: dict[bytes, str] = {}
_MAX_NAMES = 256
_MAX_NAME_BYTES = 64


def _identifier(data: bytes, p: int, what: str) -> tuple[str, int]:
    size = len(data)
    if p < size and data[p] < 0x80:
        n, q = data[p], p + 1
    else:
        n, q = _varint(data, p)
    end = q + n
    if end > size:
        raise _error(f"length {n} runs past the end of the data", p)
    raw = data[q:end]
    name = _NAMES.get(raw)
    if name is not None:
        return name, end
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _error("string is not valid UTF-8", p) from None
    if not _is_name(name):
        raise _error(f"{what} must be an identifier ([A-Z][A-Za-z0-9_]*), got {name!r:.80}", p)
    if n <= _MAX_NAME_BYTES and len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = name
    return name, end


def _expect_tag(data: bytes, p: int, tag: int, what: str) -> int:
    got, q = _uvarint_at(data, p)
    if got != tag:
        raise _error(f"expected {what} (tag {tag}), found tag {got}", p)
    return q


# -- elements. The readers on the path of every attestation statement (principal
# names, bytes, says, speaksfor) read their one-byte varints in line rather than
# through a call each: the calls were most of the cost.


def _terms(data: bytes, p: int, depth: int) -> tuple[tuple[Term, ...], int]:
    size = len(data)
    start = p
    if p < size and data[p] < 0x80:
        n, p = data[p], p + 1
    else:
        n, p = _varint(data, p)
    if n > size - p:
        raise _error(f"term count {n} is more than the remaining bytes hold", start)
    out: list[Term] = []
    for _ in range(n):
        t, p = _term(data, p, depth)
        out.append(t)
    return tuple(out), p


def _subprin(data: bytes, p: int, depth: int) -> tuple[SubPrin, int]:
    size = len(data)
    if p < size and data[p] == TAG_SUBPRIN:
        p += 1
    else:
        p = _expect_tag(data, p, TAG_SUBPRIN, "SubPrin")
    start = p
    if p < size and data[p] < 0x80:
        n, p = data[p], p + 1
    else:
        n, p = _varint(data, p)
    if n == 0:
        return _EMPTY_SUBPRIN, p
    if n > size - p:
        raise _error(f"extension count {n} is more than the remaining bytes hold", start)
    if n == 1:
        e, p = _prinext(data, p, depth)
        return _trusted_subprin((e,)), p
    out: list[PrinExt] = []
    for _ in range(n):
        e, p = _prinext(data, p, depth)
        out.append(e)
    return _trusted_subprin(tuple(out)), p


def _prinext(data: bytes, p: int, depth: int) -> tuple[PrinExt, int]:
    if depth >= MAX_DEPTH:
        raise _too_deep(p)
    if p < len(data) and data[p] == TAG_PRIN_EXT:
        p += 1
    else:
        p = _expect_tag(data, p, TAG_PRIN_EXT, "PrinExt")
    name, p = _identifier(data, p, "extension name")
    # Short path for the extensions in every attestation, Name([hash]): one byte
    # string of at most 127 bytes. It reads exactly what _terms would.
    size = len(data)
    if (
        p + 2 < size
        and data[p] == 1
        and data[p + 1] == TAG_BYTES
        and data[p + 2] < 0x80
        and p + 3 + data[p + 2] <= size
        and depth + 1 < MAX_DEPTH
    ):
        end = p + 3 + data[p + 2]
        return _trusted_prinext(name, (_trusted_bytes(data[p + 3 : end]),)), end
    args, p = _terms(data, p, depth + 1)
    return _trusted_prinext(name, args), p


def _term(data: bytes, p: int, depth: int) -> tuple[Term, int]:
    if depth >= MAX_DEPTH:
        raise _too_deep(p)
    depth += 1
    size = len(data)
    start = p
    if p < size and data[p] < 0x80:
        tag, p = data[p], p + 1
    else:
        tag, p = _varint(data, p)
    if tag == TAG_BYTES:
        if p < size and data[p] < 0x80:
            n, q = data[p], p + 1
        else:
            n, q = _varint(data, p)
        end = q + n
        if end > size:
            raise _error(f"length {n} runs past the end of the data", p)
        return _trusted_bytes(data[q:end]), end
    if tag == TAG_PRIN:
        # Short paths for the principals in every attestation: type "key", a key
        # hash of at most 127 bytes, and often no extensions. Each reads exactly
        # what the general path would, and leaves anything else to it.
        if data[p : p + 4] == _KEY_TYPE:
            typ, q = "key", p + 4
        else:
            typ, q = _text(data, p)
            if not _is_prin_type(typ):
                raise _error(
                    "principal type must be a lower-case word such as 'key' or 'tpm2' "
                    f"(not a reserved word), got {typ!r:.80}",
                    p,
                )
        key: Term
        if (
            depth < MAX_DEPTH
            and q + 1 < size
            and data[q] == TAG_BYTES
            and data[q + 1] < 0x80
            and q + 2 + data[q + 1] <= size
        ):
            end = q + 2 + data[q + 1]
            key, q = _trusted_bytes(data[q + 2 : end]), end
        else:
            key, q = _term(data, q, depth)
        if data[q : q + 2] == _NO_EXTENSIONS:
            return _trusted_prin(typ, key, _EMPTY_SUBPRIN), q + 2
        ext, q = _subprin(data, q, depth)
        return _trusted_prin(typ, key, ext), q
    if tag == TAG_PRIN_TAIL:
        ext, q = _subprin(data, p, depth)
        if not ext.exts:
            raise _error("a PrinTail must have at least one extension", p)
        return PrinTail(ext), q
    if tag == TAG_STR:
        text, p = _text(data, p)
        return Str(text), p
    if tag == TAG_INT:
        value_int, p = _int64(data, p)
        return Int(value_int), p
    if tag == TAG_TERM_VAR:
        name, p = _identifier(data, p, "variable name")
        return TermVar(name), p
    raise _error(f"expected a term tag (1-6), found tag {tag}", start)


def _forms(data: bytes, p: int, depth: int) -> tuple[tuple[Form, ...], int]:
    n, p = _count(data, p, "formula")
    out: list[Form] = []
    for _ in range(n):
        f, p = _form(data, p, depth)
        out.append(f)
    return tuple(out), p


def _form(
    data: bytes, p: int, depth: int, spoken: tuple[bytes, Term] | None = None
) -> tuple[Form, int]:
    # ``spoken``: the encoding and value of the speaker of the Says this formula is
    # the message of (see TAG_SPEAKSFOR).
    if depth >= MAX_DEPTH:
        raise _too_deep(p)
    depth += 1
    start = p
    if p < len(data) and data[p] < 0x80:
        tag, p = data[p], p + 1
    else:
        tag, p = _varint(data, p)
    if tag == TAG_SAYS:
        begin = p
        speaker, p = _term(data, p, depth)
        said = data[begin:p], speaker
        time: int | None = None
        expiration: int | None = None
        size = len(data)
        if p < size and data[p] == 1:
            time, p = _varint(data, p + 1)
            if time >= 1 << 63:
                time -= _U64
        else:
            _, p = _boolean(data, p)  # 0, or an error
        if p < size and data[p] == 1:
            expiration, p = _varint(data, p + 1)
            if expiration >= 1 << 63:
                expiration -= _U64
        else:
            _, p = _boolean(data, p)
        message, p = _form(data, p, depth, said)
        return _trusted_says(speaker, message, time, expiration), p
    if tag == TAG_SPEAKSFOR:
        delegate, p = _term(data, p, depth)
        # "P says K speaksfor P", the statement of every delegation, names P twice:
        # the same bytes decode to the same value, so take the speaker's. Decoding
        # them again could only fail by nesting too deep one level further down; an
        # element of n bytes nests at most n // 2 levels (each level has two bytes of
        # its own at least), so where that fits too, the speaker's value is exact.
        if (
            spoken is not None
            and data.startswith(spoken[0], p)
            and depth + len(spoken[0]) // 2 <= MAX_DEPTH
        ):
            return _trusted_speaksfor(delegate, spoken[1]), p + len(spoken[0])
        delegator, p = _term(data, p, depth)
        return _trusted_speaksfor(delegate, delegator), p
    if tag == TAG_PRED:
        name, p = _identifier(data, p, "predicate name")
        args, p = _terms(data, p, depth)
        return Pred(name, args), p
    if tag == TAG_CONST:
        value, p = _boolean(data, p)
        return Const(value), p
    if tag == TAG_NOT:
        negand, p = _form(data, p, depth)
        return Not(negand), p
    if tag == TAG_AND:
        conjuncts, p = _forms(data, p, depth)
        return And(conjuncts), p
    if tag == TAG_OR:
        disjuncts, p = _forms(data, p, depth)
        return Or(disjuncts), p
    if tag == TAG_IMPLIES:
        antecedent, p = _form(data, p, depth)
        consequent, p = _form(data, p, depth)
        return Implies(antecedent, consequent), p
    if tag in (TAG_FORALL, TAG_EXISTS):
        var, p = _identifier(data, p, "variable name")
        body, p = _form(data, p, depth)
        return (Forall(var, body) if tag == TAG_FORALL else Exists(var, body)), p
    raise _error(f"expected a formula tag (7-16), found tag {tag}", start)


def _decode(data: bytes, read: Callable[[bytes, int, int], tuple[_T, int]]) -> _T:
    if type(data) is bytes:
        raw = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise CodecError(f"auth encoding must be bytes, got {type(data).__name__}")
    try:
        value, end = read(raw, 0, 0)
    except CodecError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - the readers check first
        raise CodecError(f"invalid auth encoding: {e}") from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH is meant to stop this first
        raise CodecError(f"auth encoding nests too deeply (limit {MAX_DEPTH})") from None
    if end != len(raw):
        raise _error(f"{len(raw) - end} trailing bytes", end)
    return value


def decode_form(data: bytes) -> Form:
    """Decode a formula; CodecError on anything but exactly one well-formed formula."""
    return _decode(data, _form)


def decode_term(data: bytes) -> Term:
    """Decode a term."""
    return _decode(data, _term)


def decode_prin(data: bytes) -> Prin:
    """Decode a term that must be a principal."""
    t = decode_term(data)
    if not isinstance(t, Prin):
        raise CodecError(f"at offset 0: expected a principal, found {type(t).__name__}")
    return t


def decode_subprin(data: bytes) -> SubPrin:
    """Decode a SubPrin (tag 17)."""
    return _decode(data, _subprin)


def decode_prinext(data: bytes) -> PrinExt:
    """Decode a single PrinExt (tag 18)."""
    return _decode(data, _prinext)
