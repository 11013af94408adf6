"""taonet.protected's public names: their home, and the error tree."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import taonet.protected as protected
from taonet import AuthenticationError, TaoError
from taonet.protected import (
    ChainCycleError,
    ChainTooLongError,
    MissingProtectorError,
    ObjectStateError,
    ProtectedObjectError,
    Reason,
    WrongKeyError,
)


def test_public_objects_report_their_public_module() -> None:
    for name in protected.__all__:
        if not name.isupper():  # constants have no module
            assert getattr(protected, name).__module__ == "taonet.protected", name
    assert repr(WrongKeyError) == "<class 'taonet.protected.WrongKeyError'>"


@pytest.mark.parametrize(
    ("cls", "reason", "authentication"),
    [
        (MissingProtectorError, Reason.MISSING_PROTECTOR, False),
        (WrongKeyError, Reason.WRONG_KEY, True),
        (ChainCycleError, Reason.CYCLE, False),
        (ChainTooLongError, Reason.CHAIN_TOO_LONG, False),
    ],
)
def test_errors_and_their_default_reasons(
    cls: Callable[[str], ProtectedObjectError], reason: Reason, authentication: bool
) -> None:
    error = cls("message")
    assert isinstance(error, ProtectedObjectError)
    assert isinstance(error, TaoError)
    assert isinstance(error, AuthenticationError) is authentication
    assert error.reason is reason
    assert str(error) == "message"


def test_object_state_error_needs_its_reason() -> None:
    error = ObjectStateError("revoked", reason=Reason.REVOKED)
    assert isinstance(error, AuthenticationError)
    assert error.reason is Reason.REVOKED
