"""HKDF-SHA256 against RFC 5869."""

from __future__ import annotations

import pytest

from taonet.crypto import hkdf_sha256


def test_rfc5869_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_rfc5869_case_3_empty_salt_and_info() -> None:
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), salt=b"", info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_default_length_and_separation() -> None:
    a = hkdf_sha256(b"k" * 32, salt=b"s", info=b"a")
    assert len(a) == 32
    assert a != hkdf_sha256(b"k" * 32, salt=b"s", info=b"b")
    assert a != hkdf_sha256(b"k" * 32, salt=b"t", info=b"a")
    assert hkdf_sha256(b"k" * 32, salt=b"s", info=b"a", length=64)[:32] == a


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_length_bounds(length: int) -> None:
    with pytest.raises(ValueError, match="length"):
        hkdf_sha256(b"k", salt=b"", info=b"", length=length)
