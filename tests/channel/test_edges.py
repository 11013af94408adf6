"""open_channel's failures of the outside world leave as taonet errors, the cause chained."""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from taonet import AuthenticationError, ProtocolError, TaoError
from taonet.channel import open_channel
from tests.channel.conftest import Programs


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connection_refused_is_a_protocol_error(programs: Programs, closed_port: int) -> None:
    identity = await programs.identity(2)
    with trio.fail_after(10), pytest.raises(ProtocolError) as caught:
        await open_channel("127.0.0.1", closed_port, identity)
    assert str(caught.value) == (
        f"cannot reach the channel server at 127.0.0.1:{closed_port}: Connection refused"
    )
    assert isinstance(caught.value.__cause__, OSError)
    assert not isinstance(caught.value, OSError)


async def test_unknown_host_name_is_a_protocol_error(programs: Programs) -> None:
    identity = await programs.identity(2)
    with trio.fail_after(30), pytest.raises(ProtocolError) as caught:
        await open_channel("no-such-host.invalid", 443, identity)
    assert "cannot reach the channel server at no-such-host.invalid:443: " in str(caught.value)
    assert isinstance(caught.value.__cause__, socket.gaierror)


async def test_handshake_timeout_is_a_protocol_error(
    programs: Programs, autojump_clock: trio.testing.MockClock
) -> None:
    identity = await programs.identity(2)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, never answers
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(60), pytest.raises(ProtocolError) as caught:
            await open_channel("127.0.0.1", port, identity, handshake_timeout=5)
    finally:
        for listener in listeners:
            await listener.aclose()
    assert str(caught.value) == (
        f"no channel handshake with 127.0.0.1:{port}: TLS handshake did not finish within 5 s"
    )
    assert isinstance(caught.value.__cause__, trio.TooSlowError)


async def test_a_server_that_accepts_and_closes_is_a_tao_error(
    programs: Programs, nursery: trio.Nursery
) -> None:
    identity = await programs.identity(2)

    async def slam(stream: trio.SocketStream) -> None:
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, slam, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10), pytest.raises(TaoError) as caught:
        await open_channel("127.0.0.1", port, identity)
    assert isinstance(caught.value, AuthenticationError)
    assert str(caught.value).startswith("TLS handshake failed: ")
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
