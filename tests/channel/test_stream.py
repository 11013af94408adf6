"""Tao channels over real TLS on 127.0.0.1: who may connect, and who may not."""

from __future__ import annotations

import time

import pytest
import structlog
import structlog.testing
import trio
import trio.testing

from taonet import AuthenticationError, AuthorizationError, ConfigError, ProtocolError, auth, certs
from taonet.channel import ChannelIdentity, TaoStream, open_channel
from taonet.crypto import KdfParams, Signer
from taonet.domain import ACLGuard, Domain, DomainTemplate, authorized
from tests.channel.conftest import Programs, recording_echo, start_server
from tests.conftest import PASSWORD

DAY = 24 * 3600 * 10**9


async def echo_once(stream: TaoStream, data: bytes = b"ping") -> bytes:
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await stream.receive_some()
        if not chunk:
            break
        got += chunk
    return got


async def test_both_sides_learn_the_verified_peer(
    programs: Programs, nursery: trio.Nursery
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    seen: list[TaoStream] = []
    handler = recording_echo(seen)
    with trio.fail_after(10):
        port = await start_server(nursery, server_id, handler)
        stream = await open_channel("127.0.0.1", port, client_id)
        assert stream.peer.principal == programs.name(1)
        assert await echo_once(stream, b"hello tao") == b"hello tao"
        assert seen[0].peer.principal == programs.name(2)
        assert seen[0].peer.certificate is not None
        assert seen[0].peer.certificate.serial == client_id.certificate.serial  # type: ignore[union-attr]
        await stream.aclose()


async def test_bulk_data_in_both_directions(programs: Programs, nursery: trio.Nursery) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    with trio.fail_after(20):
        port = await start_server(nursery, server_id)
        stream = await open_channel("127.0.0.1", port, client_id)
        payload = bytes(range(256)) * 4096  # 1 MiB
        async with trio.open_nursery() as n:
            n.start_soon(stream.send_all, payload)
            got = bytearray()
            while len(got) < len(payload):
                got += await stream.receive_some()
        assert got == payload
        await stream.aclose()


async def connected_pair(programs: Programs, nursery: trio.Nursery) -> tuple[TaoStream, TaoStream]:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    send, receive = trio.open_memory_channel[TaoStream](1)

    async def handler(stream: TaoStream) -> None:
        await send.send(stream)
        await trio.sleep_forever()

    port = await start_server(nursery, server_id, handler)
    client = await open_channel("127.0.0.1", port, client_id)
    await client.wait_accepted()
    server = await receive.receive()
    return client, server


async def test_tao_stream_is_a_well_behaved_stream(programs: Programs) -> None:
    async with trio.open_nursery() as nursery:

        async def maker() -> tuple[TaoStream, TaoStream]:
            return await connected_pair(programs, nursery)

        with trio.fail_after(60):
            await trio.testing.check_two_way_stream(maker, None)
        nursery.cancel_scope.cancel()


async def test_a_stream_whose_accept_waits_for_an_answer_is_well_behaved(
    programs: Programs,
) -> None:
    """The conformance suite again, on a pair where the client's first byte came with
    its last handshake flight: the server holds its accept byte for its first answer
    (or its first wait for the client, or its close), however the suite drives it."""
    async with trio.open_nursery() as nursery:

        async def maker() -> tuple[TaoStream, TaoStream]:
            server_id, client_id = await programs.identity(1), await programs.identity(2)
            send, receive = trio.open_memory_channel[TaoStream](1)

            async def handler(stream: TaoStream) -> None:
                assert stream._accept_unsent
                assert await stream.receive_some(1) == b"!"
                assert stream._accept_unsent
                await send.send(stream)
                await trio.sleep_forever()

            port = await start_server(nursery, server_id, handler)
            client = await open_channel("127.0.0.1", port, client_id, hold_finished=True)
            await client.send_all(b"!")
            return client, await receive.receive()

        with trio.fail_after(60):
            await trio.testing.check_two_way_stream(maker, None)
        nursery.cancel_scope.cancel()


async def test_a_request_with_the_last_flight_is_answered_with_the_verdict(
    programs: Programs, nursery: trio.Nursery
) -> None:
    """``hold_finished``: the request goes in the client's last handshake write, and
    the server's accept byte in the same write as its answer."""
    seen: list[tuple[bool, bool]] = []

    async def handler(stream: TaoStream) -> None:
        before = stream._accept_unsent
        data = await stream.receive_some()
        seen.append((before, stream._accept_unsent))
        await stream.send_all(data)
        await stream.receive_some()

    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1), handler)
        stream = await open_channel(
            "127.0.0.1", port, await programs.identity(2), hold_finished=True
        )
        tls = stream.tls_stream
        assert tls._outgoing.pending > 0  # the Finished, held
        assert await echo_once(stream, b"with the flight") == b"with the flight"
        await stream.aclose()
    assert seen == [(True, True)]


