"""Revocation reaching open channels: real TLS on 127.0.0.1, CRLs signed by the policy key.

Each test plays the attack or the failure: a peer revoked while it transfers, a
rolled-back CRL, a CRL from another domain's key, a domain service that is down
while the CRL held runs out.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import structlog
import trio
import trio.testing

from taonet import AuthenticationError, AuthorizationError, ProtocolError, certs
from taonet.channel import ChannelRevokedError, CRLSource, TaoStream, open_channel
from taonet.domain import Domain
from taonet.provision import RevocationWatcher
from tests.channel.conftest import Programs, start_server
from tests.conftest import PASSWORD, MakeDomain

CHUNK = 16 * 1024


class Crls:
    """CRLs of one domain, numbered in order, and the one its 'service' hands out."""

    def __init__(self, domain: Domain, clock: Callable[[], int] = time.time_ns) -> None:
        self.domain = domain
        self.signer = domain.unlock(PASSWORD)
        self.clock = clock
        self.number = 0
        self.current = self.make()

    def make(self, *serials: int, number: int | None = None, days: int = 1) -> bytes:
        if number is None:
            self.number += 1
            number = self.number
        return certs.make_crl(
            self.signer,
            self.domain.policy_anchor,
            serials,
            now_ns=self.clock(),
            crl_number=number,
            next_update_days=days,
        )

    async def fetch(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.current


async def drain(stream: TaoStream) -> None:
    """Read until the stream ends or fails."""
    while await stream.receive_some(CHUNK):
        pass


def serial_of(stream: TaoStream) -> int:
    assert stream.peer.certificate is not None
    return stream.peer.certificate.serial


async def test_revoked_peer_mid_transfer_is_closed_both_sides_told_others_served(
    programs: Programs, nursery: trio.Nursery
) -> None:
    crls = Crls(programs.domain)
    server_src = CRLSource(programs.domain.policy_cert)
    await server_src.update(crls.current)
    seen: dict[int, BaseException] = {}

    async def stream_forever(stream: TaoStream) -> None:
        # Sends until the channel breaks; records what the handler saw.
        try:
            while True:
                await stream.send_all(b"x" * CHUNK)
        except BaseException as exc:
            seen[serial_of(stream)] = exc
            raise

    server_id = await programs.identity(1)
    port = await start_server(nursery, server_id, stream_forever, revocations=server_src)
    mallory_id, alice_id = await programs.identity(2), await programs.identity(3)
    assert mallory_id.certificate is not None
    assert alice_id.certificate is not None
    mallory_serial = mallory_id.certificate.serial
    # Each client has its own source; it learns the news by asking the 'service'.
    mallory_src = CRLSource(programs.domain.policy_cert, fetch=crls.fetch)
    alice_src = CRLSource(programs.domain.policy_cert, fetch=crls.fetch)
    await mallory_src.update(crls.current)
    await alice_src.update(crls.current)

    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        mallory = await open_channel("127.0.0.1", port, mallory_id, revocations=mallory_src)
        alice = await open_channel("127.0.0.1", port, alice_id, revocations=alice_src)
        for stream in (mallory, alice):  # both mid-transfer
            assert await stream.receive_some(CHUNK)

        # The operator revokes mallory; the server's source takes the new CRL.
        crls.current = crls.make(mallory_serial)
        assert await server_src.update(crls.current)

        with pytest.raises(ChannelRevokedError) as caught:
            await drain(mallory)
        # Mallory is told it was its own certificate, not a broken network.
        assert caught.value.own
        assert caught.value.serial == mallory_serial
        assert isinstance(caught.value, AuthenticationError)
        assert f"serial {mallory_serial}" in str(caught.value)
        with pytest.raises(ChannelRevokedError):
            await mallory.send_all(b"more")
        # The server's handler saw why too.
        handler_saw = seen[mallory_serial]
        assert isinstance(handler_saw, ChannelRevokedError)
        assert not handler_saw.own
        assert handler_saw.serial == mallory_serial

        # Alice, mid-transfer, keeps receiving; a new client is served too.
        received = 0
        while received < 1024 * 1024:
            received += len(await alice.receive_some(CHUNK))
        again = await open_channel("127.0.0.1", port, alice_id, revocations=alice_src)
        assert await again.receive_some(CHUNK)
        # A new handshake from mallory is refused at once.
        retry = await open_channel("127.0.0.1", port, mallory_id)
        with pytest.raises(AuthorizationError, match="revoked"):
            await retry.receive_some()
        for stream in (mallory, alice, again, retry):
            await stream.aclose()

    revoked_lines = [e for e in logs if e["event"] == "channel_revoked"]
    # One line on each side: the server names the peer, mallory's side its own serial.
    server_line = [e for e in revoked_lines if "remote" in e]
    client_line = [e for e in revoked_lines if e.get("side") == "client"]
    assert len(server_line) == len(client_line) == 1 == len(revoked_lines) - 1
    assert server_line[0]["serial"] == client_line[0]["serial"] == mallory_serial
    assert server_line[0]["peer"] == str(mallory_id.principal)
    assert "this program's certificate" in client_line[0]["reason"]


async def test_a_client_closes_its_channel_to_a_revoked_server(
    programs: Programs, nursery: trio.Nursery
) -> None:
    crls = Crls(programs.domain)
    server_id = await programs.identity(1)
    assert server_id.certificate is not None
    port = await start_server(nursery, server_id)  # echo, no source: the server does not know
    src = CRLSource(programs.domain.policy_cert)
    await src.update(crls.current)
    with trio.fail_after(30):
        stream = await open_channel("127.0.0.1", port, await programs.identity(2), revocations=src)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await src.update(crls.make(server_id.certificate.serial))
        with pytest.raises(ChannelRevokedError, match="peer's certificate") as caught:
            await stream.receive_some()
        assert not caught.value.own
        # And it refuses to open a new one.
        with pytest.raises(AuthenticationError, match="revoked"):
            await open_channel("127.0.0.1", port, await programs.identity(3), revocations=src)


async def test_a_rolled_back_crl_is_refused(programs: Programs) -> None:
    """A hostile or rolled-back service hands out an older, correctly signed CRL."""
    crls = Crls(programs.domain)
    older = crls.make()  # number 2, lists nobody
    newer = crls.make(1234)  # number 3, revokes 1234
    src = CRLSource(programs.domain.policy_cert, fetch=crls.fetch)
    assert await src.update(newer)
    with pytest.raises(AuthenticationError, match="older than the one held"):
        await src.update(older)
    crls.current = older
    with pytest.raises(AuthenticationError, match="older than the one held"):
        await src.refresh()
    assert src.crl is not None
    assert src.crl.number == 3
    assert src.is_revoked(1234)
    with pytest.raises(AuthenticationError, match="1234 is revoked"):
        src.check(1234)
    assert not await src.update(newer)  # the same list again changes nothing


async def test_a_crl_signed_by_another_policy_key_is_refused(
    programs: Programs, make_domain: MakeDomain
) -> None:
    crls = Crls(programs.domain)
    other = Crls(make_domain(name="other"))
    src = CRLSource(programs.domain.policy_cert)
    await src.update(crls.make(1234))
    forged = other.make(number=10**12)  # a far larger number, listing nobody
    with pytest.raises(AuthenticationError):
        await src.update(forged)
    assert src.crl is not None
    assert src.crl.number == crls.number
    assert src.is_revoked(1234)


async def test_no_crl_yet_refuses_every_certificate(programs: Programs) -> None:
    src = CRLSource(programs.domain.policy_cert)
    with pytest.raises(AuthenticationError, match="no verified CRL"):
        src.check(1)


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_service_down_keeps_the_last_crl_until_it_expires_then_refuses(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    base = time.time_ns()

    def clock() -> int:
        return base + int(trio.current_time() * 1e9)

    crls = Crls(programs.domain, clock)  # a CRL valid for one day from now
    down = _closed_port()
    watcher = RevocationWatcher(programs.domain.policy_cert, ("127.0.0.1", down), clock=clock)
    await watcher.update(crls.current)
    server_id = await programs.identity(1)
    client_id = await programs.identity(2)
    with structlog.testing.capture_logs() as logs:
        await nursery.start(watcher.run)
        port = await start_server(nursery, server_id, revocations=watcher, idle_timeout=None)
        with trio.fail_after(3 * 86400):
            stream = await open_channel("127.0.0.1", port, client_id)
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            # Twelve hours of failed refreshes: the CRL held still serves.
            await trio.sleep(12 * 3600)
            await stream.send_all(b"still")
            assert await stream.receive_some() == b"still"
            second = await open_channel("127.0.0.1", port, client_id)
            await second.send_all(b"new")
            assert await second.receive_some() == b"new"
            failures = [e for e in logs if e["event"] == "crl_refresh_failed"]
            # Logged, but a line per burst, not one per failure.
            assert 1 <= len(failures) <= 12 * 60 + 1
            assert sum(e["events"] for e in failures) >= 12 * 3600 // 330
            # Past its nextUpdate: open channels it cannot check are closed...
            await trio.sleep(13 * 3600)
            assert any(e["event"] == "crl_expired" for e in logs)
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()
            # ... and new handshakes refused, saying why.
            refused = await open_channel("127.0.0.1", port, client_id)
            with pytest.raises(AuthorizationError, match="expired"):
                await refused.receive_some()
            # The service comes back (a fresh CRL): serving resumes.
            crls.current = crls.make()
            assert await watcher.update(crls.current)
            back = await open_channel("127.0.0.1", port, client_id)
            await back.send_all(b"back")
            assert await back.receive_some() == b"back"
            for s in (stream, second, refused, back):
                await s.aclose()
    revoked = [e for e in logs if e["event"] == "channel_revoked"]
    assert {e["reason"].split(" ")[0] for e in revoked} == {"the"}
    assert all("expired" in e["reason"] for e in revoked)


async def test_refresh_shares_a_fetch_in_flight(programs: Programs) -> None:
    crls = Crls(programs.domain)
    calls = 0
    release = trio.Event()

    async def slow_fetch() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return crls.current

    src = CRLSource(programs.domain.policy_cert, fetch=slow_fetch)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.refresh)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == 1
            # Four more ask while that fetch is in flight (it may predate their news).
            for _ in range(4):
                nursery.start_soon(src.refresh)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    # The first fetch, and one more shared by the four who asked while it was in flight.
    assert calls == 2


@pytest.mark.parametrize("bad", ["interval", "jitter"])
def test_bad_schedule_is_refused(programs: Programs, bad: str) -> None:
    kw = {"refresh_interval": 0.0} if bad == "interval" else {"jitter": 1.5}
    with pytest.raises(ValueError, match=bad):
        CRLSource(programs.domain.policy_cert, **kw)  # type: ignore[arg-type]


async def test_the_schedule_alone_brings_a_revocation_within_an_interval(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """No long poll, nobody asks: the scheduled refresh closes the channel in time."""
    crls = Crls(programs.domain)
    source = CRLSource(programs.domain.policy_cert, fetch=crls.fetch, refresh_interval=300)
    await nursery.start(source.run)
    client_id = await programs.identity(2)
    assert client_id.certificate is not None
    port = await start_server(nursery, await programs.identity(1), revocations=source)
    with trio.fail_after(3600):
        stream = await open_channel("127.0.0.1", port, client_id)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        revoked_at = trio.current_time()
        crls.current = crls.make(client_id.certificate.serial)
        with pytest.raises(trio.BrokenResourceError):
            await drain(stream)
        # Within one interval and its jitter.
        assert trio.current_time() - revoked_at <= 300 * (1 + source.jitter)
        await stream.aclose()


async def test_a_long_poll_that_is_refused_backs_off(
    programs: Programs, autojump_clock: trio.testing.MockClock
) -> None:
    """A service that refuses every watch at once (over its cap) is not hammered."""
    crls = Crls(programs.domain)
    calls = 0

    async def refusing_watch(known: int) -> bytes | None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        raise ProtocolError("too_many_watches")

    source = CRLSource(programs.domain.policy_cert, fetch=crls.fetch, watch=refusing_watch)
    with trio.move_on_after(600):
        await source.run()
    # Back-off doubling from 1 s up to 60 s: about 15 tries in ten minutes, not thousands.
    assert 5 <= calls <= 20
    assert source.crl is not None  # the schedule still brought the CRL


async def test_a_watch_that_answers_nothing_new_at_once_is_not_spun_on(
    programs: Programs, autojump_clock: trio.testing.MockClock
) -> None:
    crls = Crls(programs.domain)
    calls = 0

    async def same_again(known: int) -> bytes | None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        return crls.current

    source = CRLSource(programs.domain.policy_cert, fetch=crls.fetch, watch=same_again)
    with trio.move_on_after(600):
        await source.run()
    assert calls <= 20


def test_the_revocation_api_reports_its_public_home() -> None:
    import taonet.channel
    import taonet.provision

    assert CRLSource.__module__ == "taonet.channel"
    assert ChannelRevokedError.__module__ == "taonet.channel"
    assert RevocationWatcher.__module__ == "taonet.provision"
    for name in ("CRLSource", "ChannelRevokedError", "DEFAULT_REFRESH_INTERVAL"):
        assert name in taonet.channel.__all__
    for name in ("RevocationWatcher", "OP_WATCH_CRL", "watch_crl", "ERROR_TOO_MANY_WATCHES"):
        assert name in taonet.provision.__all__
    assert issubclass(ChannelRevokedError, AuthenticationError)
    assert issubclass(ChannelRevokedError, trio.BrokenResourceError)
