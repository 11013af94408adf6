"""The errors of protected objects: one base with a reason, one class per kind of failure."""

from __future__ import annotations

import enum

from taonet._errors import AuthenticationError, TaoError

__all__ = [
    "ChainCycleError",
    "ChainTooLongError",
    "MissingProtectorError",
    "ObjectStateError",
    "ProtectedObjectError",
    "Reason",
    "WrongKeyError",
]


class Reason(enum.Enum):
    """Why an operation on a protected object failed (``error.reason``)."""

    #: No protected object for an id on the way from a leaf to the root.
    MISSING_PROTECTOR = "missing_protector"
    #: The blob does not authenticate under the protector: wrong key, altered blob,
    #: or a blob moved to another protected or protector id (the ids are its
    #: associated data).
    WRONG_KEY = "wrong_key"
    #: The protector offered is not the one the protected object names.
    WRONG_PROTECTOR = "wrong_protector"
    #: The protector is not a key: wrong type or wrong length.
    NOT_A_KEY = "not_a_key"
    INACTIVE = "inactive"
    RETIRED = "retired"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    #: A chain that comes back to an id it already passed (A protects B protects A).
    CYCLE = "cycle"
    #: A chain longer than :data:`~taonet.protected.MAX_CHAIN_DEPTH`.
    CHAIN_TOO_LONG = "chain_too_long"
    #: A key at the last epoch a proto int32 holds cannot be rotated.
    EPOCH_EXHAUSTED = "epoch_exhausted"


class ProtectedObjectError(TaoError):
    """Base of the protected-object errors; ``.reason`` says which failure it was."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


class MissingProtectorError(ProtectedObjectError):
    """A chain could not be followed: no protected object for an id."""

    def __init__(self, message: str, *, reason: Reason = Reason.MISSING_PROTECTOR) -> None:
        super().__init__(message, reason=reason)


class WrongKeyError(ProtectedObjectError, AuthenticationError):
    """The protector is the wrong one, is not a key, or the blob does not authenticate."""

    def __init__(self, message: str, *, reason: Reason = Reason.WRONG_KEY) -> None:
        super().__init__(message, reason=reason)


class ObjectStateError(ProtectedObjectError, AuthenticationError):
    """An object may not be used now: inactive, retired, revoked, expired or not yet valid."""


class ChainCycleError(ProtectedObjectError):
    """A protector chain comes back to an id it already passed."""

    def __init__(self, message: str, *, reason: Reason = Reason.CYCLE) -> None:
        super().__init__(message, reason=reason)


class ChainTooLongError(ProtectedObjectError):
    """A protector chain is longer than the bound."""

    def __init__(self, message: str, *, reason: Reason = Reason.CHAIN_TOO_LONG) -> None:
        super().__init__(message, reason=reason)
