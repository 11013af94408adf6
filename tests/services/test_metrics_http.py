"""The metrics endpoint (``serve_metrics``) on real sockets on 127.0.0.1, and the bounds
an attacker meets: many connections, a huge request head, a slow one, a client that
never reads, an address off loopback; and ServiceMetrics' labels from fixed sets only."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from taonet import ConfigError
from taonet.channel import HandshakeOutcome
from taonet_services._metrics_http import DEFAULT_HEAD_TIMEOUT, _read_head
from taonet_services.metrics import (
    DEFAULT_MAX_REQUEST,
    OTHER,
    ServiceMetrics,
    serve_metrics,
)

MAX_CONNECTIONS = 3
TIMEOUT = 5.0


@pytest.fixture
async def metrics() -> ServiceMetrics:
    return ServiceMetrics("secret_server")


@pytest.fixture
async def port(metrics: ServiceMetrics, nursery: trio.Nursery) -> int:
    listeners = await nursery.start(
        functools.partial(
            serve_metrics,
            metrics.exposition,
            0,
            max_connections=MAX_CONNECTIONS,
            connection_timeout=TIMEOUT,
        )
    )
    return int(listeners[0].socket.getsockname()[1])


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, read until the server closes; what it sent (reset: so far)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        return await read_to_end(stream)


async def read_to_end(stream: trio.SocketStream) -> bytes:
    got = b""
    try:
        while chunk := await stream.receive_some(65536):
            got += chunk
            assert len(got) < 1 << 26
    except trio.BrokenResourceError:  # closed with our bytes unread: a reset
        pass
    return got


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_get_serves_the_exposition(port: int, metrics: ServiceMetrics) -> None:
    with trio.fail_after(10):
        metrics.request("read", "ok", 0.002)
        answer = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status(answer) == 200
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert b"Connection: close" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = families["taonet_secret_server_requests"]
    (sample,) = [s for s in requests.samples if s.name.endswith("_total")]
    assert sample.labels == {"operation": "read", "outcome": "ok"}
    assert sample.value == 1


async def test_head_and_query_and_wrong_requests(port: int) -> None:
    with trio.fail_after(10):
        head = await exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status(head) == 200
        assert head.endswith(b"\r\n\r\n")  # no body
        assert status(await exchange(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")) == 200
        assert status(await exchange(port, b"GET / HTTP/1.1\r\n\r\n")) == 404
        assert status(await exchange(port, b"GET /metricsx HTTP/1.1\r\n\r\n")) == 404
        assert status(await exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n")) == 405
        assert status(await exchange(port, b"GET /metrics\r\n\r\n")) == 400
        assert status(await exchange(port, b"\x16\x03\x01\x02\x00\r\n\r\n")) == 400


async def test_idle_connections_cannot_keep_a_scraper_out(
    port: int, autojump_clock: trio.testing.MockClock
) -> None:
    """An attacker holding every slot with connections that never finish their request
    (and reopening them) does not keep a scraper out: each scrape takes the place of the
    oldest idle connection, which is closed unanswered."""
    with trio.fail_after(60):
        holders = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        for holder in holders:
            await holder.send_all(b"G")
        for _ in range(2 * MAX_CONNECTIONS):
            assert status(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
            # The attacker reopens what it lost.
            holders.append(await trio.open_tcp_stream("127.0.0.1", port))
            await holders[-1].send_all(b"G")
        for holder in holders:
            async with holder:
                assert await read_to_end(holder) == b""  # never answered


async def test_many_connections_are_bounded(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """With every slot held by a request being answered (an answer its client does not
    read), connections past the cap are closed at once, unanswered; the held ones are
    cut off after the timeout, and then a scrape is served again."""
    payload = b"x" * (32 << 20)  # more than the sockets' buffers hold
    listeners = await nursery.start(
        functools.partial(
            serve_metrics,
            lambda: payload,
            0,
            max_connections=MAX_CONNECTIONS,
            connection_timeout=TIMEOUT,
        )
    )
    port = int(listeners[0].socket.getsockname()[1])
    with trio.fail_after(60):
        holders = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        for holder in holders:
            await holder.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        # Each holder's answer has begun (so the server has its request).
        for holder in holders:
            assert (await holder.receive_some(12)).startswith(b"HTTP/1.1 200")
        extra_started = trio.current_time()
        for _ in range(10):
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            async with extra:
                assert await read_to_end(extra) == b""  # closed unanswered...
            assert trio.current_time() - extra_started < TIMEOUT  # ...at once
        await trio.sleep(TIMEOUT + 1)  # the holders read nothing meanwhile
        for holder in holders:
            async with holder:
                assert len(await read_to_end(holder)) < len(payload)  # cut off
        answer = await exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status(answer) == 200


async def test_huge_request_head_is_refused_unread(port: int) -> None:
    """A head longer than the limit is answered 431 having read no more than the limit
    (the rest is left unread: the server closes)."""
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (DEFAULT_MAX_REQUEST + 1000)
            await stream.send_all(big)
            answer = await read_to_end(stream)
        assert status(answer) == 431
        # Still serving.
        assert status(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


async def test_read_head_reads_no_more_than_its_limit() -> None:
    stream = trio.testing.MemoryReceiveStream()
    stream.put_data(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (1 << 20))
    assert await _read_head(stream, 8192) == b""
    assert len(await stream.receive_some()) == 26 + (1 << 20) - 8192  # left unread


async def test_slow_request_is_closed_after_the_timeout(
    port: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that sends its request a byte a second is closed after the head
    timeout (shorter than the connection's)."""
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()

        async def dribble() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for byte in b"GET /metrics HTTP/1.1\r\nHost: slow" + b"a" * 100:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            got = await read_to_end(stream)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        await stream.aclose()
    assert got == b""
    assert DEFAULT_HEAD_TIMEOUT <= elapsed < DEFAULT_HEAD_TIMEOUT + 1.5


