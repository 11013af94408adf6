"""serve_channels binds each connection's log context (``conn_id``, ``remote``, then
``peer``) in that connection's task, and reports each handshake's outcome: real TLS on
127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Any

import pytest
import structlog
import structlog.contextvars
import structlog.testing
import trio
import trio.testing

from taonet import TaoError, auth
from taonet._log import MAX_LOGGED_NAME, get_logger
from taonet.channel import ChannelIdentity, HandshakeOutcome, TaoStream, open_channel
from taonet.crypto import Signer
from tests.channel.conftest import Programs, start_server

log = get_logger("taonet.tests.log_context")


async def open_and_read(port: int, identity: ChannelIdentity) -> None:
    stream = await open_channel("127.0.0.1", port, identity)
    try:
        await stream.receive_some()
    finally:
        await stream.aclose()


async def drain(stream: trio.SocketStream) -> None:
    """Read until the server closes (a reset too: it may leave our bytes unread)."""
    with contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some():
            pass
    await stream.aclose()


async def test_every_line_of_a_connection_carries_its_conn_id_and_peer(
    programs: Programs, nursery: trio.Nursery
) -> None:
    server_id = await programs.identity(1)
    clients = [await programs.identity(2), await programs.identity(3)]

    async def handler(stream: TaoStream) -> None:
        log.info("handler_line", n=1)

        async def child() -> None:  # a task the handler starts: the same context
            log.info("child_line")

        async with trio.open_nursery() as inner:
            inner.start_soon(child)
        while data := await stream.receive_some():
            log.warning("handler_heard", size=len(data))
            await stream.send_all(data)

    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as events:
        with trio.fail_after(30):
            port = await start_server(nursery, server_id, handler)
            for client in clients:
                stream = await open_channel("127.0.0.1", port, client)
                await stream.send_all(b"ping")
                assert await stream.receive_some() == b"ping"
                await stream.aclose()
            # A connection that never handshakes: its rejection is on its own id.
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            await raw.send_all(b"not TLS at all\r\n" * 8)
            await drain(raw)  # the server logs the rejection, then closes
    server_side = [e for e in events if "conn_id" in e]
    by_id: dict[str, list[Any]] = {}
    for event in server_side:
        by_id.setdefault(event["conn_id"], []).append(event)
    assert all(re.fullmatch(r"[0-9a-f]{8}", conn_id) for conn_id in by_id)
    peers = {str(client.certificate.principal) for client in clients if client.certificate}
    served = [lines for lines in by_id.values() if any(e["event"] == "handler_line" for e in lines)]
    assert len(served) == 2
    for lines in served:
        names = {e["event"] for e in lines}
        assert {"handler_line", "child_line", "handler_heard"} <= names
        assert {"channel_established"} <= names  # the channel layer's own line
        assert len({e["peer"] for e in lines}) == 1
        assert lines[0]["peer"] in peers
        assert len({e["remote"] for e in lines}) == 1
    assert {served[0][0]["peer"], served[1][0]["peer"]} == peers
    rejected = [lines for lines in by_id.values() if lines[0]["event"] == "channel_rejected"]
    assert len(rejected) == 1
    assert "peer" not in rejected[0][0]  # no one was verified
    # Nothing leaks out of the connections' tasks into this one.
    assert structlog.contextvars.get_contextvars() == {}


async def test_handshake_outcomes_are_reported(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server_id = await programs.identity(1)
    good, revoked = await programs.identity(2), await programs.identity(3)
    assert revoked.certificate is not None
    outcomes: list[HandshakeOutcome] = []
    with trio.fail_after(60):
        port = await start_server(
            nursery,
            server_id,
            revoked={revoked.certificate.serial},
            handshake_timeout=5,
            on_handshake=outcomes.append,
        )
        stream = await open_channel("127.0.0.1", port, good)
        await stream.aclose()
        # The server refuses it: the client hears so at once or on its first read.
        with pytest.raises((TaoError, trio.BrokenResourceError)):
            await open_and_read(port, revoked)
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        await raw.send_all(b"\x16\x03\x01\x00\x05hello")  # broken TLS
        await drain(raw)
        silent = await trio.open_tcp_stream("127.0.0.1", port)  # says nothing: times out
        started = trio.current_time()
        await drain(silent)
        assert trio.current_time() - started >= 5
    # Each is reported before its connection is closed, so all four are in (in any
    # order: the server's tasks run as Trio schedules them).
    assert sorted(outcome.value for outcome in outcomes) == sorted(
        outcome.value
        for outcome in (
            HandshakeOutcome.OK,
            HandshakeOutcome.REFUSED,
            HandshakeOutcome.FAILED,
            HandshakeOutcome.TIMEOUT,
        )
    )


async def test_a_huge_peer_name_is_cut_in_every_line(
    programs: Programs, nursery: trio.Nursery
) -> None:
    """A program whose name is tens of kilobytes (it may extend its own name) does not
    put it on every line of its connection: the bound ``peer`` is cut to
    MAX_LOGGED_NAME characters, ending with the full length and SHA-256."""
    server_id = await programs.identity(1)
    huge = programs.name(2).extend(auth.PrinExt("Arg", (auth.Str("A" * 30000 + "\n"),)))
    key = Signer.generate()
    attestation = await programs.host.tao_for(huge).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), huge)
    )
    issued = programs.certifier.certify(attestation.to_bytes(), key.public_key_der())
    client = ChannelIdentity(programs.domain.policy_cert, signer=key, certificate=issued.der)

    async def handler(stream: TaoStream) -> None:
        log.info("handler_line")
        await stream.send_all(b"x")

    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as events:
        with trio.fail_after(30):
            port = await start_server(nursery, server_id, handler)
            await open_and_read(port, client)
    (line,) = [e for e in events if e["event"] == "handler_line"]
    digest = hashlib.sha256(str(huge).encode()).hexdigest()
    assert len(line["peer"]) == MAX_LOGGED_NAME
    assert line["peer"].endswith(f"[cut: {len(str(huge))} chars, sha256 {digest}]")
    assert all(len(str(value)) <= 1024 for e in events for value in e.values())
