"""Value types: validation, hashing, principal helpers, key principals."""

from __future__ import annotations

import enum
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given

from taonet import auth
from taonet.auth import (
    And,
    Bytes,
    Const,
    Forall,
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
    TermVar,
    is_sub_principal_or_identical,
)

from .strategies import forms, key_prins, prinexts, terms

K0 = Prin("key", Bytes(b"Key0"))
K1 = Prin("key", Bytes(b"Key1"))


def kid(*ns: int, base: Prin = K0) -> Prin:
    return base.extend(*(PrinExt("Kid", (Int(n),)) for n in ns))


# The Go TestPrinIdentical table: p[0..5].
PRINS = [
    K0,
    kid(1),
    kid(1, 2),
    kid(1, 2, base=K1),
    kid(2, 2),
    K0.extend(PrinExt("Kid", (Int(1), Int(2))), PrinExt("Kid", (Int(2),))),
]


@pytest.mark.parametrize("i", range(len(PRINS)))
@pytest.mark.parametrize("j", range(len(PRINS)))
def test_sub_principal_table_from_go(i: int, j: int) -> None:
    prin, other = PRINS[i], PRINS[j]
    assert (prin == other) == (i == j)
    expected = (i <= j <= 2) or (i == 0 and j >= 4) or i == j
    assert is_sub_principal_or_identical(other, prin) == expected
    assert other.is_sub_principal_of(prin) == expected


def test_sub_principal_cases() -> None:
    child = kid(1, 2)
    assert child.is_sub_principal_of(kid(1))  # prefix
    assert child.is_sub_principal_of(child)  # identical
    assert child.is_sub_principal_of(K0)  # root
    assert not child.is_sub_principal_of(kid(1, base=K1))  # different key
    assert not Prin("tpm", Bytes(b"Key0"), child.ext).is_sub_principal_of(kid(1))  # type
    assert not kid(1).is_sub_principal_of(child)  # longer parent
    assert not kid(2).is_sub_principal_of(kid(1))  # diverging extension
    assert not is_sub_principal_or_identical(Str("x"), K0)
    assert not is_sub_principal_or_identical(K0, PrinTail((PrinExt("A"),)))


@given(key_prins(), key_prins())
def test_sub_principal_properties(a: Prin, b: Prin) -> None:
    assert a.is_sub_principal_of(a)
    assert a.extend(*b.ext.exts).is_sub_principal_of(a)
    if a.is_sub_principal_of(b) and b.is_sub_principal_of(a):
        assert a == b
    parent = a.parent()
    if parent is None:
        assert a.last_ext() is None
        assert a.root() == a
    else:
        assert a.is_sub_principal_of(parent)
        assert parent.extend(a.last_ext()) == a  # type: ignore[arg-type]


def test_extend_and_helpers() -> None:
    s = SubPrin((PrinExt("A"), PrinExt("B", (Int(1),))))
    p = K0.extend(s, PrinExt("C"))
    assert str(p) == "key([4b657930]).A().B(1).C()"
    assert p.extend() == p
    assert p.last_ext() == PrinExt("C")
    assert p.parent() == K0.extend(s)
    assert p.root() == K0
    assert K0.parent() is None
    assert len(p.ext) == 3
    assert list(p.ext) == [*s.exts, PrinExt("C")]
    assert s + SubPrin((PrinExt("C"),)) == p.ext
    with pytest.raises(TypeError):
        K0.extend("A()")  # type: ignore[arg-type]


def test_values_are_frozen_and_hashable() -> None:
    f = Says(K0, And([Pred("P", [Int(1)]), Not(Const(False))]), time=1, expiration=2)
    assert isinstance(f.message, And)
    assert isinstance(f.message.conjuncts, tuple)
    assert (
        len({f, Says(K0, And((Pred("P", (Int(1),)), Not(Const(False)))), time=1, expiration=2)})
        == 1
    )
    with pytest.raises(AttributeError):
        f.time = 3  # type: ignore[misc]
    assert Prin("key", Bytes(bytearray(b"k")), [PrinExt("A")]) == Prin(
        "key", Bytes(b"k"), SubPrin((PrinExt("A"),))
    )


@given(terms(), forms(), prinexts())
def test_hash_and_eq_are_structural(t: auth.Term, f: auth.Form, e: PrinExt) -> None:
    assert hash(t) == hash(auth.parse_term(str(t)))
    assert hash(f) == hash(auth.decode_form(auth.encode(f)))
    assert e == auth.parse_prinext(str(e))


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: Int(1 << 63),
        lambda: Int(-(1 << 63) - 1),
        lambda: Int(True),
        lambda: Int("1"),  # type: ignore[arg-type]
        lambda: Str(b"x"),  # type: ignore[arg-type]
        lambda: Str("\ud800"),
        lambda: Bytes("x"),  # type: ignore[arg-type]
        lambda: TermVar("x"),
        lambda: TermVar(""),
        lambda: TermVar("X-1"),
        lambda: Pred("p"),
        lambda: Pred("P", (Const(True),)),  # type: ignore[arg-type]
        lambda: Pred("P", "abc"),  # type: ignore[arg-type]
        lambda: PrinExt("A", (Pred("P"),)),  # type: ignore[arg-type]
        lambda: Prin("Key", Bytes(b"")),
        lambda: Prin("says", Bytes(b"")),
        lambda: Prin("ext", Bytes(b"")),
        lambda: Prin("k-y", Bytes(b"")),
        lambda: Prin("key", b""),  # type: ignore[arg-type]
        lambda: Prin("key", Bytes(b""), (Int(1),)),  # type: ignore[arg-type]
        lambda: PrinTail(()),
        lambda: SubPrin((Int(1),)),  # type: ignore[arg-type]
        lambda: Const(1),  # type: ignore[arg-type]
        lambda: Not(Int(1)),  # type: ignore[arg-type]
        lambda: And((Int(1),)),  # type: ignore[arg-type]
        lambda: Or((TermVar("X"),)),  # type: ignore[arg-type]
        lambda: Speaksfor(K0, Const(True)),  # type: ignore[arg-type]
        lambda: Says(K0, K1),  # type: ignore[arg-type]
        lambda: Says(K0, Const(True), time=1 << 64),
        lambda: Says(K0, Const(True), expiration=1.5),  # type: ignore[arg-type]
        lambda: Forall("x", Const(True)),
    ],
)
def test_validators_refuse_bad_values(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError)):
        make()


def test_int_subclasses_become_plain_ints() -> None:
    i = Int(Color.RED)
    assert type(i.value) is int
    assert str(i) == "1"
    assert type(Says(K0, Const(True), time=Color.RED).time) is int


def test_key_principal() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = Prin("key", Bytes(hashlib.sha256(der).digest()))
    assert auth.key_principal(der) == expected
    assert auth.key_principal(key) == expected
    assert auth.principal_for_key("key", der) == expected
    tpm2 = auth.principal_for_key("tpm2", der)
    assert tpm2.type == "tpm2"
    assert tpm2.key_hash == expected.key_hash
    assert str(tpm2).startswith("tpm2([")
    assert auth.parse_prin(str(tpm2)) == tpm2
    with pytest.raises(TypeError):
        auth.principal_for_key("key", "not bytes")  # type: ignore[arg-type]


def test_package_exports() -> None:
    for name in auth.__all__:
        assert hasattr(auth, name), name
    assert auth.__doc__
    assert "speaksfor" in auth.__doc__
    assert isinstance(Forall("X", Const(True)), auth.Forall)
