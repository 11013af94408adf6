"""Measuring programs and naming them as a host would."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from taonet import auth
from taonet._errors import ConfigError
from taonet._files import file_kind, open_regular_file

__all__ = ["measure_file", "policy_key_subprin", "program_subprin"]

_CHUNK = 1 << 20


def measure_file(path: str | Path) -> bytes:
    """SHA-256 of a regular file's bytes, read in chunks.

    ConfigError if it cannot be read, if it is not a regular file (a FIFO, a
    device such as ``/dev/zero``, a directory, a socket: none is a program, and
    reading one could block or never end), or if it changes size while it is read.
    The file is opened without blocking and without becoming a controlling
    terminal, so even opening a FIFO nobody writes returns at once.
    """
    try:
        fd, info = open_regular_file(path, verb="measure")
    except OSError as exc:
        raise ConfigError(f"cannot measure {path}: {_why_not(path, exc)}") from None
    try:
        digest = hashlib.sha256()
        left = info.st_size
        while left > 0 and (chunk := os.read(fd, min(_CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
        if left or os.read(fd, 1):
            raise ConfigError(
                f"cannot measure {path}: it changed while it was read, or has no fixed size"
            )
    except OSError as exc:
        raise ConfigError(f"cannot measure {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return digest.digest()


def _why_not(path: str | Path, exc: OSError) -> str:
    """Why ``path`` could not be opened: what it is if not a file (a socket), else the OS's word."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return exc.strerror or str(exc)
    if stat.S_ISREG(mode):
        return exc.strerror or str(exc)
    return f"it is {file_kind(mode)}, not a regular file"


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
