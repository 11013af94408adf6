"""The Tao RPC over a real socket pair: an error answer ends its own call only, names
that call, and an answer to another call breaks the channel."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from taonet import CodecError, HostError, ProtocolError, TaoError, auth
from taonet.hosts import SoftHost, SoftTao
from taonet.hosts._rpc import GET_RANDOM_BYTES, GET_TAO_NAME, RPCTao, serve_tao_rpc
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
    serialize,
)

TIMEOUT = 10


@pytest.fixture
def soft(make_host) -> SoftTao:  # type: ignore[no-untyped-def]
    host: SoftHost = make_host()
    return host.tao_for(host.name.extend(auth.PrinExt("Program", (auth.Bytes(b"\x01" * 32),))))


def socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of a real (unix) socket pair, as the host and its program hold them."""
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def receive(stream: trio.abc.Stream, envelope: Envelope) -> Request | Response | Signal:
    while (event := envelope.next_event()) is NEED_DATA:
        envelope.receive_data(await stream.receive_some())
    return event


async def test_an_error_answer_ends_its_call_only(soft: SoftTao) -> None:
    garbage = b"not a sealed blob"
    with pytest.raises(TaoError) as direct:
        await soft.unseal(garbage)
    program_end, host_end = socket_streams()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, host_end, soft)
            async with RPCTao.connect(program_end) as rpc:
                # Two calls in flight; the one that fails raises the host's class.
                results: dict[str, object] = {}

                async def unseal() -> None:
                    try:
                        await rpc.unseal(garbage)
                    except TaoError as exc:
                        results["unseal"] = exc

                async def random() -> None:
                    results["random"] = await rpc.get_random_bytes(16)

                async with trio.open_nursery() as calls:
                    calls.start_soon(unseal)
                    calls.start_soon(random)
                assert type(results["unseal"]) is type(direct.value)
                assert str(results["unseal"]) == str(direct.value)
                assert isinstance(results["random"], bytes)
                assert len(results["random"]) == 16
                # The channel goes on.
                assert not rpc.closed
                assert await rpc.get_tao_name() == await soft.get_tao_name()


@pytest.mark.parametrize("op", [GET_TAO_NAME, "Tao.NoSuchMethod"])
async def test_a_body_over_its_limit_is_answered_under_its_call(soft: SoftTao, op: str) -> None:
    # What a program that skips the client's checks sends: a header, then a body over
    # the method's limit. The host names that call in its answer, then closes.
    program_end, host_end = socket_streams()
    envelope = Envelope(Role.CLIENT, body_limit=1 << 20)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, host_end, soft)
            async with program_end:
                await program_end.send_all(b"".join(envelope.request(op, 41, b"\x00" * 1025)))
                answer = await receive(program_end, envelope)
                assert isinstance(answer, Response)
                assert (answer.op, answer.seq, answer.body) == (op, 41, b"")
                assert type(answer.error) is CodecError
                assert str(answer.error) == "frame of 1025 bytes is over the 1024-byte limit"
                assert await receive(program_end, envelope) is END_OF_STREAM


@asynccontextmanager
async def fake_host(
    script: Callable[[trio.SocketStream, Envelope], Awaitable[None]],
) -> AsyncIterator[RPCTao]:
    """An RPCTao whose host, at the other end of a real socket pair, runs ``script``."""
    program_end, host_end = socket_streams()
    async with trio.open_nursery() as nursery:

        async def host() -> None:
            async with host_end:
                await script(host_end, Envelope(Role.SERVER, body_limit=1 << 20))

        nursery.start_soon(host)
        async with RPCTao.connect(program_end) as rpc:
            yield rpc
        nursery.cancel_scope.cancel()


def header_frame(op: str, seq: int, error: str | None = None) -> bytes:
    header = message_class("RPCHeader")(op=op, seq=seq)
    if error is not None:
        header.error = error
    return encode_frame(serialize(header))


async def test_a_replayed_answer_breaks_the_channel() -> None:
    # The host answers the first call with an error, then answers the second call
    # with the first answer again.
    async def script(stream: trio.SocketStream, envelope: Envelope) -> None:
        first = await receive(stream, envelope)
        assert isinstance(first, Request)
        replay = b"".join(envelope.response(first.op, first.seq, error=HostError("no")))
        await stream.send_all(replay)
        second = await receive(stream, envelope)
        assert isinstance(second, Request)
        await stream.send_all(replay)
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(HostError, match=r"^no$"):
                await rpc.get_random_bytes(1)
            assert not rpc.closed  # an error answer ends its call only
            with pytest.raises(
                ProtocolError,
                match=r"answered call 2 \(Tao\.GetRandomBytes\) as call 1 .* nobody made",
            ):
                await rpc.get_random_bytes(1)
            assert rpc.closed
            with pytest.raises(ProtocolError):
                await rpc.get_tao_name()


async def test_a_wrong_answer_is_refused_on_its_header_alone() -> None:
    # A header for another call, announcing a body that never comes: the client does
    # not wait for that body to know the answer is not its own.
    async def script(stream: trio.SocketStream, envelope: Envelope) -> None:
        call = await receive(stream, envelope)
        assert isinstance(call, Request)
        await stream.send_all(header_frame(call.op, call.seq + 1) + struct.pack(">I", 1 << 20))
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(ProtocolError, match="nobody made"):
                await rpc.get_random_bytes(1)
            assert rpc.closed


async def test_an_error_under_another_op_breaks_the_channel() -> None:
    async def script(stream: trio.SocketStream, envelope: Envelope) -> None:
        call = await receive(stream, envelope)
        assert isinstance(call, Request)
        await stream.send_all(
            header_frame(GET_TAO_NAME, call.seq, "NotSupportedError: no") + encode_frame(b"")
        )
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(ProtocolError, match=rf"\({GET_RANDOM_BYTES}\) as 'Tao\.GetTao"):
                await rpc.get_random_bytes(1)
            assert rpc.closed
