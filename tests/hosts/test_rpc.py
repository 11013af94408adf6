"""The Tao RPC: RPCTao against serve_tao_rpc over memory streams, and broken peers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from taonet import HostError, ProtocolError, auth
from taonet.attestation import validate
from taonet.channel import MessageStream
from taonet.hosts import SoftHost, SoftTao, Tao
from taonet.hosts._rpc import COUNTER_METHODS, METHODS, RPCTao, serve_tao_rpc
from taonet.wire import message_class, parse, serialize

TIMEOUT = 10


def program(host: SoftHost, tag: int) -> auth.Prin:
    return host.name.extend(auth.PrinExt("Program", (auth.Bytes(bytes([tag]) * 32),)))


@pytest.fixture
def host(make_host) -> SoftHost:  # type: ignore[no-untyped-def]
    h: SoftHost = make_host()
    return h


@pytest.fixture
def soft(host: SoftHost) -> SoftTao:
    return host.tao_for(program(host, 1))


@asynccontextmanager
async def rpc_pair(tao: Tao, **options: Any) -> AsyncIterator[RPCTao]:
    """An RPCTao served by ``tao`` over a memory stream pair."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_tao_rpc(server_stream, tao, **options))
        async with RPCTao.connect(client_stream) as rpc:
            yield rpc


