"""Errors as the command line says them: one line each, and one exit status per kind.

Every command's failures are sorted here, not in the command: :func:`exit_status`
maps the :class:`~taonet.TaoError` tree and ``OSError`` to the statuses of
:class:`ExitStatus`, and :data:`EXIT_STATUS_TABLE` is the table ``taonet --help``
prints. A command that knows better than the tree what went wrong (a domain
directory that does not exist, an option out of range) raises one of the classes
below, which are still ``TaoError`` branches.
"""

from __future__ import annotations

import enum
import errno
import os
from typing import ClassVar, Final

from taonet import (
    AuthenticationError,
    AuthorizationError,
    ConfigError,
    HostError,
    ProtocolError,
    TaoError,
)

__all__ = [
    "EXIT_STATUS_TABLE",
    "AmbiguousError",
    "ExitStatus",
    "NotFoundError",
    "RefusedError",
    "UnavailableError",
    "UsageError",
    "describe",
    "exit_status",
    "is_missing",
    "leaves",
]


class ExitStatus(enum.IntEnum):
    """What ``taonet`` exits with; the same for every command."""

    OK = 0
    #: A failure of another kind: bad data, a broken configuration, a host that failed.
    ERROR = 1
    #: The command line was wrong: unknown option, bad value, ambiguous selector.
    USAGE = 2
    #: What the command names does not exist: domain, host, file, program, serial.
    NOT_FOUND = 3
    #: Refused: wrong password, authentication or authorization failed, permission denied.
    REFUSED = 4
    #: A host or service that should answer is not running or cannot be reached.
    UNAVAILABLE = 5
    #: An unexpected failure inside taonet (a bug: please report it).
    INTERNAL = 70
    #: Interrupted (Ctrl-C, SIGINT).
    INTERRUPTED = 130
    #: The reader of standard output went away (``taonet list | head -1``); silent.
    BROKEN_PIPE = 141


#: The exit status table of ``taonet --help`` (and of the README).
EXIT_STATUS_TABLE: Final = """\
exit status:
  0    success
  1    error: bad data, a broken configuration, a failure not listed below
  2    usage: unknown option, bad value, a selector that matches several programs
  3    not found: no such domain, host directory, file, program or serial
  4    refused: wrong password, authentication or authorization failed, permission denied
  5    unavailable: the host or service is not running or cannot be reached
  70   internal error (a bug in taonet; TAONET_TRACEBACK=1 shows where)
  130  interrupted
  141  standard output closed by its reader (as SIGPIPE would)
  (taonet run --wait exits with the program's own status)"""


class _Classified:
    """A CLI error that says its exit status itself."""

    exit_status: ClassVar[ExitStatus]


class UsageError(_Classified, ConfigError):
    """The command line asks for something impossible (exit 2)."""

    exit_status = ExitStatus.USAGE


class AmbiguousError(UsageError):
    """A selector names several things where the command needs one (exit 2)."""


class NotFoundError(_Classified, ConfigError):
    """What the command names does not exist (exit 3)."""

    exit_status = ExitStatus.NOT_FOUND


class RefusedError(_Classified, ConfigError):
    """Refused for want of the right password or permission (exit 4)."""

    exit_status = ExitStatus.REFUSED


class UnavailableError(_Classified, HostError):
    """A host or service that should answer does not (exit 5)."""

    exit_status = ExitStatus.UNAVAILABLE


#: What a keyset says when the password does not open it (taonet.crypto's one refusal).
_WRONG_PASSWORD: Final = "wrong password or corrupted keyset"  # noqa: S105 (a message)
_UNREACHABLE_ERRNOS: Final = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ETIMEDOUT}
)


def exit_status(exc: BaseException) -> ExitStatus:
    """The exit status for one failure (a leaf, not a group).

    A CLI error class says its own; authentication and authorization failures and a
    wrong password are *refused*; otherwise the first ``OSError`` in the chain of
    causes decides (permission: refused; a connection refused, reset or timed out,
    or no socket where a host or service should listen: unavailable; a missing
    file: not found); any other TaoError or OSError is *error*, anything else
    *internal*.
    """
    if isinstance(exc, _Classified):
        return exc.exit_status
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return ExitStatus.REFUSED
    if not isinstance(exc, TaoError | OSError):
        return ExitStatus.INTERNAL
    if _WRONG_PASSWORD in str(exc):
        return ExitStatus.REFUSED
    connecting = isinstance(exc, HostError | ProtocolError)
    for cause in _chain(exc):
        if type(cause).__name__ == "TooSlowError":  # trio's, without importing trio
            return ExitStatus.UNAVAILABLE
        if not isinstance(cause, OSError):
            continue
        if isinstance(cause, PermissionError):
            return ExitStatus.REFUSED
        if isinstance(cause, ConnectionRefusedError | ConnectionResetError | TimeoutError):
            return ExitStatus.UNAVAILABLE
        if cause.errno in _UNREACHABLE_ERRNOS or type(cause).__name__ == "gaierror":
            return ExitStatus.UNAVAILABLE
        if isinstance(cause, FileNotFoundError | NotADirectoryError):
            # No socket where a client tried to connect: nobody serves there.
            return ExitStatus.UNAVAILABLE if connecting else ExitStatus.NOT_FOUND
        break
    return ExitStatus.ERROR


def is_missing(path: str | os.PathLike[str]) -> bool:
    """True only if nothing is at ``path`` (not when it cannot be looked at): a path
    behind a closed directory is left to the command, whose error says so."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):
        return False
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (explicit, else implicit), at most 16 deep."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < 16 and current not in out:
        out.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return out


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
