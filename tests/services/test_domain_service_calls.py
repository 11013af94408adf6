"""The domain service protocol over real TCP (Tao channels on 127.0.0.1): an answer
names the call it ends, a refusal leaves the connection usable, and the client
refuses an answer to another call."""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from taonet import CodecError, NotSupportedError, ProtocolError, TaoError
from taonet.channel import ChannelIdentity, TaoStream, open_channel, serve_channels
from taonet.provision import ERROR_BAD_REQUEST, OP_CERTIFY, OP_GET_CRL, fetch_crl
from taonet.wire import (
    END_OF_STREAM,
    NEED_DATA,
    Envelope,
    Request,
    Response,
    Role,
    Signal,
    encode_frame,
    message_class,
    parse,
    serialize,
)
from taonet_services.domain_service import MAX_REQUEST, DomainService
from tests.conftest import PASSWORD, MakeDomain
from tests.services.test_domain_service import Service, svc  # noqa: F401 (a fixture)

Handler = Callable[[TaoStream], Awaitable[None]]


async def receive(stream: trio.abc.Stream, envelope: Envelope) -> Request | Response | Signal:
    while (event := envelope.next_event()) is NEED_DATA:
        envelope.receive_data(await stream.receive_some())
    return event


async def test_a_refusal_leaves_the_connection_usable_and_a_broken_call_is_named(
    svc: Service,  # noqa: F811 (the fixture imported above)
) -> None:
    identity = ChannelIdentity.anonymous(svc.domain.policy_cert)
    envelope = Envelope(Role.CLIENT, body_limit=1 << 20)
    with trio.fail_after(15):
        stream = await open_channel("127.0.0.1", svc.port, identity)
        async with stream:
            # Call 1: an incomplete request, refused in the answer's body.
            incomplete = message_class("DomainServiceRequest")(kind="certify")
            await stream.send_all(b"".join(envelope.request(OP_CERTIFY, 1, serialize(incomplete))))
            refused = await receive(stream, envelope)
            assert isinstance(refused, Response)
            assert (refused.op, refused.seq, refused.error) == (OP_CERTIFY, 1, None)
            body = parse("DomainServiceResponse", refused.body)
            assert body.error_code == ERROR_BAD_REQUEST
            # Call 2, on the same connection: the CRL.
            crl = message_class("DomainServiceRequest")(kind="crl")
            await stream.send_all(b"".join(envelope.request(OP_GET_CRL, 2, serialize(crl))))
            answered = await receive(stream, envelope)
            assert isinstance(answered, Response)
            assert (answered.op, answered.seq, answered.error) == (OP_GET_CRL, 2, None)
            assert parse("DomainServiceResponse", answered.body).HasField("crl")
            # Call 3: a body over the limit, refused on its announced length. The answer
            # names call 3 (not "", 0), then the service hangs up.
            envelope.request(OP_CERTIFY, 3, b"")  # its header, sent below with the length
            header = serialize(message_class("RPCHeader")(op=OP_CERTIFY, seq=3))
            await stream.send_all(encode_frame(header) + struct.pack(">I", MAX_REQUEST + 1))
            failed = await receive(stream, envelope)
            assert isinstance(failed, Response)
            assert (failed.op, failed.seq, failed.body) == (OP_CERTIFY, 3, b"")
            assert type(failed.error) is CodecError
            assert f"{MAX_REQUEST + 1} bytes is over the {MAX_REQUEST}-byte limit" in str(
                failed.error
            )
            # Then it hangs up (without a TLS close_notify, so either way).
            with contextlib.suppress(trio.BrokenResourceError):
                assert await receive(stream, envelope) is END_OF_STREAM


@pytest.fixture
async def fake_service(
    make_domain: MakeDomain,
) -> AsyncIterator[tuple[bytes, Callable[[Handler], Awaitable[int]]]]:
    """Serve a handler under a real domain service's identity: (policy cert, serve)."""
    domain = make_domain(guard="Liberal")
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:

            async def serve(handler: Handler) -> int:
                listeners = await nursery.start(
                    functools.partial(
                        serve_channels, handler, 0, service.identity, allow_anonymous=True
                    )
                )
                port: int = listeners[0].socket.getsockname()[1]
                return port

            yield domain.policy_cert, serve
            nursery.cancel_scope.cancel()


def answering(op: str | None, seq: int | None, error: TaoError) -> Handler:
    """A service that answers the first request with ``error`` under ``op`` and ``seq``
    (None: the request's own)."""

    async def handle(stream: TaoStream) -> None:
        envelope = Envelope(Role.SERVER, body_limit=1 << 20)
        request = await receive(stream, envelope)
        assert isinstance(request, Request)
        answer = envelope.response(
            request.op if op is None else op,
            request.seq if seq is None else seq,
            error=error,
        )
        await stream.send_all(b"".join(answer))
        await receive(stream, envelope)  # until the client hangs up

    return handle


@pytest.mark.parametrize(
    ("op", "seq", "match"),
    [
        # What the service used to send for a request it could not read: no call named.
        ("", 0, r"answered call 1 \(DomainService\.GetCRL\) as call 0 \(''\), which nobody"),
        (None, 2, "as call 2"),
        (OP_CERTIFY, None, r"answered call 1 \(DomainService\.GetCRL\) as 'DomainService\.Cer"),
    ],
    ids=["no_call_named", "wrong_seq", "wrong_op"],
)
async def test_the_client_refuses_an_error_for_another_call(
    fake_service: tuple[bytes, Callable[[Handler], Awaitable[int]]],
    op: str | None,
    seq: int | None,
    match: str,
) -> None:
    policy_cert, serve = fake_service
    port = await serve(answering(op, seq, CodecError("not this call's")))
    with trio.fail_after(15), pytest.raises(ProtocolError, match=match):
        await fetch_crl("127.0.0.1", port, policy_cert)


async def test_the_client_raises_the_error_of_its_own_call(
    fake_service: tuple[bytes, Callable[[Handler], Awaitable[int]]],
) -> None:
    policy_cert, serve = fake_service
    port = await serve(answering(None, None, NotSupportedError("no CRL here")))
    with trio.fail_after(15), pytest.raises(NotSupportedError, match=r"^no CRL here$"):
        await fetch_crl("127.0.0.1", port, policy_cert)
