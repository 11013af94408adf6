"""Authenticated encryption with AES-256-GCM.

A ciphertext blob is::

    version (1 byte, 0x01) || nonce (12 random bytes) || ciphertext || tag (16 bytes)

The associated data is authenticated but not stored: the caller passes the
same bytes to :meth:`Crypter.decrypt`. Structurally bad input (too short,
unknown version) raises :class:`~taonet.CodecError`; a blob that does not
authenticate (wrong key, altered byte, other associated data) raises
:class:`~taonet.AuthenticationError`.
"""

from __future__ import annotations

import hmac
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taonet._errors import AuthenticationError, CodecError

__all__ = ["AEAD_OVERHEAD", "Crypter"]

_VERSION: Final = 1
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
#: Bytes an encrypted blob adds to its plaintext (version + nonce + tag).
AEAD_OVERHEAD: Final = 1 + _NONCE_BYTES + _TAG_BYTES


class Crypter:
    """An AES-256-GCM key. Its repr never shows the key."""

    __slots__ = ("_aead", "_key")

    def __init__(self, key: bytes) -> None:
        """Use the 32-byte ``key``; ValueError (TypeError for non-bytes) otherwise."""
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError(f"Crypter key must be bytes, got {type(key).__name__}")
        raw = bytes(key)
        if len(raw) != _KEY_BYTES:
            raise ValueError(f"Crypter key must be {_KEY_BYTES} bytes, got {len(raw)}")
        self._key: Final = raw
        self._aead: Final = AESGCM(raw)

    @classmethod
    def generate(cls) -> Crypter:
        """A fresh random key."""
        return cls(os.urandom(_KEY_BYTES))

    @property
    def key_bytes(self) -> bytes:
        """The raw key (secret: only for sealing it into a keyset)."""
        return self._key

    def encrypt(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt and authenticate ``plaintext``, binding ``associated_data``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, bytes(plaintext), bytes(associated_data))
        return bytes([_VERSION]) + nonce + sealed

    def decrypt(self, blob: bytes, associated_data: bytes = b"") -> bytes:
        """Check and decrypt a blob made by :meth:`encrypt` with the same associated data."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise CodecError(f"ciphertext: expected bytes, got {type(blob).__name__}")
        data = bytes(blob)
        if len(data) < AEAD_OVERHEAD:
            raise CodecError(
                f"ciphertext: {len(data)} bytes is shorter than the {AEAD_OVERHEAD}-byte minimum"
            )
        if data[0] != _VERSION:
            raise CodecError(f"ciphertext: unknown version {data[0]} (expected {_VERSION})")
        nonce = data[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, data[1 + _NONCE_BYTES :], bytes(associated_data))
        except InvalidTag:
            raise AuthenticationError(
                "ciphertext does not authenticate: wrong key, altered bytes "
                "or different associated data"
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Crypter):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Crypter(AES-256-GCM, key hidden)"
