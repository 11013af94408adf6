"""Binary codec: golden vectors, round trips, and strict bounded decoding."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, auth
from taonet.auth import (
    And,
    Bytes,
    Const,
    Int,
    Not,
    Or,
    Pred,
    Prin,
    PrinExt,
    PrinTail,
    Says,
    Str,
    SubPrin,
    TermVar,
)

from .strategies import forms, prinexts, prins, subprins, terms

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "auth_binary.json").read_text())[
    "vectors"
]
PUBLISHED = "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA"

DECODERS: list[Any] = [
    auth.decode_form,
    auth.decode_term,
    auth.decode_prin,
    auth.decode_subprin,
    auth.decode_prinext,
]


def test_published_vector() -> None:
    data = base64.urlsafe_b64decode(PUBLISHED)
    f = auth.decode_form(data)
    assert str(f) == "key([74657374206b6579]) speaksfor key([746573742074616f206b6579])"
    assert auth.encode(f) == data
    assert VECTORS[0]["b64url"] == PUBLISHED


@pytest.mark.parametrize("vector", VECTORS, ids=[v["text"] for v in VECTORS])
def test_vectors(vector: dict[str, str]) -> None:
    data = base64.urlsafe_b64decode(vector["b64url"])
    if vector["kind"] == "form":
        value: auth.Element = auth.decode_form(data)
        assert auth.parse_form(vector["text"]) == value
    else:
        value = auth.decode_term(data)
        assert auth.parse_term(vector["text"]) == value
    assert str(value) == vector["text"]
    assert auth.encode(value) == data


@pytest.mark.parametrize(
    ("value", "hexdata"),
    [
        (Int(0), "0500"),
        (Int(127), "057f"),
        (Int(128), "058001"),
        (Int(-1), "05ffffffffffffffffff01"),
        (Int(-(1 << 63)), "0580808080808080808001"),
        (Int((1 << 63) - 1), "05ffffffffffffffff7f"),
        (Str(""), "0300"),
        (Str("é"), "0302c3a9"),
        (Bytes(b"\x00"), "040100"),
        (TermVar("X"), "060158"),
        (PrinTail((PrinExt("A"),)), "02110112014100"),
        (Const(True), "0801"),
        (Const(False), "0800"),
        (Not(Const(True)), "090801"),
        (And(()), "0a00"),
        (Or((Const(False),)), "0b010800"),
        (Says(TermVar("X"), Const(True)), "0e06015800000801"),
        (Says(TermVar("X"), Const(True), expiration=1), "0e060158000101" + "0801"),
        (SubPrin(), "1100"),
        (PrinExt("A", (Int(1),)), "1201410105 01".replace(" ", "")),
    ],
)
def test_encoding_table(value: auth.Element, hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    assert auth.encode(value) == data
    decode = {
        SubPrin: auth.decode_subprin,
        PrinExt: auth.decode_prinext,
    }.get(type(value))
    if decode is None:
        decode = (
            auth.decode_term
            if isinstance(value, auth.Int | Str | Bytes | TermVar | PrinTail)
            else auth.decode_form
        )
    assert decode(data) == value


@given(terms())
def test_term_round_trip(t: auth.Term) -> None:
    data = auth.encode(t)
    assert auth.decode_term(data) == t


@given(forms(canonical=False))
def test_form_round_trip(f: auth.Form) -> None:
    data = auth.encode(f)
    assert auth.decode_form(data) == f


@given(prins(), subprins(), prinexts())
def test_prin_subprin_prinext_round_trip(p: auth.Prin, s: auth.SubPrin, e: auth.PrinExt) -> None:
    assert auth.decode_prin(auth.encode(p)) == p
    assert auth.decode_subprin(auth.encode(s)) == s
    assert auth.decode_prinext(auth.encode(e)) == e


@given(forms())
def test_every_proper_prefix_is_rejected(f: auth.Form) -> None:
    data = auth.encode(f)
    step = max(1, len(data) // 64)
    for n in {*range(0, len(data), step), *range(max(0, len(data) - 16), len(data))}:
        with pytest.raises(CodecError):
            auth.decode_form(data[:n])


@given(forms(), st.binary(min_size=1, max_size=3))
def test_trailing_bytes_are_rejected(f: auth.Form, extra: bytes) -> None:
    with pytest.raises(CodecError, match="trailing"):
        auth.decode_form(auth.encode(f) + extra)


def test_truncation_of_vectors() -> None:
    for v in VECTORS:
        data = base64.urlsafe_b64decode(v["b64url"])
        for n in range(len(data)):
            with pytest.raises(CodecError):
                auth.decode_form(data[:n])
            with pytest.raises(CodecError):
                auth.decode_term(data[:n])
        with pytest.raises(CodecError, match="1 trailing bytes"):
            (auth.decode_form if v["kind"] == "form" else auth.decode_term)(data + b"\x00")


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    for decode in DECODERS:
        try:
            value = decode(data)
        except CodecError:
            continue
        # Decoding is injective: whatever decodes re-encodes to the same bytes.
        assert auth.encode(value) == data


@given(forms(canonical=False), st.data())
def test_mutated_encodings_raise_only_codec_error(f: auth.Form, data: st.DataObject) -> None:
    encoded = bytearray(auth.encode(f))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] = data.draw(st.integers(0, 255))
    try:
        g = auth.decode_form(bytes(encoded))
    except CodecError:
        return
    assert auth.encode(g) == bytes(encoded)


@pytest.mark.parametrize(
    ("hexdata", "message"),
    [
        ("", "truncated varint"),
        ("80", "truncated varint"),
        ("ffffffffffffffffff02", "overflows 64 bits"),
        ("ffffffffffffffffffff01", "overflows 64 bits"),
        ("8000", "non-minimal varint"),
        ("0880 00", "non-minimal varint"),
        ("0802", "bool must be 0 or 1"),
        ("07", "truncated varint"),
        ("07 01 50 01", "more than the remaining bytes"),
        ("07 01 50 01 05", "truncated varint"),
        ("00", "expected a formula tag"),
        ("13", "expected a formula tag"),
        ("03 01 61", "expected a formula tag"),  # a term where a formula belongs
        ("09 03 01 61", "expected a formula tag"),
        ("0d 08 01 08 01", "expected a term tag"),  # a formula where a term belongs
        ("0e 0500 02 0801", "bool must be 0 or 1"),
        ("07 0150 ffffffffffffffff7f", "more than the remaining bytes"),
        ("0a ffffffffffffffffff01", "more than the remaining bytes"),
        ("07 ffffffffffffffff7f", "runs past the end"),
        ("07 0250", "runs past the end"),
        ("07 01ff 00", "not valid UTF-8"),
        ("07 02c3 00", "not valid UTF-8"),
        ("07 02c3", "runs past the end"),
        ("07 01 70 00", "identifier"),  # lower-case predicate name
        ("0f 01 78 0801", "identifier"),  # lower-case variable
        ("0d 0103 657874 0500 1100 0500", "principal type"),  # type "ext" is reserved
        ("0d 02 1100 0500", "at least one extension"),  # empty PrinTail
        ("0d 0101 6b 0500 1200 0500", "expected SubPrin"),
        ("0d 0101 6b 0500 1101 1100 0500", "expected PrinExt"),
    ],
)
def test_malformed_encodings(hexdata: str, message: str) -> None:
    data = bytes.fromhex(hexdata.replace(" ", ""))
    with pytest.raises(CodecError, match=message):
        auth.decode_form(data)


def test_wrong_element_kinds() -> None:
    with pytest.raises(CodecError, match="expected a principal"):
        auth.decode_prin(auth.encode(Str("x")))
    with pytest.raises(CodecError, match="expected a term tag"):
        auth.decode_term(auth.encode(Const(True)))
    with pytest.raises(CodecError, match="expected SubPrin"):
        auth.decode_subprin(auth.encode(PrinExt("A")))
    with pytest.raises(CodecError, match="expected PrinExt"):
        auth.decode_prinext(auth.encode(SubPrin()))
    with pytest.raises(CodecError):
        auth.decode_form("0801")  # type: ignore[arg-type]
    assert auth.decode_form(bytearray(b"\x08\x01")) == Const(True)  # type: ignore[arg-type]
    assert auth.decode_form(memoryview(b"\x08\x01")) == Const(True)  # type: ignore[arg-type]


def test_huge_counts_fail_fast() -> None:
    huge = bytes.fromhex("ffffffffffffffff7f")  # 2**63 - 1
    for prefix in ("0a", "0b", "0701 50", "0d 02 11", "0d 0103 6b6579 0500 11"):
        data = bytes.fromhex(prefix.replace(" ", "")) + huge + b"\x08\x01" * 4
        start = time.perf_counter()
        with pytest.raises(CodecError, match="more than the remaining bytes"):
            auth.decode_form(data)
        assert time.perf_counter() - start < 1.0
    # A count that the remaining bytes could only just hold is not rejected up front.
    with pytest.raises(CodecError, match="truncated"):
        auth.decode_form(bytes.fromhex("0a 03 0801 08"))


def test_deep_nesting_is_a_codec_error() -> None:
    cases = {
        "not": b"\x09" * 10_000 + b"\x08\x01",
        "and": b"\x0a\x01" * 10_000 + b"\x08\x01",
        "says": b"\x0e\x06\x01X\x00\x00" * 10_000 + b"\x08\x01",
        "prin": b"\x07\x01P\x01" + b"\x01\x03key" * 10_000 + b"\x05\x00" + b"\x11\x00" * 10_000,
    }
    for name, data in cases.items():
        with pytest.raises(CodecError, match="nesting deeper than"):
            auth.decode_form(data)
        assert name


def test_nesting_at_the_limit_decodes() -> None:
    ok = b"\x09" * (auth.MAX_DEPTH - 1) + b"\x08\x01"
    f = auth.decode_form(ok)
    assert auth.encode(f) == ok
    with pytest.raises(CodecError, match="nesting"):
        auth.decode_form(b"\x09" + ok)


def test_degenerate_shapes_survive_binary() -> None:
    for f in (
        And(()),
        Or(()),
        And((Pred("P"),)),
        And((And((Pred("P"), Pred("Q"))), Pred("R"))),
    ):
        assert auth.decode_form(auth.encode(f)) == f


def test_prin_with_subprin_encoding() -> None:
    p = Prin("tpm2", Bytes(b"\xaa"), (PrinExt("PCRs", (Str("17,18"), Str("ab,cd"))),))
    data = auth.encode(p)
    assert data == bytes.fromhex(
        "01 04 74706d32 04 01 aa 11 01 12 04 50435273 02 03 05 31372c3138 03 05 61622c6364".replace(
            " ", ""
        )
    )
    assert auth.decode_prin(data) == p
