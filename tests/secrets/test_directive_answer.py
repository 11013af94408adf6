"""SecretStore.read takes only the object it asked for (review A5 F3, the client side).

A program of the domain that is not the secret server (or a server that answers
wrongly) listens where the client connects, over a real Tao channel on 127.0.0.1,
and answers every Read with an object of its choosing: another epoch of the name
asked, or another name. The client used to return it as the one asked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import trio

from taonet import ProtocolError
from taonet.channel import TaoStream, serve_channels
from taonet.protected import ObjectId, SecretObject
from taonet.secrets import ReadRequest, connect, decode_request, request_body_limit
from taonet.secrets._protocol import encode_response
from taonet.wire import END_OF_STREAM, NEED_DATA, Envelope, Role
from tests.disclosure.test_peer import KEY, Net, key_object, net, nursery

__all__ = ["net", "nursery"]  # fixtures, imported for pytest


async def answering(
    nursery: trio.Nursery, net: Net, answer: Callable[[ReadRequest], SecretObject]
) -> tuple[str, int]:
    """A domain program that answers every Read with ``answer(request)``."""
    fake = net.program("not the secret server")

    async def handle(stream: TaoStream) -> None:
        envelope = Envelope(Role.SERVER, body_limit=request_body_limit, max_frame=1 << 20)
        while True:
            event = envelope.next_event()
            if event is NEED_DATA:
                envelope.receive_data(await stream.receive_some(65536))
                continue
            if event is END_OF_STREAM:
                return
            request = decode_request(event.op, event.body)
            assert isinstance(request, ReadRequest)
            body = encode_response(answer(request))
            await stream.send_all(b"".join(envelope.response(event.op, event.seq, body)))

    listeners = await nursery.start(
        functools.partial(serve_channels, handle, 0, fake.identity, revocations=net.crl)
    )
    return ("127.0.0.1", listeners[0].socket.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "substitute"),
    [
        ("another epoch", ObjectId(KEY.name, KEY.epoch + 1)),
        ("another name", ObjectId("/app/other-key", KEY.epoch)),
    ],
)
@pytest.mark.parametrize("with_directive", [True, False])
async def test_a_read_answered_with_another_object_is_refused(
    net: Net, nursery: trio.Nursery, case: str, substitute: ObjectId, with_directive: bool
) -> None:
    v2 = net.program("v2")
    with trio.fail_after(30):
        address = await answering(nursery, net, lambda request: key_object(substitute))
        async with connect(address, v2.identity, revocations=net.crl) as store:
            directive = net.directive(v2) if with_directive else None
            with pytest.raises(ProtocolError, match="answered a read of") as caught:
                await store.read(KEY.name, KEY.epoch, directive=directive)
    assert str(substitute) in str(caught.value), case


async def test_a_read_of_the_latest_epoch_takes_any_epoch_of_that_name_only(
    net: Net, nursery: trio.Nursery
) -> None:
    v2 = net.program("v2")
    latest = ObjectId(KEY.name, 9)
    with trio.fail_after(30):
        good = await answering(nursery, net, lambda request: key_object(latest))
        async with connect(good, v2.identity, revocations=net.crl) as store:
            assert (await store.read(KEY.name)).id == latest
            # The epoch asked is checked exactly, even on a well-behaved answer.
            assert (await store.read(KEY.name, 9)).id == latest
        other = await answering(nursery, net, lambda request: key_object(ObjectId("/x", 9)))
        async with connect(other, v2.identity, revocations=net.crl) as store:
            with pytest.raises(ProtocolError, match="answered a read of /app/content-key with"):
                await store.read(KEY.name)