async def test_a_refused_client_s_early_request_reaches_no_handler(
    programs: Programs, nursery: trio.Nursery
) -> None:
    """A client the server refuses (its guard, a revoked certificate) hears the
    refusal at once even though its request came with its handshake, and no handler
    ever sees that request."""
    client = await programs.identity(3)
    assert client.certificate is not None
    handled: list[TaoStream] = []
    guard = ACLGuard([authorized(programs.name(2), "Connect")])
    with trio.fail_after(20):
        guarded = await start_server(
            nursery, await programs.identity(1), recording_echo(handled), guard=guard
        )
        revoking = await start_server(
            nursery,
            await programs.identity(1),
            recording_echo(handled),
            revoked={client.certificate.serial},
        )
        for port, reason in ((guarded, "does not authorize"), (revoking, "revoked")):
            stream = await open_channel("127.0.0.1", port, client, hold_finished=True)
            await stream.send_all(b"request that must not be read")
            with pytest.raises(AuthorizationError, match=reason):
                await stream.receive_some()
    assert handled == []


async def test_a_handler_that_ends_without_answering_still_accepts(
    programs: Programs, nursery: trio.Nursery
) -> None:
    """A handler that reads the early request and returns without a word: the client
    hears the accept byte, then the end of the stream (not "ended before the verdict")."""

    async def handler(stream: TaoStream) -> None:
        await stream.receive_some()

    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1), handler)
        stream = await open_channel(
            "127.0.0.1", port, await programs.identity(2), hold_finished=True
        )
        await stream.send_all(b"hello")
        await stream.wait_accepted()
        await wait_closed_by_peer(stream)
        await stream.aclose()


async def test_a_held_flight_goes_out_on_a_receive(
    programs: Programs, nursery: trio.Nursery
) -> None:
    """A ``hold_finished`` client that waits for the verdict before sending anything
    completes the handshake by waiting (no deadlock), and is accepted at once."""
    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1))
        stream = await open_channel(
            "127.0.0.1", port, await programs.identity(2), hold_finished=True
        )
        await stream.wait_accepted()
        assert await echo_once(stream) == b"ping"
        await stream.aclose()


# -- who may not connect -------------------------------------------------------------


async def test_certificate_from_another_domain(  # type: ignore[no-untyped-def]
    programs: Programs, nursery: trio.Nursery, make_domain, make_host
) -> None:
    other = make_domain(guard="Liberal")
    theirs = Programs(other, make_host(other))
    foreign = await theirs.identity(2)
    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1))
        # The foreign client refuses our server (not signed by its policy key)...
        with pytest.raises(AuthenticationError, match="TLS handshake failed"):
            await open_channel("127.0.0.1", port, foreign)
        # ...and a client trusting our domain but holding the other domain's
        # certificate is refused by the server during the handshake.
        stream = await open_channel("127.0.0.1", port, await _impostor(programs, theirs))
        with pytest.raises(AuthenticationError, match="refused the TLS handshake"):
            await stream.receive_some()
        # The server still serves good clients.
        good = await open_channel("127.0.0.1", port, await programs.identity(3))
        assert await echo_once(good) == b"ping"
        await good.aclose()


async def _impostor(programs: Programs, theirs: Programs) -> ChannelIdentity:
    """Trusts our policy certificate, but presents a certificate from their domain."""
    foreign = await theirs.identity(9)
    assert foreign.signer is not None
    assert foreign.certificate is not None
    identity = ChannelIdentity.anonymous(programs.domain.policy_cert)
    # Load the foreign chain by hand: ChannelIdentity itself refuses a certificate
    # its own policy did not sign.
    from taonet.channel._identity import _load_chain

    _load_chain(identity.client_context(), foreign.certificate.der, foreign.signer)
    return identity


async def test_self_signed_certificate_is_refused(
    programs: Programs, nursery: trio.Nursery
) -> None:
    key = Signer.generate()
    self_signed = certs.make_policy_certificate(key, common_name="me", now_ns=time.time_ns())
    with pytest.raises(AuthenticationError):
        ChannelIdentity(programs.domain.policy_cert, signer=key, certificate=self_signed)


