"""Measuring programs and naming them as a host would."""

from __future__ import annotations

import hashlib
from pathlib import Path

from taonet import auth
from taonet._errors import ConfigError

__all__ = ["measure_file", "policy_key_subprin", "program_subprin"]

_CHUNK = 1 << 20


def measure_file(path: str | Path) -> bytes:
    """SHA-256 of a file's bytes, read in chunks (ConfigError if unreadable)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot measure {path}: {exc.strerror or exc}") from None
    return digest.digest()


def program_subprin(program_hash: bytes, *, program_id: int = 0) -> auth.SubPrin:
    """``Program([hash])``, or ``Program(id, [hash])`` for a non-zero id."""
    args: tuple[auth.Term, ...] = (auth.Bytes(program_hash),)
    if program_id:
        args = (auth.Int(program_id), *args)
    return auth.SubPrin((auth.PrinExt("Program", args),))


def policy_key_subprin(policy_principal: auth.Prin) -> auth.SubPrin:
    """``PolicyKey([hash])``: what a program bound to a domain extends its name with."""
    if not isinstance(policy_principal.key_hash, auth.Bytes):
        raise ConfigError("the policy principal has no key hash")
    return auth.SubPrin((auth.PrinExt("PolicyKey", (policy_principal.key_hash,)),))
