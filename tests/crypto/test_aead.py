"""Crypter (AES-256-GCM): round trips, tampering, wrong key, wrong associated data."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError
from taonet.crypto import AEAD_OVERHEAD, Crypter

KEY = Crypter.generate()


@given(plaintext=st.binary(max_size=500), ad=st.binary(max_size=50))
def test_round_trip(plaintext: bytes, ad: bytes) -> None:
    blob = KEY.encrypt(plaintext, ad)
    assert len(blob) == len(plaintext) + AEAD_OVERHEAD
    assert KEY.decrypt(blob, ad) == plaintext


def test_default_associated_data_is_empty() -> None:
    assert KEY.decrypt(KEY.encrypt(b"x")) == b"x"
    assert KEY.decrypt(KEY.encrypt(b"x", b""), b"") == b"x"


def test_format_is_version_nonce_ciphertext_tag() -> None:
    raw = bytes(range(32))
    blob = Crypter(raw).encrypt(b"hello", b"ad")
    assert blob[0] == 1
    assert AESGCM(raw).decrypt(blob[1:13], blob[13:], b"ad") == b"hello"


def test_nonces_differ() -> None:
    assert KEY.encrypt(b"same") != KEY.encrypt(b"same")


@given(st.data())
def test_flipped_byte_fails(data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=40))
    blob = KEY.encrypt(plaintext, b"ad")
    i = data.draw(st.integers(0, len(blob) - 1))
    altered = bytearray(blob)
    altered[i] ^= data.draw(st.integers(1, 255))
    expected = CodecError if i == 0 else AuthenticationError
    with pytest.raises(expected):
        KEY.decrypt(bytes(altered), b"ad")


def test_wrong_associated_data_fails() -> None:
    blob = KEY.encrypt(b"secret", b"bound to this")
    with pytest.raises(AuthenticationError, match="associated data"):
        KEY.decrypt(blob, b"bound to that")
    with pytest.raises(AuthenticationError):
        KEY.decrypt(blob)


def test_wrong_key_fails() -> None:
    with pytest.raises(AuthenticationError):
        Crypter.generate().decrypt(KEY.encrypt(b"secret"))


def test_short_input_is_codec_error() -> None:
    blob = KEY.encrypt(b"")
    assert len(blob) == AEAD_OVERHEAD
    for n in range(AEAD_OVERHEAD):
        with pytest.raises(CodecError, match="shorter"):
            KEY.decrypt(blob[:n])
    with pytest.raises(CodecError):
        KEY.decrypt("text")  # type: ignore[arg-type]


def test_unknown_version_is_codec_error() -> None:
    blob = KEY.encrypt(b"data")
    with pytest.raises(CodecError, match="version"):
        KEY.decrypt(b"\x02" + blob[1:])


def test_key_validation() -> None:
    for bad in [b"", b"\x00" * 16, b"\x00" * 31, b"\x00" * 33]:
        with pytest.raises(ValueError, match="32 bytes"):
            Crypter(bad)
    with pytest.raises(TypeError):
        Crypter("0" * 32)  # type: ignore[arg-type]


def test_repr_hides_key() -> None:
    raw = bytes.fromhex("aa" * 32)
    c = Crypter(raw)
    assert "aa" * 4 not in repr(c)
    assert "aa" * 4 not in str(c)
    assert c == Crypter(raw)
    assert c != KEY