async def test_expired_certificate_is_refused(  # type: ignore[no-untyped-def]
    tmp_path, make_host, nursery: trio.Nursery
) -> None:
    long_ago = time.time_ns() - 40 * DAY
    domain = Domain.create(
        tmp_path / "old",
        DomainTemplate(guard="Liberal"),
        PASSWORD,
        kdf=KdfParams.for_tests(),
        now_ns=long_ago - DAY,
    )
    programs = Programs(domain, make_host(domain))
    key = Signer.generate()
    expired = certs.issue_program_certificate(
        domain.unlock(PASSWORD),
        domain.policy_anchor,
        key.public_key_der(),
        programs.name(5),
        now_ns=long_ago,
        validity_days=30,
    )
    with pytest.raises(AuthenticationError, match="expired"):
        ChannelIdentity(domain.policy_cert, signer=key, certificate=expired.der)
    # A client that holds it anyway is refused by the server's TLS.
    client = ChannelIdentity(
        domain.policy_cert, signer=key, certificate=expired.der, now_ns=long_ago + DAY
    )
    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1))
        stream = await open_channel("127.0.0.1", port, client)
        with pytest.raises(AuthenticationError, match="refused the TLS handshake"):
            await stream.receive_some()


async def test_revoked_client_is_refused(programs: Programs, nursery: trio.Nursery) -> None:
    client = await programs.identity(2)
    assert client.certificate is not None
    revoked = {client.certificate.serial}
    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1), revoked=revoked)
        stream = await open_channel("127.0.0.1", port, client)
        with pytest.raises(AuthorizationError, match="revoked"):
            await stream.receive_some()
        other = await open_channel("127.0.0.1", port, await programs.identity(3))
        assert await echo_once(other) == b"ping"
        await other.aclose()


async def test_revoked_server_is_refused(programs: Programs, nursery: trio.Nursery) -> None:
    server = await programs.identity(1)
    assert server.certificate is not None
    with trio.fail_after(10):
        port = await start_server(nursery, server)
        with pytest.raises(AuthenticationError, match="revoked"):
            await open_channel(
                "127.0.0.1", port, await programs.identity(2), revoked={server.certificate.serial}
            )


async def test_guard_refuses_a_peer_and_says_why(programs: Programs, nursery: trio.Nursery) -> None:
    allowed = programs.name(2)
    guard = ACLGuard([authorized(allowed, "Connect")])
    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1), guard=guard)
        refused = await open_channel("127.0.0.1", port, await programs.identity(3))
        with pytest.raises(AuthorizationError, match="does not authorize"):
            await refused.receive_some()
        ok = await open_channel("127.0.0.1", port, await programs.identity(2))
        assert await echo_once(ok) == b"ping"
        await ok.aclose()


async def test_client_guard_refuses_the_server(programs: Programs, nursery: trio.Nursery) -> None:
    guard = ACLGuard([authorized(programs.name(7), "Connect")])
    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1))
        with pytest.raises(AuthorizationError):
            await open_channel("127.0.0.1", port, await programs.identity(2), guard=guard)


async def test_anonymous_clients(programs: Programs, nursery: trio.Nursery) -> None:
    anonymous = ChannelIdentity.anonymous(programs.domain.policy_cert)
    assert anonymous.principal is None
    with pytest.raises(ConfigError):
        anonymous.server_context()
    seen: list[TaoStream] = []
    handler = recording_echo(seen)
    with trio.fail_after(10):
        strict = await start_server(nursery, await programs.identity(1))
        stream = await open_channel("127.0.0.1", strict, anonymous)
        with pytest.raises(AuthenticationError, match="refused the TLS handshake"):
            await stream.receive_some()
        open_port = await start_server(
            nursery, await programs.identity(1), handler, allow_anonymous=True
        )
        stream = await open_channel("127.0.0.1", open_port, anonymous)
        assert stream.peer.principal == programs.name(1)
        assert await echo_once(stream) == b"ping"
        assert seen[0].peer.principal is None
        assert str(seen[0].peer) == "anonymous"
        await stream.aclose()


async def test_anonymous_peer_is_refused_by_a_guarded_server(
    programs: Programs, nursery: trio.Nursery
) -> None:
    guard = ACLGuard([authorized(programs.name(2), "Connect")])
    anonymous = ChannelIdentity.anonymous(programs.domain.policy_cert)
    server_id = await programs.identity(1)
    with trio.fail_after(20):
        # A server that admits anonymous TLS clients but has a guard: the guard
        # needs a principal, so the anonymous peer is refused, with the reason.
        lenient = await start_server(nursery, server_id, guard=guard, allow_anonymous=True)
        with structlog.testing.capture_logs() as logs:
            stream = await open_channel("127.0.0.1", lenient, anonymous)
            with pytest.raises(AuthorizationError, match="does not admit anonymous peers"):
                await stream.receive_some()
        denied = [e for e in logs if e["event"] == "peer_denied" and e["peer"] == "anonymous"]
        assert "does not admit anonymous peers" in denied[0]["reason"]
        # A guarded server without allow_anonymous refuses it in the TLS handshake.
        strict = await start_server(nursery, server_id, guard=guard)
        stream = await open_channel("127.0.0.1", strict, anonymous)
        with pytest.raises(AuthenticationError, match="refused the TLS handshake"):
            await stream.receive_some()
        # Both keep serving the peer the guard names.
        for port in (lenient, strict):
            ok = await open_channel("127.0.0.1", port, await programs.identity(2))
            assert await echo_once(ok) == b"ping"
            await ok.aclose()