async def test_client_that_never_reads_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An answer the client never takes holds its connection no longer than the timeout."""
    payload = b"x" * (32 << 20)  # more than the sockets' buffers hold
    listeners = await nursery.start(
        functools.partial(
            serve_metrics, lambda: payload, 0, max_connections=1, connection_timeout=TIMEOUT
        )
    )
    port = int(listeners[0].socket.getsockname()[1])
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()
        await stream.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        await trio.sleep(TIMEOUT + 1)  # reads nothing meanwhile
        got = await read_to_end(stream)
        await stream.aclose()
        assert len(got) < len(payload)  # cut off
        assert trio.current_time() - started < TIMEOUT + 5
        # Its slot is free again (max_connections=1).
        answer = await exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status(answer) == 200


@pytest.mark.parametrize("min_interval", [0.0, 1000.0])
async def test_an_exposition_is_made_at_most_once_per_interval(
    nursery: trio.Nursery, min_interval: float
) -> None:
    """Scrapes in a loop cost one exposition per interval: within it, the same bytes."""
    made: list[int] = []

    def exposition() -> bytes:
        made.append(len(made))
        return b"exposition %d\n" % len(made)

    listeners = await nursery.start(
        functools.partial(serve_metrics, exposition, 0, min_interval=min_interval)
    )
    port = int(listeners[0].socket.getsockname()[1])
    with trio.fail_after(30):
        bodies = [
            (await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")).partition(b"\r\n\r\n")[2]
            for _ in range(20)
        ]
    if min_interval:
        assert bodies == [b"exposition 1\n"] * 20
        assert len(made) == 1
    else:
        assert bodies == [b"exposition %d\n" % (i + 1) for i in range(20)]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com", ""])
async def test_off_loopback_is_refused_unless_public(host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        await serve_metrics(lambda: b"", 0, host=host)


async def test_public_may_listen_off_loopback(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        listeners = await nursery.start(
            functools.partial(serve_metrics, lambda: b"", 0, host="0.0.0.0", public=True)
        )
    assert listeners[0].socket.getsockname()[0] == "0.0.0.0"


def test_labels_come_from_fixed_sets() -> None:
    """A principal, a secret's name or any text from a client never becomes a label."""
    metrics = ServiceMetrics("secret_server")
    principal = "key([0a0b]).Program([cafe])"
    metrics.request("/app/db-password", principal, 0.01)
    metrics.request(principal, "ok", 0.01)
    for i in range(100):
        metrics.request("read", f"code {i}", 0.01)
    for outcome in HandshakeOutcome:
        metrics.handshake(outcome)
    values = set(metrics.label_values())
    assert "/app/db-password" not in values
    assert principal not in values
    assert not any(value.startswith("code ") for value in values)
    assert OTHER in values
    text = metrics.exposition().decode()
    assert "db-password" not in text
    assert "cafe" not in text
    # Bounded: the series of requests are at most the known pairs and "other".
    requests = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "taonet_secret_server_requests"
        for s in f.samples
        if s.name.endswith("_total")
    ]
    assert {(s.labels["operation"], s.labels["outcome"]) for s in requests} == {
        (OTHER, OTHER),
        (OTHER, "ok"),
        ("read", OTHER),
    }
    assert sum(s.value for s in requests) == 102


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        ServiceMetrics("quote_service")


def test_prometheus_client_is_imported_only_when_metrics_are_made() -> None:
    code = (
        "import sys\n"
        "import taonet_services.metrics, taonet_services.secret_server\n"
        "import taonet_services.domain_service, taonet.cli._secret_server_cmd\n"
        "import taonet.cli._service_cmd\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "taonet_services.metrics.ServiceMetrics('domain_service')\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_public_objects_report_their_public_module() -> None:
    import taonet_services.metrics as public

    for name in public.__all__:
        if not name.isupper():  # constants have no module
            assert getattr(public, name).__module__ == "taonet_services.metrics", name
