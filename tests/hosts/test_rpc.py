"""The Tao RPC: RPCTao against serve_tao_rpc over memory streams, and broken peers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from taonet import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    NotSupportedError,
    ProtocolError,
    TaoError,
    auth,
)
from taonet.attestation import UNROOTED, validate
from taonet.channel import MessageStream
from taonet.hosts import SoftHost, SoftTao, Tao
from taonet.hosts._rpc import (
    ATTEST,
    COUNTER_METHODS,
    DEFAULT_RPC_MAX_FRAME,
    GET_COUNTER,
    GET_RANDOM_BYTES,
    GET_SHARED_SECRET,
    GET_TAO_NAME,
    INIT_COUNTER,
    MAX_REQUEST_HEADER,
    METHODS,
    REQUEST_LIMITS,
    ROLLBACK_PROTECTED_SEAL,
    SEAL,
    ByteBudget,
    RPCTao,
    serve_tao_rpc,
)
from taonet.hosts._tao import MAX_SEALED_BYTES
from taonet.wire import message_class, parse, serialize
from tests.tao_doubles import ForwardingTao

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
            proven = validate(att, now_ns=now, policy_cert=UNROOTED)
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
            proven = validate(att, now_ns=now, policy_cert=UNROOTED)
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


class NoCounters(ForwardingTao):
    """A real Tao without counters: the seven basic methods of a SoftTao, nothing more."""


async def test_a_tao_without_counters_says_so(soft: SoftTao) -> None:
    tao = NoCounters(soft)
    with trio.fail_after(TIMEOUT):
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: tao.init_counter("c", 1),
            lambda: tao.get_counter("c"),
            lambda: tao.rollback_protected_seal("c", b"x"),
            lambda: tao.rollback_protected_unseal(b"x"),
        ]
        for call in calls:
            with pytest.raises(NotSupportedError, match=r"^not supported by this host$"):
                await call()
        async with rpc_pair(tao) as rpc:
            # Over the wire the client gets the class, not just the text: a stacked
            # host tells "no counters" from any other refusal by it.
            remote: list[Callable[[], Awaitable[object]]] = [
                lambda: rpc.init_counter("c", 1),
                lambda: rpc.get_counter("c"),
                lambda: rpc.rollback_protected_seal("c", b"data"),
                lambda: rpc.rollback_protected_unseal(b"x"),
            ]
            for call in remote:
                with pytest.raises(NotSupportedError, match=r"^not supported by this host$"):
                    await call()
            assert await rpc.get_random_bytes(3) != b""
            assert not rpc.closed


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        ("Tao.InitCounter", {"label": "c", "counter": 1}),
        ("Tao.GetCounter", {"label": "c"}),
        ("Tao.RollbackProtectedSeal", {"label": "c", "data": b"x", "policy": "self"}),
        ("Tao.RollbackProtectedUnseal", {"data": b"x"}),
    ],
)
async def test_counter_methods_of_a_tao_without_counters_on_the_wire(
    soft: SoftTao, op: str, fields: dict[str, Any]
) -> None:
    assert op in COUNTER_METHODS
    with trio.fail_after(TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, NoCounters(soft))
            ms = MessageStream(client_stream)
            header, body = await raw_call(ms, op, 77, **fields)
            assert (header.op, header.seq, header.error, body) == (
                op,
                77,
                "NotSupportedError: not supported by this host",
                b"",
            )
            await ms.aclose()


class Refusing(NoCounters):
    """A Tao whose get_random_bytes raises what it is told to."""

    def __init__(self, inner: SoftTao) -> None:
        super().__init__(inner)
        self.error: TaoError = HostError("unset")

    async def get_random_bytes(self, n: int) -> bytes:
        raise self.error


class _OwnAuthorizationError(AuthorizationError):
    """A subclass the wire does not name: it travels as its nearest kind."""


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NotSupportedError("not supported by this host"), NotSupportedError),
        (HostError("the TPM is busy"), HostError),
        (CodecError("bad subprincipal"), CodecError),
        (AuthenticationError("expired"), AuthenticationError),
        (AuthorizationError("the guard said no"), AuthorizationError),
        (_OwnAuthorizationError("the guard said no"), AuthorizationError),
        (ConfigError("no domain"), ConfigError),
        (ProtocolError("odd"), ProtocolError),
        # Text that looks like another kind does not change the class.
        (HostError("NotSupportedError: not supported by this host"), HostError),
    ],
)
async def test_the_client_raises_the_class_the_host_raised(
    soft: SoftTao, error: TaoError, kind: type[TaoError]
) -> None:
    tao = Refusing(soft)
    tao.error = error
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(tao) as rpc:
            with pytest.raises(TaoError) as caught:
                await rpc.get_random_bytes(4)
            assert type(caught.value) is kind
            assert str(caught.value) == str(error)
            assert not rpc.closed  # an error answer leaves the channel usable
            assert await rpc.get_tao_name() == await soft.get_tao_name()


async def test_an_error_without_a_kind_is_a_host_error(soft: SoftTao) -> None:
    # The original CloudProxy host puts bare text in the error field.
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, error="not supported by this host")
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, error="NotSupportedError: not supported")

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            with pytest.raises(HostError) as caught:
                await rpc.get_counter("c")
            # The old text is not taken for the kind: only the prefix names it.
            assert type(caught.value) is HostError
            assert str(caught.value) == "not supported by this host"
            with pytest.raises(NotSupportedError, match=r"^not supported$"):
                await rpc.get_counter("c")


# -- counters over the RPC -----------------------------------------------------------------


async def test_counters_end_to_end(host: SoftHost, soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            with pytest.raises(HostError, match="no counter 'c'"):
                await rpc.get_counter("c")
            await rpc.init_counter("c", 5)
            assert await rpc.get_counter("c") == 5
            assert await soft.get_counter("c") == 5
            await rpc.init_counter("c", 5)  # equal: a no-op
            with pytest.raises(HostError, match="only increase"):
                await rpc.init_counter("c", 4)
            assert await rpc.get_counter("c") == 5

            first = await rpc.rollback_protected_seal("c", b"one")
            assert await rpc.get_counter("c") == 6
            assert await rpc.rollback_protected_unseal(first) == (b"one", "self")
            assert await soft.rollback_protected_unseal(first) == (b"one", "self")
            second = await soft.rollback_protected_seal("c", b"two", "few")
            assert await rpc.rollback_protected_unseal(second) == (b"two", "few")
            with pytest.raises(HostError, match=r"rollback detected.*counter 6.*now 7"):
                await rpc.rollback_protected_unseal(first)
            assert not rpc.closed

        # Another program's blob is refused over the RPC too.
        async with rpc_pair(host.tao_for(program(host, 2))) as other:
            with pytest.raises(HostError, match="bound to another principal"):
                await other.rollback_protected_unseal(second)
            with pytest.raises(HostError, match="no counter 'c'"):
                await other.get_counter("c")


async def test_counter_arguments_are_checked_by_the_client() -> None:
    async def script(ms: MessageStream) -> None:
        await ms.receive_message()  # nothing is ever sent

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            for bad_label in ("", "x" * 257, b"c"):
                with pytest.raises(HostError, match="label"):
                    await rpc.init_counter(bad_label, 1)  # type: ignore[arg-type]
                with pytest.raises(HostError, match="label"):
                    await rpc.get_counter(bad_label)  # type: ignore[arg-type]
                with pytest.raises(HostError, match="label"):
                    await rpc.rollback_protected_seal(bad_label, b"x")  # type: ignore[arg-type]
            for bad_counter in (-1, 2**63, True, 1.0):
                with pytest.raises(HostError, match="counter must be an integer"):
                    await rpc.init_counter("c", bad_counter)  # type: ignore[arg-type]
            with pytest.raises(HostError, match="policy must be a string"):
                await rpc.rollback_protected_seal("c", b"x", None)  # type: ignore[arg-type]
            assert not rpc.closed


async def test_counter_requests_are_checked_by_the_server(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, soft)
            ms = MessageStream(client_stream)
            cases: list[tuple[str, dict[str, Any], str]] = [
                ("Tao.InitCounter", {"label": "c"}, "Tao.InitCounter: the request needs counter"),
                ("Tao.InitCounter", {"counter": 1}, "Tao.InitCounter: the request needs label"),
                ("Tao.InitCounter", {"label": "c", "counter": -1}, "counter must be an integer"),
                ("Tao.InitCounter", {"label": "", "counter": 1}, "1 to 256 bytes"),
                ("Tao.GetCounter", {"label": "é" * 129}, "got 258 bytes"),
                ("Tao.GetCounter", {}, "Tao.GetCounter: the request needs label"),
                ("Tao.RollbackProtectedSeal", {"label": "c"}, "needs data"),
                ("Tao.RollbackProtectedSeal", {"data": b"x"}, "needs label"),
                (
                    "Tao.RollbackProtectedSeal",
                    {"label": "c", "data": b"x", "policy": "x"},
                    "policy",
                ),
                ("Tao.RollbackProtectedUnseal", {}, "needs data"),
                ("Tao.RollbackProtectedUnseal", {"data": b"junk"}, "bad magic"),
            ]
            for seq, (op, fields, message) in enumerate(cases, 1):
                header, body = await raw_call(ms, op, seq, **fields)
                assert message in header.error, (op, fields, header.error)
                assert body == b""
            # A label that is not UTF-8 on the wire (proto2 strings are not checked).
            await ms.send_proto(message_class("RPCHeader")(op="Tao.GetCounter", seq=99))
            await ms.send_message(b"\x3a\x02\xff\xfe")
            header = await ms.receive_proto("RPCHeader")
            assert "label must be a string" in header.error
            assert await ms.receive_message() == b""
            # None of that created or moved a counter; the channel still answers.
            with pytest.raises(HostError, match="no counter"):
                await soft.get_counter("c")
            header, body = await raw_call(ms, "Tao.GetCounter", 100, label="é" * 128)
            assert "no counter" in header.error
            await ms.aclose()


@pytest.mark.parametrize(
    ("call", "fields", "message"),
    [
        ("init", {"counter": 1}, "should hold no fields, it holds counter"),
        ("get", {}, "should hold counter, it holds no fields"),
        ("get", {"counter": 1, "data": b"x"}, "should hold counter, it holds counter, data"),
        ("get", {"counter": -3}, "negative counter"),
        ("seal", {"data": b"x", "counter": 1}, "should hold data, it holds counter, data"),
        ("unseal", {"data": b"x"}, "should hold data, policy, it holds data"),
        ("unseal", {"data": b"x", "policy": "self", "counter": 2}, "it holds counter, data"),
    ],
)
async def test_counter_responses_must_hold_exactly_their_fields(
    call: str, fields: dict[str, Any], message: str
) -> None:
    async def script(ms: MessageStream) -> None:
        header, _ = await read_request(ms)
        await answer(ms, header.op, header.seq, **fields)
        await ms.receive_message()  # keep the channel open

    calls: dict[str, Callable[[RPCTao], Awaitable[object]]] = {
        "init": lambda rpc: rpc.init_counter("c", 1),
        "get": lambda rpc: rpc.get_counter("c"),
        "seal": lambda rpc: rpc.rollback_protected_seal("c", b"x"),
        "unseal": lambda rpc: rpc.rollback_protected_unseal(b"x"),
    }
    with trio.fail_after(TIMEOUT), pytest.raises(ProtocolError, match=message):
        async with fake_host(script) as rpc:
            await calls[call](rpc)


async def test_counter_requests_carry_the_wire_fields() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def script(ms: MessageStream) -> None:
        replies: list[dict[str, Any]] = [
            {},
            {"counter": 9},
            {"data": b"blob"},
            {"data": b"plain", "policy": "few"},
        ]
        for reply in replies:
            header, body = await read_request(ms)
            seen.append((header.op, {f.name: v for f, v in body.ListFields()}))
            await answer(ms, header.op, header.seq, **reply)
        await ms.receive_message()

    with trio.fail_after(TIMEOUT):
        async with fake_host(script) as rpc:
            await rpc.init_counter("lbl", 3)
            assert await rpc.get_counter("lbl") == 9
            assert await rpc.rollback_protected_seal("lbl", b"d", "few") == b"blob"
            assert await rpc.rollback_protected_unseal(b"blob") == (b"plain", "few")
    assert seen == [
        ("Tao.InitCounter", {"label": "lbl", "counter": 3}),
        ("Tao.GetCounter", {"label": "lbl"}),
        ("Tao.RollbackProtectedSeal", {"label": "lbl", "data": b"d", "policy": "few"}),
        ("Tao.RollbackProtectedUnseal", {"data": b"blob"}),
    ]


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

    with (
        trio.fail_after(TIMEOUT),
        pytest.raises(ProtocolError, match="between the header and the body"),
    ):
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
    ("frames", "answered"),
    [
        ([b"\xff\xff\xff", b""], None),  # garbage header
        ([b"\x0a\x08Tao.Seal", b""], None),  # header without its required seq
        ([b"\x0a\x08Tao.Seal" + b"\x10\x01" + b"\x00" * 5000, b""], None),  # header over 4 KiB
        # A body over its method's limit: answered under the call's op and seq, then closed.
        (
            [serialize(message_class("RPCHeader")(op="Tao.GetTaoName", seq=4)), b"\x00" * 1025],
            ("Tao.GetTaoName", 4),
        ),
        (
            [serialize(message_class("RPCHeader")(op="Tao.Nope", seq=9)), b"\x00" * 1025],
            ("Tao.Nope", 9),
        ),
        ([serialize(message_class("RPCHeader")(op="Tao.Seal", seq=1))], None),  # EOF after header
    ],
    ids=[
        "garbage_header",
        "header_without_seq",
        "header_over_limit",
        "body_over_limit",
        "unknown_method_body_over_limit",
        "eof_after_header",
    ],
)
async def test_malformed_requests_close_only_that_channel(
    soft: SoftTao, frames: list[bytes], answered: tuple[str, int] | None
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
            if answered is not None:
                # The call hears why it failed, under its own op and seq.
                header = parse("RPCHeader", await bad.receive_message())
                assert (header.op, header.seq) == answered
                assert header.error.startswith("CodecError: frame of 1025 bytes is over the ")
                assert await bad.receive_message() == b""
            # The server closes its side: the bad client sees end of channel.
            with pytest.raises(trio.EndOfChannel):
                await bad.receive_message()
            await bad.aclose()
            # Meanwhile the other pair works.
            assert await good.get_tao_name() == await soft.get_tao_name()
            data = await good.seal(b"still fine")
            assert await soft.unseal(data) == (b"still fine", "self")


async def test_unknown_methods_and_bad_bodies_are_answered_like_the_original(
    soft: SoftTao,
) -> None:
    # The original's protorpc answers these with an error and keeps reading: the
    # frames are intact, so the channel is too.
    with trio.fail_after(TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, soft)
            ms = MessageStream(client_stream)
            await ms.send_proto(message_class("RPCHeader")(op="Tao.Nope", seq=7))
            await ms.send_message(b"\x00" * 1024)
            header = await ms.receive_proto("RPCHeader")
            assert (header.op, header.seq) == ("Tao.Nope", 7)
            assert header.error == "ProtocolError: unknown Tao RPC method 'Tao.Nope'"
            assert await ms.receive_message() == b""
            await ms.send_proto(message_class("RPCHeader")(op="Tao.Seal", seq=8))
            await ms.send_message(b"\xff\x01")
            header = await ms.receive_proto("RPCHeader")
            assert header.seq == 8
            assert "malformed protobuf" in header.error
            assert await ms.receive_message() == b""
            header, body = await raw_call(ms, "Tao.GetRandomBytes", 9, size=4)
            assert not header.HasField("error")
            assert len(parse("RPCResponse", body).data) == 4
            await ms.aclose()


async def test_request_payload_errors_are_answered(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, soft)
            ms = MessageStream(client_stream)
            header, body = await raw_call(ms, "Tao.Seal", 1)
            assert header.error == "HostError: Tao.Seal: the request needs data"
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
            header = parse("RPCHeader", await big.receive_message())  # why, for that call
            assert (header.op, header.seq) == ("Tao.Seal", 1)
            assert "over the 4096-byte limit" in header.error
            assert await big.receive_message() == b""
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


class _Buggy(NoCounters):
    """A Tao with a bug: one method raises something that is not a TaoError."""

    async def get_random_bytes(self, n: int) -> bytes:
        raise ValueError("a bug")


async def test_a_bug_in_the_tao_is_an_error_answer_not_a_dead_host(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(_Buggy(soft)) as rpc:
            with pytest.raises(HostError, match=r"internal error in the host \(ValueError\)"):
                await rpc.get_random_bytes(4)
            assert await rpc.get_tao_name() == await soft.get_tao_name()
            assert not rpc.closed


# -- limits on what one program can make its host hold ----------------------------------


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _header(op: str, seq: int = 1) -> bytes:
    return serialize(message_class("RPCHeader")(op=op, seq=seq))


def test_each_method_has_a_body_limit_under_the_frame_ceiling() -> None:
    assert set(REQUEST_LIMITS) == METHODS
    for op in (GET_TAO_NAME, GET_RANDOM_BYTES, GET_SHARED_SECRET, INIT_COUNTER, GET_COUNTER):
        assert REQUEST_LIMITS[op] <= 1024
    assert REQUEST_LIMITS[ATTEST] <= 64 * 1024
    assert max(REQUEST_LIMITS.values()) < DEFAULT_RPC_MAX_FRAME
    assert MAX_REQUEST_HEADER == 4096
    # A maximal sealing request still fits its method's limit.
    body = serialize(
        message_class("RPCRequest")(
            data=b"x" * MAX_SEALED_BYTES, label="l" * 256, policy="self", counter=2**63 - 1
        )
    )
    assert len(body) <= REQUEST_LIMITS[ROLLBACK_PROTECTED_SEAL]


@pytest.mark.parametrize(
    ("first", "what"),
    [
        (b"\x00\x00", "two bytes of a header frame's length"),
        (_frame(_header("Tao.Seal"))[:9], "part of a header frame"),
        (_frame(_header("Tao.Seal")), "a header frame and no body"),
        (_frame(_header("Tao.Seal")) + (1000).to_bytes(4, "big") + b"x" * 999, "a body short"),
    ],
)
async def test_a_request_that_stalls_is_dropped_after_the_timeout(
    soft: SoftTao, autojump_clock: trio.testing.MockClock, first: bytes, what: str
) -> None:
    with trio.fail_after(100):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def serve() -> None:
                await serve_tao_rpc(server_stream, soft, request_timeout=5)
                done.set()

            nursery.start_soon(serve)
            start = trio.current_time()
            await client_stream.send_all(first)
            await done.wait()
            # Dropped once the request is overdue, not before (the whole request
            # has the timeout from its first byte).
            assert 5 <= trio.current_time() - start <= 6, what
            assert await client_stream.receive_some(100) == b""


async def test_an_idle_channel_is_not_a_stalled_request(
    soft: SoftTao, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10_000):
        async with rpc_pair(soft, request_timeout=5) as rpc:
            await trio.sleep(1000)
            assert await rpc.get_tao_name() == await soft.get_tao_name()
            await trio.sleep(1000)
            assert len(await rpc.get_random_bytes(3)) == 3


async def test_an_answer_the_program_does_not_take_is_dropped(
    soft: SoftTao, autojump_clock: trio.testing.MockClock
) -> None:
    # Lockstep streams: a send waits until the other side receives, as with a full pipe.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def serve() -> None:
                await serve_tao_rpc(server_stream, soft, request_timeout=5)
                done.set()

            nursery.start_soon(serve)
            body = serialize(message_class("RPCRequest")(size=1 << 20))
            await client_stream.send_all(_frame(_header(GET_RANDOM_BYTES)) + _frame(body))
            start = trio.current_time()
            await done.wait()  # never reading the megabyte
            assert 5 <= trio.current_time() - start <= 6
            # The channel is closed: the rest of the answer never comes.
            received = b""
            while chunk := await client_stream.receive_some(1 << 20):
                received += chunk
            assert len(received) < 1 << 20


async def test_the_client_refuses_a_request_over_its_methods_limit(soft: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        async with rpc_pair(soft) as rpc:
            huge = auth.Pred("Big", (auth.Bytes(b"x" * (64 * 1024)),))
            with pytest.raises(HostError, match="limit for this method"):
                await rpc.attest(huge)
            with pytest.raises(HostError, match="limit for this method"):
                await rpc.seal(b"x" * (MAX_SEALED_BYTES + 4096))
            assert not rpc.closed
            assert await rpc.get_tao_name() == await soft.get_tao_name()


async def test_a_budget_makes_large_requests_wait_their_turn(
    soft: SoftTao, autojump_clock: trio.testing.MockClock
) -> None:
    budget = ByteBudget(300_000)
    size = 200_000
    seal_body = serialize(message_class("RPCRequest")(data=b"s" * size, policy="self"))
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            staller, staller_server = trio.testing.memory_stream_pair()
            stall_done = trio.Event()

            async def serve_staller() -> None:
                await serve_tao_rpc(staller_server, soft, request_timeout=5, budget=budget)
                stall_done.set()

            nursery.start_soon(serve_staller)
            # One program announces a large Seal and stalls one byte short: it holds
            # its share of the budget until its request times out.
            await staller.send_all(
                _frame(_header(SEAL)) + len(seal_body).to_bytes(4, "big") + seal_body[:-1]
            )
            await trio.testing.wait_all_tasks_blocked()
            assert budget.held == len(seal_body)
            # Meanwhile small requests from anyone go ahead...
            async with rpc_pair(soft, request_timeout=5, budget=budget) as rpc:
                assert await rpc.get_tao_name() == await soft.get_tao_name()
                # ...and a large one waits until the staller is dropped (five seconds
                # after its header; this one comes two seconds later).
                await trio.sleep(2)
                start = trio.current_time()
                sealed = await rpc.seal(b"t" * size)
                assert stall_done.is_set()
                assert trio.current_time() - start == pytest.approx(3)
                assert await soft.unseal(sealed) == (b"t" * size, "self")
            assert budget.held == 0


async def test_byte_budget_is_first_come_first_served_and_survives_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = ByteBudget(10)
    order: list[str] = []
    assert await budget.acquire(8) == 8
    async with trio.open_nursery() as nursery:

        async def want(name: str, n: int) -> None:
            got = await budget.acquire(n)
            order.append(name)
            await trio.sleep(1)
            budget.release(got)

        nursery.start_soon(want, "big", 10)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, "small", 1)  # fits now, but waits behind "big"
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.5):
            await budget.acquire(5)  # cancelled while waiting: leaves no trace
        assert order == []
        budget.release(8)
    assert order == ["big", "small"]
    assert budget.held == 0
    assert await budget.acquire(50) == 10  # over the whole budget: all of it
    with pytest.raises(ValueError, match="positive"):
        ByteBudget(0)


async def test_a_cancelled_acquire_never_keeps_its_share() -> None:
    budget = ByteBudget(10)
    with trio.CancelScope() as scope:
        scope.cancel()
        await budget.acquire(4)  # free: but the caller is cancelled, so no share
    assert budget.held == 0