async def test_garbage_and_stalled_clients_do_not_stop_the_server(
    programs: Programs, nursery: trio.Nursery
) -> None:
    with trio.fail_after(20):
        port = await start_server(nursery, await programs.identity(1), handshake_timeout=0.5)
        garbage = await trio.open_tcp_stream("127.0.0.1", port)
        await garbage.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        # A good client is served while the stalled one hangs.
        good = await open_channel("127.0.0.1", port, await programs.identity(2))
        assert await echo_once(good) == b"ping"
        # The server drops both bad connections (the stalled one at its timeout).
        for bad in (garbage, stalled):
            await wait_closed_by_peer(bad)  # bounded by the fail_after above
        assert await echo_once(good, b"still here") == b"still here"
        for s in (good, garbage, stalled):
            await s.aclose()


async def wait_closed_by_peer(stream: trio.abc.Stream) -> None:
    """Read until the peer closes, cleanly or not."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


async def test_client_handshake_timeout(programs: Programs, nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, never answers
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10), pytest.raises(ProtocolError, match="did not finish within"):
        await open_channel("127.0.0.1", port, await programs.identity(2), handshake_timeout=0.3)
    for listener in listeners:
        await listener.aclose()


def test_identity_checks_its_parts(programs: Programs) -> None:
    with pytest.raises(ConfigError, match="both"):
        ChannelIdentity(programs.domain.policy_cert, signer=Signer.generate())
    key, other = Signer.generate(), Signer.generate()
    issued = certs.issue_program_certificate(
        programs.domain.unlock(PASSWORD),
        programs.domain.policy_anchor,
        key.public_key_der(),
        programs.name(1),
        now_ns=time.time_ns(),
    )
    with pytest.raises(ConfigError, match="another key"):
        ChannelIdentity(programs.domain.policy_cert, signer=other, certificate=issued.der)
    assert ChannelIdentity(
        programs.domain.policy_cert, signer=key, certificate=issued.der
    ).principal == programs.name(1)
    assert isinstance(programs.name(1), auth.Prin)


async def test_tampered_record_mid_stream_breaks_the_stream(
    programs: Programs, nursery: trio.Nursery
) -> None:
    # A man in the middle (a TCP relay on 127.0.0.1) flips one byte deep inside the
    # server's bulk data: the client must see BrokenResourceError, never bad data.
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    payload = bytes(200_000)

    async def sender(stream: TaoStream) -> None:
        await stream.send_all(payload)
        await trio.sleep_forever()

    real_port = await start_server(nursery, server_id, sender)

    async def relay(downstream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", real_port)
        seen = 0

        async def pump(src: trio.SocketStream, dst: trio.SocketStream, tamper: bool) -> None:
            nonlocal seen
            try:
                while data := await src.receive_some():
                    if tamper:
                        buf = bytearray(data)
                        if seen <= 100_000 < seen + len(buf):
                            buf[100_000 - seen] ^= 0x01
                        seen += len(buf)
                        data = bytes(buf)
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with upstream, trio.open_nursery() as n:
            n.start_soon(pump, downstream, upstream, False)
            n.start_soon(pump, upstream, downstream, True)

    listeners = await nursery.start(trio.serve_tcp, relay, 0)
    relay_port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        stream = await open_channel("127.0.0.1", relay_port, client_id)
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(payload):
                got.extend(await stream.receive_some())

        with pytest.raises(trio.BrokenResourceError):
            await read_all()
        assert len(got) < len(payload)
        assert got == payload[: len(got)]
        await trio.aclose_forcefully(stream)


async def test_data_then_close_notify_reads_as_data_then_eof(
    programs: Programs, nursery: trio.Nursery
) -> None:
    # The server sends a burst and closes cleanly at once: the client must get every
    # byte and then a clean end of stream (b""), not an error.
    payload = bytes(range(256)) * 1000

    async def burst(stream: TaoStream) -> None:
        await stream.send_all(payload)
        await stream.aclose()

    with trio.fail_after(10):
        port = await start_server(nursery, await programs.identity(1), burst)
        stream = await open_channel("127.0.0.1", port, await programs.identity(2))
        # Until the server has sent all it can (data, close_notify): they arrive together.
        await trio.testing.wait_all_tasks_blocked()
        got = bytearray()
        while chunk := await stream.receive_some():
            got += chunk
        assert got == payload
        await stream.aclose()
