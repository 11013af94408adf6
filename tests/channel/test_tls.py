"""The lean TLS stream under TaoStream, checked on its own over memory streams."""

from __future__ import annotations

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
        left, right = trio.testing.memory_stream_pair()
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
