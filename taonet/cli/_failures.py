"""Errors as the command line says them: one line each."""

from __future__ import annotations

import os

from taonet import TaoError

__all__ = ["describe", "leaves"]


def describe(exc: BaseException) -> str:
    """One line for an error: a TaoError's message, an OSError's path and reason."""
    if isinstance(exc, OSError) and not isinstance(exc, TaoError):
        why = exc.strerror or str(exc) or type(exc).__name__
        paths = [_path(p) for p in (exc.filename, exc.filename2) if p is not None]
        text = f"{' -> '.join(paths)}: {why}" if paths else why
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` (itself, unless it is an exception group)."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(leaves(inner))
    return out


def _path(name: object) -> str:
    """An OSError's file name as text (it may be a path, bytes or a descriptor)."""
    if isinstance(name, str | bytes | os.PathLike):
        return os.fsdecode(name)
    return str(name)