@asynccontextmanager
async def fake_host(
    script: Callable[[MessageStream], Awaitable[None]], **options: Any
) -> AsyncIterator[RPCTao]:
    """An RPCTao whose host side runs ``script`` on the raw message stream."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = MessageStream(server_stream)

    async def run_script() -> None:
        try:
            await script(server)
        except trio.EndOfChannel:
            pass  # the client closed
        finally:
            await server.aclose()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_script)
            async with RPCTao.connect(client_stream, **options) as rpc:
                yield rpc
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def read_request(ms: MessageStream) -> tuple[Any, Any]:
    header = await ms.receive_proto("RPCHeader")
    body = await ms.receive_proto("RPCRequest")
    return header, body


async def answer(
    ms: MessageStream, op: str, seq: int, *, error: str | None = None, **fields: Any
) -> None:
    header = message_class("RPCHeader")(op=op, seq=seq)
    if error is not None:
        header.error = error
    await ms.send_proto(header)
    await ms.send_message(
        b"" if error is not None else serialize(message_class("RPCResponse")(**fields))
    )


async def raw_call(ms: MessageStream, op: str, seq: int, **fields: Any) -> tuple[Any, bytes]:
    await ms.send_proto(message_class("RPCHeader")(op=op, seq=seq))
    await ms.send_proto(message_class("RPCRequest")(**fields))
    header = await ms.receive_proto("RPCHeader")
    return header, await ms.receive_message()


# -- round trips against a SoftTao ---------------------------------------------------------


async def test_rpc_tao_is_a_tao_and_names_match(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            assert isinstance(rpc, Tao)
            assert await rpc.get_tao_name() == await soft.get_tao_name()


async def test_extend_then_name(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        before = await soft.get_tao_name()
        sub = auth.SubPrin((auth.PrinExt("Args", (auth.Str("--x"), auth.Int(-7))),))
        async with rpc_pair(soft) as rpc:
            await rpc.extend_tao_name(sub)
            name = await rpc.get_tao_name()
        assert name == before.extend(sub) == await soft.get_tao_name()


@pytest.mark.parametrize("policy", ["self", "few", "any"])
async def test_seal_by_rpc_unseal_directly_and_back(soft: SoftTao, policy: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            for data in (b"", b"x", bytes(range(256)) * 400):
                assert await soft.unseal(await rpc.seal(data, policy)) == (data, policy)
                assert await rpc.unseal(await soft.seal(data, policy)) == (data, policy)
            assert (await rpc.unseal(await rpc.seal(b"d")))[1] == "self"


@pytest.mark.parametrize("policy", ["self", "few", "any"])
async def test_shared_secret_matches(soft: SoftTao, policy: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            for n in (0, 1, 32, 1000):
                assert await rpc.get_shared_secret(n, policy) == await soft.get_shared_secret(
                    n, policy
                )
            assert await rpc.get_shared_secret(16) == await soft.get_shared_secret(16, "self")


async def test_random_bytes(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            assert await rpc.get_random_bytes(0) == b""
            a, b = await rpc.get_random_bytes(64), await rpc.get_random_bytes(64)
            assert len(a) == len(b) == 64
            assert a != b
            with pytest.raises(HostError, match="size"):
                await rpc.get_random_bytes(-1)


async def test_attest_validates(host: SoftHost, soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        name = await soft.get_tao_name()
        form = auth.Pred("Ready", (auth.Str("yes"), auth.Int(3)))
        async with rpc_pair(soft) as rpc:
            att = await rpc.attest(form)
            now = time.time_ns()
            proven = validate(att, now_ns=now)
            assert proven.speaker == name
            assert proven.message == form
            assert proven.signer == host.name
            assert proven.not_before is not None
            assert proven.not_after is not None
            assert proven.not_after - proven.not_before == 365 * 24 * 3600 * 10**9

            # Explicit issuer (a sub-principal) and nanosecond times travel intact.
            child = name.extend(auth.PrinExt("Worker", ()))
            t0, t1 = now - 10**9, now + 60 * 10**9
            att = await rpc.attest(form, issuer=child, time=t0, expiration=t1)
            proven = validate(att, now_ns=now)
            assert proven.speaker == child
            assert (proven.not_before, proven.not_after) == (t0, t1)

            with pytest.raises(HostError, match=r"not .* or one of its sub-principals"):
                await rpc.attest(form, issuer=program(host, 9))


async def test_concurrent_calls_get_their_own_answers(soft: SoftTao) -> None:
    results: dict[int, tuple[bytes, bytes, int]] = {}

    async def worker(rpc: RPCTao, i: int) -> None:
        data = i.to_bytes(4, "big") * (i + 1)
        sealed = await rpc.seal(data, "any" if i % 2 else "self")
        opened, _ = await rpc.unseal(sealed)
        rnd = await rpc.get_random_bytes(i)
        results[i] = (data, opened, len(rnd))

    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc, trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(worker, rpc, i)
    assert len(results) == 60
    for i, (data, opened, n) in results.items():
        assert opened == data
        assert n == i


async def test_responses_out_of_order_are_dispatched_by_seq() -> None:
    async def script(ms: MessageStream) -> None:
        first, _ = await read_request(ms)
        second, _ = await read_request(ms)
        await answer(ms, second.op, second.seq, data=b"B" * 2)
        await answer(ms, first.op, first.seq, data=b"A")

    results: dict[int, bytes] = {}

    async def call(rpc: RPCTao, n: int) -> None:
        results[n] = await rpc.get_random_bytes(n)

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc, trio.open_nursery() as nursery:
            nursery.start_soon(call, rpc, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, rpc, 2)
    assert results == {1: b"A", 2: b"BB"}


# -- errors --------------------------------------------------------------------------------


async def test_host_errors_propagate_and_channel_survives(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            with pytest.raises(HostError, match="unknown policy 'bogus'"):
                await rpc.seal(b"x", "bogus")
            with pytest.raises(HostError, match="unknown policy"):
                await rpc.get_shared_secret(8, "nobody")
            with pytest.raises(HostError, match="bad magic"):
                await rpc.unseal(b"not sealed at all")
            assert await rpc.get_tao_name() == await soft.get_tao_name()
            assert not rpc.closed


async def test_other_program_cannot_unseal_over_rpc(host: SoftHost, soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        sealed = await soft.seal(b"secret")
        async with rpc_pair(host.tao_for(program(host, 2))) as rpc:
            with pytest.raises(HostError, match="bound to another principal"):
                await rpc.unseal(sealed)


@pytest.mark.parametrize("op", sorted(COUNTER_METHODS))
async def test_counter_methods_are_not_supported(soft: SoftTao, op: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            with pytest.raises(HostError, match=r"^not supported by this host$"):
                await rpc._call(op, frozenset({"counter"}), label="c", counter=1)
            assert await rpc.get_random_bytes(3) != b""
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, soft)
            ms = MessageStream(client_stream)
            header, body = await raw_call(ms, op, 77, label="c", counter=1)
            assert (header.op, header.seq, header.error, body) == (
                op,
                77,
                "not supported by this host",
                b"",
            )
            await ms.aclose()


def test_method_names() -> None:
    assert len(METHODS) == 11
    assert all(m.startswith("Tao.") for m in METHODS)


async def test_error_body_is_dropped_and_next_call_works() -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        # An error answer with a (non-empty) body: the client drops the body.
        await ms.send_proto(message_class("RPCHeader")(op=header.op, seq=header.seq, error="nope"))
        await ms.send_message(b"\x0a\x01z")
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, data=b"ok")

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(HostError, match=r"^nope$"):
                await rpc.get_random_bytes(2)
            assert await rpc.get_random_bytes(2) == b"ok"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "should hold data, it holds no fields"),
        ({"data": b"x" * 4, "policy": "self"}, "should hold data, it holds data, policy"),
        ({"data": b"x"}, "asked for 4 bytes, the host returned 1"),
    ],
)
async def test_response_field_presence_is_checked(fields: dict[str, Any], message: str) -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, **fields)
        await ms.receive_message()  # keep the channel open

    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match=message):
        async with fake_host(script) as rpc:
            await rpc.get_random_bytes(4)


async def test_unseal_needs_data_and_policy() -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, data=b"plain")
        await ms.receive_message()

    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match="data, policy"):
        async with fake_host(script) as rpc:
            await rpc.unseal(b"blob")


async def test_bad_payload_in_response_is_a_protocol_error() -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, data=b"\xff\xff")
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, data=b"not an attestation")
        await ms.receive_message()

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(ProtocolError, match="bad principal"):
                await rpc.get_tao_name()
            with pytest.raises(ProtocolError, match="bad attestation"):
                await rpc.attest(auth.Const(True))


async def test_unknown_seq_fails_every_pending_call() -> None:
    async def script(ms: MessageStream) -> None:
        await read_request(ms)
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq + 1000, data=b"x")
        await ms.receive_message()

    errors: list[BaseException] = []

    async def call(rpc: RPCTao) -> None:
        try:
            await rpc.get_random_bytes(1)
        except ProtocolError as exc:
            errors.append(exc)

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, rpc)
                nursery.start_soon(call, rpc)
            assert rpc.closed
            with pytest.raises(ProtocolError, match="nobody made"):
                await rpc.get_tao_name()
    assert len(errors) == 2
    assert all("nobody made" in str(e) for e in errors)


async def test_wrong_op_in_response_fails() -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, "Tao.Seal", header.seq, data=b"x")
        await ms.receive_message()

    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match=r"as 'Tao\.Seal'"):
        async with fake_host(script) as rpc:
            await rpc.get_random_bytes(1)


async def test_malformed_response_header_fails() -> None:
    async def script(ms: MessageStream) -> None:
        await read_request(ms)
        await ms.send_message(b"\xff\xff\xff")
        await ms.send_message(b"")
        await ms.receive_message()

    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match="malformed protobuf"):
        async with fake_host(script) as rpc:
            await rpc.get_random_bytes(1)


async def test_eof_mid_call_fails_the_pending_call() -> None:
    async def script(ms: MessageStream) -> None:
        await read_request(ms)  # then close without answering

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(HostError, match="closed the RPC channel"):
                await rpc.seal(b"data")
            with pytest.raises(HostError, match="closed the RPC channel"):
                await rpc.get_tao_name()


async def test_eof_between_header_and_body_is_a_protocol_error() -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await ms.send_proto(message_class("RPCHeader")(op=header.op, seq=header.seq))

    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match="between header and body"):
        async with fake_host(script) as rpc:
            await rpc.get_tao_name()


async def test_cancelled_call_does_not_break_the_channel(soft: SoftTao) -> None:
    release = trio.Event()

    async def script(ms: MessageStream) -> None:
        first, _ = await read_request(ms)
        await release.wait()
        await answer(ms, first.op, first.seq, data=b"late")  # its caller is gone: dropped
        second, _ = await read_request(ms)
        await answer(ms, second.op, second.seq, data=b"ok")
        await ms.receive_message()

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with trio.move_on_after(0.05):
                await rpc.get_random_bytes(4)
            release.set()
            assert await rpc.get_random_bytes(2) == b"ok"
            assert not rpc.closed


async def test_closed_client_refuses_calls(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            await rpc.aclose()
            with pytest.raises(HostError, match="closed"):
                await rpc.get_tao_name()


async def test_unstarted_client_refuses_calls() -> None:
    client_stream, _ = trio.testing.memory_stream_pair()
    with pytest.raises(RuntimeError, match=r"RPCTao\.run"):
        await RPCTao(client_stream).get_tao_name()


# -- the server under attack ---------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [b"\xff\xff\xff", b""],  # garbage header
        [serialize(message_class("RPCHeader")(op="Tao.Nope", seq=1)), b""],  # unknown op
        [serialize(message_class("RPCHeader")(op="Tao.Seal", seq=1)), b"\xff\x01"],  # bad body
        [b"\x0a\x08Tao.Seal", b""],  # header without its required seq
        [serialize(message_class("RPCHeader")(op="Tao.Seal", seq=1))],  # EOF after header
    ],
)
async def test_malformed_requests_close_only_that_channel(
    soft: SoftTao, frames: list[bytes]
) -> None:
    with trio.fail_after(TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with rpc_pair(soft) as good, trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, soft)
            bad = MessageStream(client_stream)
            for frame in frames:
                await bad.send_message(frame)
            if len(frames) == 1:
                await client_stream.send_stream.aclose()
            # The server closes its side: the bad client sees end of channel.
            with pytest.raises(trio.EndOfChannel):
                await bad.receive_message()
            await bad.aclose()
            # Meanwhile the other pair works.
            assert await good.get_tao_name() == await soft.get_tao_name()
            data = await good.seal(b"still fine")
            assert await soft.unseal(data) == (b"still fine", "self")


async def test_request_payload_errors_are_answered(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, soft)
            ms = MessageStream(client_stream)
            header, body = await raw_call(ms, "Tao.Seal", 1)
            assert header.error == "Tao.Seal: the request needs data"
            assert body == b""
            header, body = await raw_call(ms, "Tao.ExtendTaoName", 2, data=b"\x99")
            assert header.HasField("error")
            assert body == b""
            header, body = await raw_call(ms, "Tao.GetRandomBytes", 3, size=5)
            assert not header.HasField("error")
            assert (header.op, header.seq) == (
                "Tao.GetRandomBytes",
                3,
            )
            assert len(parse("RPCResponse", body).data) == 5
            await ms.aclose()


async def test_oversized_frames_are_refused(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        # The client refuses to send a request over its frame limit (nothing is sent).
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_tao_rpc(server_stream, soft, max_frame=4096))
            async with RPCTao.connect(client_stream, max_frame=4096) as rpc:
                with pytest.raises(HostError, match="over the 4096-byte frame limit"):
                    await rpc.seal(b"x" * 5000)
                assert await rpc.get_random_bytes(8) != b""
                # A response over the server's limit becomes an error answer.
                with pytest.raises(HostError, match="over the 4096-byte limit"):
                    await rpc.get_random_bytes(4094)
                assert not rpc.closed

        # The server closes a channel whose client sends a frame over its limit.
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_tao_rpc(server_stream, soft, max_frame=4096))
            big = MessageStream(client_stream, max_frame=10_000)
            await big.send_proto(message_class("RPCHeader")(op="Tao.Seal", seq=1))
            await big.send_proto(message_class("RPCRequest")(data=b"x" * 5000))
            with pytest.raises(trio.EndOfChannel):
                await big.receive_message()
            await big.aclose()


async def test_oversized_response_fails_the_client() -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, data=b"x" * 5000)
        await ms.receive_message()

    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match="bad frame"):
        async with fake_host(script, max_frame=4096) as rpc:
            await rpc.get_random_bytes(8)
