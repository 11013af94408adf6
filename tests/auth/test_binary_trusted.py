"""The binary decoder's short paths: what they build is what the validating constructors build.

The decoder makes the nodes of attestation statements (Bytes, Prin, SubPrin,
PrinExt, Speaksfor, Says) without running the attrs validators, after checking
what those validators check, and reads the principals of every attestation
(type "key", a byte-string key hash, often no extensions) by short paths. These
tests hold both to the general rules: every node the decoder returns passes its
validators and equals the node its public constructor makes, whatever the input;
encodings that a skipped check would let through are refused; and each short path
decides exactly as the general path at its edges (lengths, depth, truncation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, auth
from taonet.auth import (
    MAX_DEPTH,
    Bytes,
    Not,
    Pred,
    Prin,
    PrinExt,
    Says,
    Speaksfor,
    Str,
    SubPrin,
    TermVar,
    _ast,
    _binary,
)

from .strategies import forms, prins, terms

KEY_HASH = Bytes(bytes(range(32)))
HOST = Prin("key", KEY_HASH, (PrinExt("PolicyKey", (Bytes(b"\xaa" * 32),)),))
PROGRAM = Prin("key", Bytes(b"\x01" * 32))
STATEMENT = Says(HOST, Speaksfor(PROGRAM, HOST), time=1, expiration=2**62)


def _nodes(value: object) -> Iterator[Any]:
    """Every attrs node inside ``value``, ``value`` included."""
    if isinstance(value, tuple):
        for item in value:
            yield from _nodes(item)
    elif attrs.has(type(value)):
        yield value
        kind: Any = type(value)
        for field in attrs.fields(kind):
            yield from _nodes(getattr(value, field.name))


def _assert_as_constructed(value: object) -> None:
    for node in _nodes(value):
        attrs.validate(node)  # every validator holds
        # evolve() runs __init__: converters and validators, as a caller's value would.
        rebuilt = attrs.evolve(node)
        assert rebuilt == node
        for field in attrs.fields(type(node)):
            assert type(getattr(rebuilt, field.name)) is type(getattr(node, field.name))


@given(forms(canonical=False))
def test_decoded_forms_are_what_the_constructors_make(f: auth.Form) -> None:
    g = auth.decode_form(auth.encode(f))
    assert g == f
    _assert_as_constructed(g)


@given(prins(), terms())
def test_decoded_terms_are_what_the_constructors_make(p: auth.Prin, t: auth.Term) -> None:
    for value in (p, t):
        decoded = auth.decode_term(auth.encode(value))
        assert decoded == value
        _assert_as_constructed(decoded)


@given(st.binary(max_size=96))
def test_whatever_random_bytes_decode_to_is_valid(data: bytes) -> None:
    for decode in (auth.decode_form, auth.decode_term, auth.decode_subprin):
        try:
            value = decode(data)
        except CodecError:
            continue
        _assert_as_constructed(value)
        assert auth.encode(value) == data


@given(st.data())
def test_whatever_a_mutated_statement_decodes_to_is_valid(data: st.DataObject) -> None:
    encoded = bytearray(auth.encode(STATEMENT))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    try:
        value = auth.decode_form(bytes(encoded))
    except CodecError:
        return
    _assert_as_constructed(value)
    assert auth.encode(value) == bytes(encoded)


def _prin_bytes(typ: bytes, key: bytes, ext: bytes = b"\x11\x00") -> bytes:
    return b"\x01" + bytes([len(typ)]) + typ + key + ext


_BYTES_KEY = b"\x04\x02\xab\xcd"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # What the validators of the trusted nodes refuse, and so must the decoder.
        (_prin_bytes(b"ext", _BYTES_KEY), "principal type"),  # a reserved word
        (_prin_bytes(b"says", _BYTES_KEY), "principal type"),
        (_prin_bytes(b"Key", _BYTES_KEY), "principal type"),  # not lower case
        (_prin_bytes(b"ke y", _BYTES_KEY), "principal type"),
        (_prin_bytes(b"", _BYTES_KEY), "principal type"),
        (_prin_bytes(b"2key", _BYTES_KEY), "principal type"),
        (_prin_bytes(b"k\xffy", _BYTES_KEY), "not valid UTF-8"),
        (_prin_bytes(b"key", _BYTES_KEY, b"\x11\x01\x12\x07program\x00"), "identifier"),
        (_prin_bytes(b"key", _BYTES_KEY, b"\x11\x01\x12\x00\x00"), "identifier"),
        (_prin_bytes(b"key", _BYTES_KEY, b"\x11\x01\x12\x02A \x00"), "identifier"),
        (_prin_bytes(b"key", _BYTES_KEY, b"\x11\x01\x12\x02A\xff\x00"), "UTF-8"),
        (_prin_bytes(b"key", _BYTES_KEY, b"\x11\x01\x11\x00"), "expected PrinExt"),
        (_prin_bytes(b"key", _BYTES_KEY, b"\x12\x00"), "expected SubPrin"),
        (_prin_bytes(b"key", b"\x08\x01"), "expected a term tag"),  # a formula as key hash
        (b"\x02\x11\x00", "at least one extension"),  # an empty PrinTail
        # The short paths' edges: a bad encoding next to what they read.
        (_prin_bytes(b"key", _BYTES_KEY, b"\x11\x80\x00"), "non-minimal varint"),
        (_prin_bytes(b"key", b"\x04\x80\x00"), "non-minimal varint"),  # key hash length
        (_prin_bytes(b"key", b"\x04\x05\xab\xcd"), "runs past the end"),
        (_prin_bytes(b"key", b"\x04\xff\x01" + b"\x00" * 200), "runs past the end"),
    ],
)
def test_what_a_skipped_validator_would_let_through_is_refused(data: bytes, message: str) -> None:
    for decode in (auth.decode_term, auth.decode_prin):
        with pytest.raises(CodecError, match=message):
            decode(data)
    with pytest.raises(CodecError, match=message):  # the same inside a statement
        auth.decode_form(b"\x0d" + auth.encode(PROGRAM) + data)


@pytest.mark.parametrize("size", [0, 1, 31, 32, 126, 127, 128, 129, 300])
@pytest.mark.parametrize("typ", ["key", "keys", "ke", "k", "tpm", "tpm2", "kez"])
def test_key_hashes_of_every_length_and_types_near_key(size: int, typ: str) -> None:
    for ext in ((), (PrinExt("Program", (Bytes(b"\x07" * size),)),)):
        p = Prin(typ, Bytes(bytes([size % 251]) * size), ext)
        data = auth.encode(p)
        assert auth.decode_term(data) == p
        _assert_as_constructed(auth.decode_term(data))
        for n in range(len(data)):  # each truncation fails as it does elsewhere
            with pytest.raises(CodecError):
                auth.decode_term(data[:n])


@pytest.mark.parametrize("key_hash", [Str("k"), TermVar("K"), PROGRAM, Bytes(b"")])
def test_key_hashes_that_take_the_general_path(key_hash: auth.Term) -> None:
    p = Prin("key", key_hash, (PrinExt("A"),))
    assert auth.decode_term(auth.encode(p)) == p


def _nested(levels: int, leaf: auth.Term, *, in_ext: bool) -> bytes:
    # ``leaf`` as a principal's key hash, or as the one argument of its extension.
    p = Prin("key", Str("k"), (PrinExt("A", (leaf,)),)) if in_ext else Prin("key", leaf)
    f: auth.Form = Pred("P", (p,))
    for _ in range(levels):
        f = Not(f)
    return auth.encode(f)


def _depth_outcome(data: bytes) -> str:
    try:
        auth.decode_form(data)
    except CodecError as exc:
        return str(exc).partition(": ")[2]
    return "ok"


@pytest.mark.parametrize("in_ext", [False, True], ids=["key-hash", "extension-argument"])
def test_depth_limit_is_the_same_on_the_short_path(in_ext: bool) -> None:
    # A byte string read by the short path (Bytes) and a string read by the general
    # path (Str) at the same place sit at the same depth: both decode, or both are
    # too deep.
    outcomes = []
    for levels in range(MAX_DEPTH - 6, MAX_DEPTH):
        results = [
            _depth_outcome(_nested(levels, leaf, in_ext=in_ext))
            for leaf in (Bytes(b"\x01"), Str("k"))
        ]
        assert results[0] == results[1]
        outcomes.append(results[0])
    # The limit lies in the range.
    assert outcomes[0] == "ok"
    assert outcomes[-1] == "nesting deeper than 64 levels"


def test_trusted_constructors_set_every_field() -> None:
    made: list[tuple[Any, Any]] = [
        (_ast._trusted_bytes(b"x"), Bytes(b"x")),
        (_ast._trusted_subprin((PrinExt("A"),)), SubPrin((PrinExt("A"),))),
        (_ast._trusted_prinext("A", (Str("s"),)), PrinExt("A", (Str("s"),))),
        (_ast._trusted_prin("key", KEY_HASH, _ast._EMPTY_SUBPRIN), Prin("key", KEY_HASH)),
        (_ast._trusted_speaksfor(PROGRAM, HOST), Speaksfor(PROGRAM, HOST)),
        (_ast._trusted_says(HOST, Pred("P"), 1, None), Says(HOST, Pred("P"), time=1)),
    ]
    for trusted, public in made:
        assert type(trusted) is type(public)
        for field in attrs.fields(type(public)):
            assert getattr(trusted, field.name) == getattr(public, field.name)
        assert trusted == public
        assert hash(trusted) == hash(public)
        assert str(trusted) == str(public)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(trusted, attrs.fields(type(public))[0].name, None)
    assert SubPrin() == _ast._EMPTY_SUBPRIN


def test_common_principal_types_are_valid_types() -> None:
    for typ in _ast._COMMON_PRIN_TYPES:
        assert Prin(typ, KEY_HASH).type == typ
        assert _ast._PRIN_TYPE_RE.fullmatch(typ)
        assert typ not in auth.RESERVED_WORDS


# -- "P says K speaksfor P": the delegator that repeats the speaker's bytes


def _deep_prin(levels: int, leaf: bytes = b"\x05") -> Prin:
    """A principal nesting ``levels`` principals as key hashes, around ``leaf``."""
    p = Prin("key", Bytes(leaf))
    for _ in range(levels):
        p = Prin("key", p)
    return p


@given(prins(), prins(), st.sampled_from(["same", "other", "extended"]))
def test_a_delegator_repeating_the_speaker_decodes_as_itself(
    speaker: auth.Prin, other: auth.Prin, which: str
) -> None:
    delegator = {
        "same": speaker,
        "other": other,
        "extended": speaker.extend(PrinExt("More")),
    }[which]
    f = Says(speaker, Speaksfor(PROGRAM, delegator), time=5)
    g = auth.decode_form(auth.encode(f))
    assert g == f
    _assert_as_constructed(g)
    assert isinstance(g, Says)
    assert isinstance(g.message, Speaksfor)
    assert g.message.delegator == delegator
    assert type(g.message.delegator) is Prin


def test_the_repeated_delegator_is_the_speakers_value() -> None:
    g = auth.decode_form(auth.encode(STATEMENT))
    assert isinstance(g, Says)
    assert isinstance(g.message, Speaksfor)
    assert g.message.delegator is g.speaker  # read once
    assert g == STATEMENT


@pytest.mark.parametrize("inner", [0, 1, 5, 20, 40])
def test_a_repeated_delegator_reaches_the_depth_limit_as_a_fresh_one(inner: int) -> None:
    # The delegator sits one level below the speaker. Whether the repeated bytes are
    # taken from the speaker or decoded afresh (the same principal but for one byte
    # of its innermost key hash), each statement decodes at the same depths.
    speaker = _deep_prin(inner)
    fresh = _deep_prin(inner, b"\x06")
    assert fresh != speaker
    outcomes = []
    for levels in range(0, MAX_DEPTH):
        pair = []
        for delegator in (speaker, fresh):
            f: auth.Form = Says(speaker, Speaksfor(PROGRAM, delegator))
            for _ in range(levels):
                f = Not(f)
            pair.append(_depth_outcome(auth.encode(f)))
        assert pair[0] == pair[1], levels
        outcomes.append(pair[0])
    assert outcomes[0] == "ok"
    assert outcomes[-1] == "nesting deeper than 64 levels"


# -- the identifiers already read


def test_remembered_identifiers_are_bounded_and_only_good_ones() -> None:
    names = _binary._NAMES
    names.clear()
    # Fill it past its bound with valid names, some too long to keep.
    for i in range(_binary._MAX_NAMES + 50):
        name = f"N{i}" if i % 10 else "L" * (_binary._MAX_NAME_BYTES + 1) + str(i)
        p = Prin("key", KEY_HASH, (PrinExt(name),))
        assert auth.decode_term(auth.encode(p)) == p
    assert len(names) == _binary._MAX_NAMES
    assert all(len(raw) <= _binary._MAX_NAME_BYTES for raw in names)
    assert all(raw.decode() == name and _ast._is_name(name) for raw, name in names.items())
    # A full memory changes nothing: names it holds and names it does not still
    # decode, bad ones are still refused, and none of them is kept.
    for name in ("N1", "Fresh", "Another_1"):
        p = Prin("key", KEY_HASH, (PrinExt(name),))
        assert auth.decode_term(auth.encode(p)) == p
    for bad in (b"program", b"N1 ", b"", b"N\xff"):
        data = _prin_bytes(b"key", _BYTES_KEY, b"\x11\x01\x12" + bytes([len(bad)]) + bad + b"\x00")
        with pytest.raises(CodecError, match=r"identifier|UTF-8"):
            auth.decode_term(data)
        assert bad not in names


def test_a_bad_name_is_never_remembered() -> None:
    _binary._NAMES.clear()
    for _ in range(2):  # refused the second time as the first
        with pytest.raises(CodecError, match="identifier"):
            auth.decode_form(b"\x07\x01p\x00")
    assert b"p" not in _binary._NAMES
    assert auth.decode_form(b"\x07\x01P\x00") == Pred("P")
    assert _binary._NAMES[b"P"] == "P"
