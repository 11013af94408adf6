"""serve_channels under connection floods, over real TLS on 127.0.0.1 (issue 8, item 5).

Attackers connect from 127.0.0.2 (and 127.0.1.x), the real client from 127.0.0.1.
Timeouts run on trio's autojump clock: the sockets are real, the waiting is virtual.
The file-descriptor tests run a real server process with a lowered RLIMIT_NOFILE.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

from taonet import ProtocolError
from taonet.channel import DEFAULT_IDLE_TIMEOUT, TaoStream, open_channel, serve_channels
from taonet.channel._server import _EVICT_AFTER, _EVICT_ESTABLISHED_AFTER, address_key
from tests.channel.conftest import Programs, recording_echo, start_server
from tests.channel.flood import attacker_channel, events, open_stalled, server_process
from tests.channel.test_stream import echo_once, wait_closed_by_peer


async def test_one_address_cannot_take_more_than_its_share(
    programs: Programs, nursery: trio.Nursery
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    ended = trio.Semaphore(0)

    async def echo(stream: TaoStream) -> None:
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        finally:
            ended.release()

    with trio.fail_after(20):
        port = await start_server(nursery, server_id, echo, max_per_address=8, handshake_timeout=60)
        # Eight authenticated peers that then say nothing: all accepted...
        idle = [await attacker_channel(port, client_id, "127.0.0.2") for _ in range(8)]
        # ...the ninth, and a ninth that never starts TLS, are closed at once (long
        # before the handshake timeout).
        with pytest.raises(trio.BrokenResourceError):
            await attacker_channel(port, client_id, "127.0.0.2")
        (stalled,) = await open_stalled(port, 1, "127.0.0.2")
        await wait_closed_by_peer(stalled)
        # Another address is served meanwhile.
        real = await open_channel("127.0.0.1", port, client_id)
        assert await echo_once(real) == b"ping"
        # Once the attacker's connections end, its address has its share again.
        for stream in idle:
            await stream.aclose()
        for _ in idle:
            await ended.acquire()
        await trio.testing.wait_all_tasks_blocked()
        again = [await attacker_channel(port, client_id, "127.0.0.2") for _ in range(8)]
        others: list[trio.abc.Stream] = [*again, real, stalled]
        for other in others:
            await other.aclose()


async def test_idle_peer_is_closed_after_the_idle_timeout(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    seen: list[TaoStream] = []
    with trio.fail_after(10 * DEFAULT_IDLE_TIMEOUT):
        port = await start_server(nursery, server_id, recording_echo(seen))
        start = trio.current_time()
        idle = await attacker_channel(port, client_id, "127.0.0.2")
        chatty = await open_channel("127.0.0.1", port, client_id)
        assert await echo_once(chatty) == b"ping"
        assert [s.idle_timeout for s in seen] == [DEFAULT_IDLE_TIMEOUT] * 2

        async def keep_talking() -> None:
            # One byte well within every idle timeout, for three timeouts' worth.
            while trio.current_time() - start < 3 * DEFAULT_IDLE_TIMEOUT:
                await trio.sleep(DEFAULT_IDLE_TIMEOUT * 0.9)
                assert await echo_once(chatty, b"!") == b"!"

        async with trio.open_nursery() as inner:
            inner.start_soon(keep_talking)
            await wait_closed_by_peer(idle)
            closed_after = trio.current_time() - start
        # The silent peer went at its timeout; the talking one is still served.
        assert DEFAULT_IDLE_TIMEOUT <= closed_after <= DEFAULT_IDLE_TIMEOUT + 1
        assert await echo_once(chatty, b"still here") == b"still here"
        await chatty.aclose()
        await idle.aclose()


async def test_at_the_cap_quiet_peers_make_room_for_a_real_client(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    with trio.fail_after(100):
        port = await start_server(nursery, server_id, max_connections=16, max_per_address=None)
        # The cap is full: eight peers that never finish TLS, eight idle after it,
        # from eight addresses, so no per-address limit could help.
        start = trio.current_time()
        stalled = [(await open_stalled(port, 1, f"127.0.1.{i}"))[0] for i in range(1, 9)]
        idle = [await attacker_channel(port, client_id, f"127.0.1.{i}") for i in range(1, 9)]
        real = await open_channel("127.0.0.1", port, client_id, handshake_timeout=30)
        assert await echo_once(real) == b"ping"
        waited = trio.current_time() - start
        # It waited in the listen queue (the cap holds) until the quietest peer had
        # been quiet long enough to be closed, well before any timeout freed a slot.
        assert _EVICT_AFTER <= waited < 10
        for stream in [real, *stalled, *idle]:
            await stream.aclose()


async def test_raw_connections_never_evict_an_authenticated_peer(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Connections that never start TLS, over the cap, are evicted among themselves:
    a real client quiet between requests keeps its channel."""
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    with trio.fail_after(100):
        port = await start_server(nursery, server_id, max_connections=4, max_per_address=None)
        real = await open_channel("127.0.0.1", port, client_id)
        assert await echo_once(real) == b"ping"
        await trio.sleep(5)  # quiet between requests, longer than a handshake may stall
        stalled = [(await open_stalled(port, 1, f"127.0.1.{i}"))[0] for i in range(1, 9)]
        for raw in stalled:  # each is closed: evicted, or at its handshake timeout
            with contextlib.suppress(trio.BrokenResourceError):
                assert await raw.receive_some(1) == b""
            await raw.aclose()
        assert trio.current_time() < _EVICT_ESTABLISHED_AFTER
        assert await echo_once(real) == b"ping"
        await real.aclose()


