"""The secret service's typed error codes and the exceptions a client raises for them.

A refusal travels as a normal response whose body carries ``error_code`` (one of
:class:`ErrorCode`'s values) and a reason. The client raises the exception of the
code (:func:`error_for`), never one guessed from the reason's text.
"""

from __future__ import annotations

import enum
from typing import Final

from taonet._errors import AuthorizationError, CodecError, TaoError

__all__ = [
    "ConflictError",
    "CorruptError",
    "ErrorCode",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "SecretServiceError",
    "UnauthorizedError",
    "UnavailableError",
    "error_for",
]


class ErrorCode(enum.Enum):
    """Why the secret server refused a request (the wire text is the value)."""

    #: No such object (name, or name and epoch), or no active epoch of it.
    NOT_FOUND = "not_found"
    #: The domain's guard does not give the caller the right the operation needs.
    UNAUTHORIZED = "unauthorized"
    #: The object exists already (create), protects others (write/delete of a key
    #: with children), or changed under the request.
    CONFLICT = "conflict"
    #: The request is malformed or out of bounds (name, value size, page size...).
    INVALID = "invalid"
    #: The server cannot store or read now (disk full, read-only or unreachable
    #: database): nothing was changed.
    UNAVAILABLE = "unavailable"
    #: The stored object failed its integrity check (edited, swapped or rolled back
    #: row): it is never served.
    CORRUPT = "corrupt"
    #: The server failed; nothing was changed.
    INTERNAL = "internal"


class SecretServiceError(TaoError):
    """The secret server refused a request; ``code`` (an :class:`ErrorCode`, or the
    wire text of a code this client does not know) says why, ``reason`` in words."""

    code: ErrorCode | str = ErrorCode.INTERNAL

    def __init__(self, reason: str, *, code: ErrorCode | str | None = None) -> None:
        if code is not None:
            self.code = code
        shown = self.code.value if isinstance(self.code, ErrorCode) else self.code
        super().__init__(f"the secret server refused ({shown}): {reason}")
        self.reason = reason


class NotFoundError(SecretServiceError):
    """No such object (or no active epoch of it)."""

    code = ErrorCode.NOT_FOUND


class UnauthorizedError(SecretServiceError, AuthorizationError):
    """The domain's guard refused the caller."""

    code = ErrorCode.UNAUTHORIZED


class ConflictError(SecretServiceError):
    """The object exists already, protects others, or changed under the request."""

    code = ErrorCode.CONFLICT


class InvalidRequestError(SecretServiceError, CodecError):
    """The request was malformed or out of bounds."""

    code = ErrorCode.INVALID


class UnavailableError(SecretServiceError):
    """The server's storage is unavailable (full, read-only, unreachable): nothing changed."""

    code = ErrorCode.UNAVAILABLE


class CorruptError(SecretServiceError):
    """The stored object failed its integrity check and was not served."""

    code = ErrorCode.CORRUPT


class InternalError(SecretServiceError):
    """The server failed; nothing changed."""

    code = ErrorCode.INTERNAL


_BY_CODE: Final[dict[ErrorCode, type[SecretServiceError]]] = {
    cls.code: cls
    for cls in (
        NotFoundError,
        UnauthorizedError,
        ConflictError,
        InvalidRequestError,
        UnavailableError,
        CorruptError,
        InternalError,
    )
}


def error_for(code: ErrorCode | str, reason: str) -> SecretServiceError:
    """The exception for ``code`` (an unknown code: a plain SecretServiceError keeping it)."""
    if isinstance(code, str):
        try:
            code = ErrorCode(code)
        except ValueError:
            return SecretServiceError(reason, code=code)
    return _BY_CODE[code](reason)
