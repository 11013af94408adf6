"""Golden Tao RPC frames (tests/vectors/tao_rpc.json), from both ends.

The client (RPCTao) must still send exactly the stored request bytes and read the
stored responses as the stored results; the server (serve_tao_rpc) must still answer
the stored requests with exactly the stored response bytes, asking its Tao what the
file says. The frames are also decoded here with the schema alone, so the file
documents the original's protorpc envelope and not just what taonet did once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from taonet import TaoError
from taonet.hosts import RPCTao, serve_tao_rpc
from taonet.wire import FrameDecoder, parse
from tests.vectors.generate import (
    FixedTao,
    call_method,
    error_json,
    from_json,
    generate_tao_rpc,
    kwargs_from_json,
    kwargs_json,
    read_json,
    receive_exactly,
    to_json,
)

TIMEOUT = 10
FILE = read_json("tao_rpc.json")
EXCHANGES: list[dict[str, Any]] = FILE["exchanges"]
RAW: list[dict[str, Any]] = FILE["raw"]
OPS = {
    "get_tao_name": "Tao.GetTaoName",
    "extend_tao_name": "Tao.ExtendTaoName",
    "get_random_bytes": "Tao.GetRandomBytes",
    "get_shared_secret": "Tao.GetSharedSecret",
    "attest": "Tao.Attest",
    "seal": "Tao.Seal",
    "unseal": "Tao.Unseal",
    "init_counter": "Tao.InitCounter",
    "get_counter": "Tao.GetCounter",
    "rollback_protected_seal": "Tao.RollbackProtectedSeal",
    "rollback_protected_unseal": "Tao.RollbackProtectedUnseal",
}


def frames(data: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    assert decoder.buffered == 0
    return out


def result_json(result: object) -> Any:
    return error_json(result) if isinstance(result, TaoError) else to_json(result)


def test_the_vectors_are_protorpc_frames() -> None:
    assert {e["method"] for e in EXCHANGES} == set(OPS)
    for seq, exchange in enumerate(EXCHANGES, start=1):
        request = frames(bytes.fromhex(exchange["request"]))
        response = frames(bytes.fromhex(exchange["response"]))
        assert len(request) == len(response) == 2
        header = parse("RPCHeader", request[0])
        assert (header.op, header.seq, header.HasField("error")) == (
            OPS[exchange["method"]],
            seq,
            False,
        )
        parse("RPCRequest", request[1])
        header = parse("RPCHeader", response[0])
        assert (header.op, header.seq) == (OPS[exchange["method"]], seq)
        failed = isinstance(exchange["result"], dict) and "error" in exchange["result"]
        assert header.HasField("error") == failed
        if failed:
            assert response[1] == b""  # the body of an error answer is empty
            # The error's kind travels as a prefix the original shows as text.
            result = exchange["result"]
            assert header.error == f"{result['error']}: {result['message']}"
        else:
            parse("RPCResponse", response[1])


async def test_the_client_sends_and_reads_exactly_the_vectors() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    received: list[bytes] = []

    async def scripted_host() -> None:
        for exchange in EXCHANGES:
            received.append(
                await receive_exactly(server_stream, len(bytes.fromhex(exchange["request"])))
            )
            await server_stream.send_all(bytes.fromhex(exchange["response"]))
        received.append(bytes(await server_stream.receive_some()))  # then only the end
        await server_stream.aclose()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scripted_host)
            async with RPCTao.connect(client_stream) as tao:
                for i, exchange in enumerate(EXCHANGES):
                    result = await call_method(
                        tao,
                        exchange["method"],
                        from_json(exchange["args"]),
                        kwargs_from_json(exchange["kwargs"]),
                    )
                    assert received[i].hex() == exchange["request"], exchange["method"]
                    assert result_json(result) == exchange["result"], exchange["method"]
    assert received[-1] == b""


async def test_the_server_answers_exactly_the_vectors() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    tao = FixedTao()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, tao)
            for exchange in EXCHANGES:
                response = bytes.fromhex(exchange["response"])
                await client_stream.send_all(bytes.fromhex(exchange["request"]))
                got = await receive_exactly(client_stream, len(response))
                assert got.hex() == exchange["response"], exchange["method"]
                method, served = tao.calls[-1]
                assert (method, kwargs_json(served)) == (exchange["method"], exchange["served"])
            await client_stream.send_eof()
            assert await client_stream.receive_some() == b""  # the server closed
    assert len(tao.calls) == len(EXCHANGES)


@pytest.mark.parametrize("raw", RAW, ids=lambda raw: str(raw["what"]))
async def test_the_server_answers_raw_requests_exactly(raw: dict[str, Any]) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    tao = FixedTao()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, tao)
            await client_stream.send_all(bytes.fromhex(raw["request"]))
            await client_stream.send_eof()
            response = b""
            while chunk := await client_stream.receive_some():
                response += chunk
    assert response.hex() == raw["response"]
    assert tao.calls == []  # none of them reached the Tao
    header = parse("RPCHeader", frames(response)[0])
    assert header.HasField("error")


async def test_the_generator_makes_the_stored_file_again() -> None:
    """Everything in tao_rpc.json is deterministic: taonet makes it again byte for byte."""
    with trio.fail_after(TIMEOUT):
        assert await generate_tao_rpc() == FILE