async def test_idle_authenticated_peers_make_room_once_quiet_long_enough(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    with trio.fail_after(DEFAULT_IDLE_TIMEOUT):
        port = await start_server(nursery, server_id, max_connections=4, max_per_address=None)
        idle = [await attacker_channel(port, client_id, f"127.0.1.{i}") for i in range(1, 5)]
        start = trio.current_time()
        real = await open_channel("127.0.0.1", port, client_id, handshake_timeout=120)
        assert await echo_once(real) == b"ping"
        waited = trio.current_time() - start
        # Not before an authenticated peer has been quiet that long; well before any
        # idle timeout would have freed a slot.
        assert _EVICT_ESTABLISHED_AFTER <= waited < _EVICT_ESTABLISHED_AFTER + 5
        for stream in [real, *idle]:
            await stream.aclose()


async def test_a_busy_handler_is_not_evicted(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)

    async def slow_echo(stream: TaoStream) -> None:
        while data := await stream.receive_some():
            await trio.sleep(60)  # working, not waiting on the peer
            await stream.send_all(data)

    with trio.fail_after(300):
        port = await start_server(nursery, server_id, slow_echo, max_connections=1)
        first = await open_channel("127.0.0.1", port, client_id)
        await first.send_all(b"work")
        await trio.testing.wait_all_tasks_blocked()  # the handler is at work
        start = trio.current_time()
        second = await open_channel("127.0.0.1", port, client_id, handshake_timeout=120)
        await second.wait_accepted()
        # The second client waited for the first one's work instead of evicting it.
        assert trio.current_time() - start >= 60
        assert await first.receive_some() == b"work"
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"handshake_timeout": 0}, "handshake_timeout"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_per_address": 0}, "max_per_address"),
    ],
)
async def test_limits_must_be_positive(
    programs: Programs, options: dict[str, float], message: str
) -> None:
    identity = await programs.identity(1)

    async def handler(stream: TaoStream) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match=message):
        await serve_channels(handler, 0, identity, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_addresses_count_by_host_and_ipv6_by_64(host: str, key: str) -> None:
    assert address_key(host) == key


# -- at the file-descriptor limit, in a real server process --------------------------


async def test_out_of_descriptors_the_server_logs_once_and_recovers(programs: Programs) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    # The cap is set above the descriptor limit, so accept itself runs out.
    options = {"max_connections": 1000, "max_per_address": 1000, "handshake_timeout": 60}
    with trio.fail_after(30):
        async with server_process(server_id, nofile=48, options=options) as server:
            stalled = await open_stalled(server.port, 60, "127.0.0.2")
            await server.log.wait_for("accept_failing")
            # Out of descriptors, the server cannot take a real client for a while
            # (the server retries, with back-off, all along)...
            with pytest.raises(ProtocolError, match="did not finish within"):
                await open_channel("127.0.0.1", server.port, client_id, handshake_timeout=1)
            for stream in stalled:
                await stream.aclose()
            # ...and serves again once descriptors free up.
            real = await open_channel("127.0.0.1", server.port, client_id)
            assert await echo_once(real) == b"ping"
            await real.aclose()
            logged = events(server.log.lines)
    # One line for the whole time out of descriptors, however many retries it took;
    # otherwise one line per connection that never finished its handshake.
    assert logged.pop("accept_failing") == 1
    assert logged.pop("channel_rejected") <= len(stalled) + 1
    assert logged == {}


async def test_default_cap_stays_below_the_descriptor_limit(programs: Programs) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    with trio.fail_after(30):
        async with server_process(server_id, nofile=64) as server:
            stalled = await open_stalled(server.port, 35, "127.0.0.2")
            stalled += await open_stalled(server.port, 35, "127.0.0.3")
            line = await server.log.wait_for("connection_limit_reached")
            # A real client still gets in (quiet handshakes make room).
            real = await open_channel("127.0.0.1", server.port, client_id)
            assert await echo_once(real) == b"ping"
            await real.aclose()
            lines = list(server.log.lines)
            for stream in stalled:
                await stream.aclose()
    assert "limit=48" in line  # three quarters of 64
    assert not [line for line in lines if "accept_failing" in line or "Traceback" in line]


async def test_a_peer_that_stops_reading_makes_room_once_stalled_long_enough(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A handler blocked sending to a peer that reads nothing waits on that peer: at
    the cap it is evicted like a silent one, not taken for a handler at work."""
    server_id, client_id = await programs.identity(1), await programs.identity(2)

    async def flood_on_request(stream: TaoStream) -> None:
        while data := await stream.receive_some():
            if data == b"flood":
                while True:
                    await stream.send_all(bytes(1 << 20))
            await stream.send_all(data)

    with trio.fail_after(3 * _EVICT_ESTABLISHED_AFTER):
        port = await start_server(
            nursery, server_id, flood_on_request, max_connections=4, max_per_address=None
        )
        stalled = [await attacker_channel(port, client_id, f"127.0.1.{i}") for i in range(1, 5)]
        for stream in stalled:  # each handler sends until the kernel buffers are full
            await stream.send_all(b"flood")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        real = await open_channel("127.0.0.1", port, client_id, handshake_timeout=120)
        assert await echo_once(real) == b"ping"
        waited = trio.current_time() - start
        # Not before the handler has made no progress on its peer that long; well
        # before the idle timeout.
        assert _EVICT_ESTABLISHED_AFTER - 1 <= waited < _EVICT_ESTABLISHED_AFTER + 5
        others: list[trio.abc.Stream] = [real, *stalled]
        for other in others:
            await trio.aclose_forcefully(other)


async def test_a_handler_sending_to_a_reading_peer_is_not_evicted(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server_id, client_id = await programs.identity(1), await programs.identity(2)
    reading_for = 3 * _EVICT_ESTABLISHED_AFTER

    async def download(stream: TaoStream) -> None:
        await stream.receive_some()
        await stream.send_all(bytes(64 << 20))  # one call, far more than the peer reads

    with trio.fail_after(10 * _EVICT_ESTABLISHED_AFTER):
        port = await start_server(nursery, server_id, download, max_connections=1)
        first = await open_channel("127.0.0.1", port, client_id)
        await first.send_all(b"get")
        start = trio.current_time()

        async def read_slowly() -> None:
            # A slow but steady reader: 256 KiB a second, for three eviction periods.
            while trio.current_time() - start < reading_for:
                assert await first.receive_some(256 << 10)
                await trio.sleep(1)
            await first.aclose()

        async with trio.open_nursery() as inner:
            inner.start_soon(read_slowly)
            await trio.testing.wait_all_tasks_blocked()
            second = await open_channel("127.0.0.1", port, client_id, handshake_timeout=300)
            await second.wait_accepted()
            # The second client waited for the download instead of evicting it.
            assert trio.current_time() - start >= reading_for
        await second.aclose()
