"""The lean TLS stream under TaoStream, checked on its own over memory streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from taonet import certs
from taonet.channel._tls import TLSStream
from tests.channel.conftest import Programs


async def tls_pair(programs: Programs, *, clogged: bool = False) -> tuple[TLSStream, TLSStream]:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    if clogged:
        left, right = trio.testing.lockstep_stream_pair()
    else:
        left, right = trio.testing.memory_stream_pair()  # type: ignore[assignment]
    client = TLSStream(
        left, client_id.client_context(), server_side=False, server_hostname=certs.CHANNEL_HOSTNAME
    )
    server = TLSStream(right, server_id.server_context(), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_tls_stream_is_a_well_behaved_stream(programs: Programs) -> None:
    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(
            lambda: tls_pair(programs), lambda: tls_pair(programs, clogged=True)
        )


async def test_concurrent_send_and_receive_share_one_handshake(programs: Programs) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    left, right = trio.testing.memory_stream_pair()
    client = TLSStream(
        left, client_id.client_context(), server_side=False, server_hostname=certs.CHANNEL_HOSTNAME
    )
    server = TLSStream(right, server_id.server_context(), server_side=True)
    got: list[bytes] = []

    async def client_receives() -> None:
        got.append(bytes(await client.receive_some()))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # Neither side called do_handshake: send and receive both start it.
            nursery.start_soon(client_receives)
            nursery.start_soon(client.send_all, b"ping")
            assert await server.receive_some() == b"ping"
            await server.send_all(b"pong")
    assert got == [b"pong"]
    await client.aclose()
    await server.aclose()


async def test_truncation_without_close_notify_is_an_error(programs: Programs) -> None:
    client, server = await tls_pair(programs)
    with trio.fail_after(10):
        await server.send_all(b"partial")
        await server.transport.aclose()  # the connection drops; no close_notify
        assert await client.receive_some() == b"partial"
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
    await client.aclose()
