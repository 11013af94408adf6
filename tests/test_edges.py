"""taonet._edges.map_os_errors: what it maps, what it lets through."""

from __future__ import annotations

import errno

import pytest
import trio

from taonet import AuthorizationError, HostError, ProtocolError
from taonet._edges import map_os_errors


def test_an_os_error_becomes_the_named_class_with_its_cause() -> None:
    original = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    with pytest.raises(HostError) as caught, map_os_errors(to=HostError, what="dialing x"):
        raise original
    assert str(caught.value) == "dialing x: Connection refused"
    assert caught.value.__cause__ is original


def test_trio_all_attempts_failed_says_why() -> None:
    attempts = ExceptionGroup(
        "all attempts failed",
        [
            OSError(errno.ECONNREFUSED, "Connection refused"),
            OSError(errno.EHOSTUNREACH, "No route to host"),
        ],
    )
    original = OSError("all attempts to connect to x:1 failed")
    original.__cause__ = attempts
    with pytest.raises(ProtocolError) as caught, map_os_errors(to=ProtocolError, what="dialing x"):
        raise original
    assert str(caught.value) == "dialing x: Connection refused; No route to host"
    assert caught.value.__cause__ is original


def test_a_timeout_becomes_the_named_class() -> None:
    mapping = map_os_errors(to=ProtocolError, what="dialing x")
    with pytest.raises(ProtocolError, match=r"^dialing x: timed out$") as caught, mapping:
        raise trio.TooSlowError
    assert isinstance(caught.value.__cause__, trio.TooSlowError)


def test_a_group_of_outside_failures_is_mapped_whole() -> None:
    group = ExceptionGroup("attempts", [OSError(errno.ENETUNREACH, "Network is unreachable")])
    mapping = map_os_errors(to=ProtocolError, what="dialing x")
    with pytest.raises(ProtocolError, match="Network is unreachable") as caught, mapping:
        raise ExceptionGroup("outer", [group, trio.BrokenResourceError()])
    assert isinstance(caught.value.__cause__, ExceptionGroup)


def test_a_group_of_tao_errors_raises_the_first() -> None:
    first = AuthorizationError("no")
    with pytest.raises(AuthorizationError) as caught, map_os_errors(to=HostError, what="x"):
        raise ExceptionGroup("g", [first, HostError("also")])
    assert caught.value is first


@pytest.mark.parametrize(
    "passing",
    [
        AuthorizationError("a TaoError passes unchanged"),
        ValueError("a bug is not the outside world"),
        KeyboardInterrupt(),
        ExceptionGroup("mixed", [OSError("x"), ValueError("bug")]),
    ],
)
def test_what_is_not_a_failure_of_the_outside_world_passes(passing: BaseException) -> None:
    with pytest.raises(type(passing)) as caught, map_os_errors(to=HostError, what="x"):
        raise passing
    assert caught.value is passing
