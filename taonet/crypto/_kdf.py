"""HKDF with HMAC-SHA256 (RFC 5869), as the original's Deriver uses."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["hkdf_sha256"]

_MAX_LENGTH = 255 * 32


def hkdf_sha256(key: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """Derive ``length`` bytes (1 to 8160) from ``key`` with HKDF-SHA256 (extract and expand)."""
    if not 1 <= length <= _MAX_LENGTH:
        raise ValueError(f"HKDF-SHA256 length must be 1..{_MAX_LENGTH}, got {length}")
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=bytes(salt), info=bytes(info)
    ).derive(bytes(key))
