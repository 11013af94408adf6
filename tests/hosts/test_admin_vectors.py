"""Golden admin socket frames (tests/vectors/admin.json), from both ends, on real sockets.

The client (AdminClient) must still send exactly the stored requests and read the
stored responses as the stored results (error answers raise their stored class); the
server (serve_admin) must still answer the stored requests with exactly the stored
bytes, asking its backend what the file says.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from taonet import TaoError
from taonet.hosts.linux import AdminClient, serve_admin
from taonet.wire import FrameDecoder, parse
from tests.vectors.generate import (
    FixedBackend,
    call_method,
    error_json,
    from_json,
    generate_admin,
    kwargs_from_json,
    kwargs_json,
    read_json,
    receive_exactly,
    to_json,
)

TIMEOUT = 10
EXCHANGES: list[dict[str, Any]] = read_json("admin.json")["exchanges"]
OPS = {
    "start": "LinuxHost.StartHostedProgram",
    "stop": "LinuxHost.StopHostedProgram",
    "kill": "LinuxHost.KillHostedProgram",
    "list": "LinuxHost.ListHostedPrograms",
    "wait": "LinuxHost.WaitHostedProgram",
    "host_name": "LinuxHost.TaoHostName",
    "shutdown": "LinuxHost.Shutdown",
}


def result_json(result: object) -> Any:
    return error_json(result) if isinstance(result, TaoError) else to_json(result)


def test_the_vectors_are_protorpc_frames() -> None:
    assert {e["method"] for e in EXCHANGES} == set(OPS)
    for seq, exchange in enumerate(EXCHANGES, start=1):
        for key, body in (("request", "LinuxAdminRequest"), ("response", "LinuxAdminResponse")):
            decoder = FrameDecoder()
            decoder.feed(bytes.fromhex(exchange[key]))
            header_frame, body_frame = decoder.next_frame(), decoder.next_frame()
            assert header_frame is not None
            assert body_frame is not None
            assert decoder.buffered == 0
            header = parse("RPCHeader", header_frame)
            assert (header.op, header.seq) == (OPS[exchange["method"]], seq)
            parse(body, body_frame)
            if key == "response" and header.HasField("error"):
                result = exchange["result"]
                assert header.error == f"{result['error']}: {result['message']}"
                assert body_frame == b""


async def test_the_server_answers_exactly_the_vectors(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = FixedBackend()
    path = tmp_path / "admin.sock"
    with trio.fail_after(TIMEOUT):
        await nursery.start(serve_admin, backend, path)
        async with await trio.open_unix_socket(str(path)) as stream:
            for exchange in EXCHANGES:
                response = bytes.fromhex(exchange["response"])
                await stream.send_all(bytes.fromhex(exchange["request"]))
                got = await receive_exactly(stream, len(response))
                assert got.hex() == exchange["response"], exchange["method"]
                method, served = backend.calls[-1]
                assert (method, kwargs_json(served)) == (exchange["method"], exchange["served"])
    assert len(backend.calls) == len(EXCHANGES)
    nursery.cancel_scope.cancel()


async def test_the_client_sends_and_reads_exactly_the_vectors(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = str(tmp_path / "admin.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen()
    received: list[bytes] = []
    done = trio.Event()

    async def scripted_host() -> None:
        conn, _ = await listener.accept()
        async with trio.SocketStream(conn) as stream:
            for exchange in EXCHANGES:
                request = bytes.fromhex(exchange["request"])
                received.append(await receive_exactly(stream, len(request)))
                await stream.send_all(bytes.fromhex(exchange["response"]))
            received.append(bytes(await stream.receive_some()))  # then only the end
        done.set()

    with trio.fail_after(TIMEOUT):
        nursery.start_soon(scripted_host)
        async with AdminClient.connect(path) as admin:
            for i, exchange in enumerate(EXCHANGES):
                result = await call_method(
                    admin,
                    exchange["method"],
                    from_json(exchange["args"]),
                    kwargs_from_json(exchange["kwargs"]),
                )
                assert received[i].hex() == exchange["request"], exchange["method"]
                assert result_json(result) == exchange["result"], exchange["method"]
        await done.wait()
    assert received[-1] == b""
    listener.close()


async def test_the_generator_makes_the_stored_file_again() -> None:
    """Everything in admin.json is deterministic: taonet makes it again byte for byte."""
    with trio.fail_after(TIMEOUT):
        assert await generate_admin() == read_json("admin.json")
