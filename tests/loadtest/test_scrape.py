"""Scraping a server's /metrics during a run: the exposition of a real ServiceMetrics
parsed and its percentiles estimated from buckets, and hostile endpoints (garbage,
huge, slow, silent, wrong status, off loopback) that must neither hang nor break a
run: each scrape is bounded in time and size and a failed one is counted."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from taonet import ConfigError
from taonet.loadtest import MissingExtraError
from taonet.loadtest._scrape import (
    MAX_BYTES,
    MAX_SERIES,
    ScrapeError,
    Scraper,
    fetch,
    parse_exposition,
    quantile,
)
from taonet_services.metrics import ServiceMetrics
from tests.loadtest.servers import ControlledEcho, run_against

TIMEOUT = 30

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> tuple[str, int]:
    async def guarded(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper gave up: what it must do

    listeners = await nursery.start(trio.serve_tcp, guarded, 0)
    return "127.0.0.1", int(listeners[0].socket.getsockname()[1])


async def _read_request(stream: trio.SocketStream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        data += chunk


async def _garbage(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    await stream.send_all(b"\x00\xff not http at all\r\n\r\n\x01\x02")


async def _bad_exposition(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    body = b'taonet_domain_service_requests_total{operation="certify" 12 oops\n{{{\n'
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)


async def _huge(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
    line = b"# HELP x " + b"y" * 1000 + b"\n"
    while True:  # without end: the scraper must stop reading at its limit
        await stream.send_all(line * 64)


async def _slow(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    for byte in b"HTTP/1.1 200 OK\r\n\r\n" + b"#" * 10_000:
        await stream.send_all(bytes([byte]))
        await trio.sleep(0.05)  # a trickle: only the scraper's own bound stops it


async def _silent(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def _server_error(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    await stream.send_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (_garbage, "not_http"),
        (_bad_exposition, "unparsable"),
        (_huge, "too_large"),
        (_slow, "timeout"),
        (_silent, "timeout"),
        (_server_error, "status"),
    ],
)
async def test_a_hostile_endpoint_costs_one_bounded_failed_scrape(
    handler: Handler, kind: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, handler)
            scraper = Scraper(address, interval=0.2, run_seconds=1.0)
            await trio.to_thread.run_sync(scraper.scrape, 0.0)
            nursery.cancel_scope.cancel()
    assert scraper.snapshots == []
    assert dict(scraper.failures) == {kind: 1}
    section = scraper.section(warmup=0.0)
    assert section["failed_scrapes"] == {kind: 1}
    assert section["measured"] is None
    assert section["timeline"] == []


async def test_a_closed_port_is_a_failed_scrape() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(TIMEOUT), pytest.raises(ScrapeError) as caught:
        await trio.to_thread.run_sync(lambda: fetch(("127.0.0.1", port), timeout=1.0))
    assert caught.value.kind == "unreachable"


def test_only_loopback_endpoints_are_scraped() -> None:
    for address in (("10.0.0.1", 9100), ("192.0.2.7", 80), ("::ffff:8.8.8.8", 9100)):
        with pytest.raises(ConfigError):
            Scraper(address, interval=1.0, run_seconds=10.0)
        with pytest.raises(ConfigError):
            fetch(address, timeout=0.1)


async def test_many_series_and_long_labels_are_bounded() -> None:
    lines = [
        f'taonet_domain_service_requests_total{{operation="op{i}{"x" * 200}",outcome="ok"}} {i}'
        for i in range(1000)
    ]
    text = "# TYPE taonet_domain_service_requests_total counter\n" + "\n".join(lines) + "\n"
    _, snapshot = parse_exposition(text, 0.0, None)
    assert len(snapshot.requests) == MAX_SERIES
    assert all(len(key) <= 2 * 40 + 1 for key in snapshot.requests)
    assert len(text.encode()) < MAX_BYTES


def _metrics_after(observations: list[float]) -> ServiceMetrics:
    metrics = ServiceMetrics("domain_service")
    for seconds in observations:
        metrics.request("certify", "ok", seconds)
        metrics.audit_written(seconds / 2)
    metrics.request("certify", "unauthorized", 0.001)
    metrics.channel_opened()
    return metrics


def test_a_real_exposition_is_parsed_and_its_percentiles_estimated() -> None:
    before = parse_exposition(ServiceMetrics("domain_service").exposition().decode(), 0.0, None)
    # 100 requests: 90 between 1 and 2.5 ms, 10 between 25 and 50 ms.
    metrics = _metrics_after([0.002] * 90 + [0.03] * 10)
    service, after = parse_exposition(metrics.exposition().decode(), 2.0, None)
    assert service == "domain_service"
    assert after.requests == {"certify:ok": 100.0, "certify:unauthorized": 1.0}
    assert after.open_channels == 1.0
    scraper = Scraper(("127.0.0.1", 9), interval=1.0, run_seconds=2.0)
    scraper.snapshots.extend([before[1], after])
    section = scraper.section(warmup=0.0)
    run = section["run"]
    assert run["requests"] == {"certify:ok": 100, "certify:unauthorized": 1}
    assert run["per_s"]["certify:ok"] == 50.0
    assert run["ok_per_s"] == 50.0
    p50, p99 = run["latency_ms_est"]["p50"], run["latency_ms_est"]["p99"]
    assert 1.0 <= p50 <= 2.5  # within the bucket that holds it
    assert 25.0 <= p99 <= 50.0
    assert run["audit_writes"] == 100
    assert run["audit_write_ms_est"]["mean"] == pytest.approx(2.4)  # (90 x 1 ms + 10 x 15 ms) / 100
    assert "estimates from the histogram buckets" in section["note"]


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, ((1.0, 0.0), (2.0, 10.0), (math.inf, 10.0)), 1.5),
        (0.99, ((1.0, 0.0), (2.0, 10.0), (math.inf, 10.0)), 1.99),
        (0.5, ((1.0, 10.0), (math.inf, 10.0)), 0.5),
        (0.99, ((1.0, 0.0), (math.inf, 10.0)), 1.0),  # beyond the last bound: that bound
        (0.5, ((1.0, 0.0), (math.inf, 0.0)), None),  # nothing observed
        (0.5, (), None),
    ],
)
def test_quantile_is_linear_within_a_bucket(
    q: float, buckets: tuple[tuple[float, float], ...], expected: float | None
) -> None:
    value = quantile(q, buckets)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


@pytest.mark.slow
async def test_a_run_whose_metrics_endpoint_trickles_still_finishes_and_counts_it() -> None:
    server = ControlledEcho()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, _slow)
            report: dict[str, Any] = await run_against(
                server, workers=1, rate=100, clients=2, duration=1.0, warmup=0.0,
                interval=0.25, server_metrics=address,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    assert report["results"]["errors"] == {}
    assert report["results"]["ok"] >= 90
    section = report["server"]
    assert section["scrapes"] == 0
    assert section["failed_scrapes"]["timeout"] >= 3
    assert report["configuration"]["server_metrics"] == f"{address[0]}:{address[1]}"


def test_without_prometheus_client_the_scraper_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client.parser", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'taonet\[loadtest\]'"):
        Scraper(("127.0.0.1", 9100), interval=1.0, run_seconds=10.0)


# --- Review A7 finding 3: a hostile /metrics must not put Infinity or NaN in a report --

_HEAD = (
    "# TYPE taonet_secret_server_requests counter\n"
    "# TYPE taonet_secret_server_request_seconds histogram\n"
    "# TYPE taonet_secret_server_audit_write_seconds histogram\n"
)


def _exposition(
    count: float, *, bounds: tuple[str, ...] = ("0.01",), audit_sum: float = 1.0
) -> str:
    """A secret server's exposition whose every counter is ``count``."""
    lines = [
        f'taonet_secret_server_requests_total{{operation="read",outcome="ok"}} {count!r}',
        f'taonet_secret_server_requests_total{{operation="write",outcome="ok"}} {count!r}',
    ]
    for op in ("read", "write"):
        for le in (*bounds, "+Inf"):
            lines.append(
                f'taonet_secret_server_request_seconds_bucket{{operation="{op}",le="{le}"}}'
                f" {count!r}"
            )
        lines.append(f'taonet_secret_server_request_seconds_count{{operation="{op}"}} {count!r}')
        lines.append(f'taonet_secret_server_request_seconds_sum{{operation="{op}"}} 1')
    for le in (*bounds, "+Inf"):
        lines.append(f'taonet_secret_server_audit_write_seconds_bucket{{le="{le}"}} {count!r}')
    lines.append(f"taonet_secret_server_audit_write_seconds_count {count!r}")
    lines.append(f"taonet_secret_server_audit_write_seconds_sum {audit_sum!r}")
    return _HEAD + "\n".join(lines) + "\n"


def _scripted(bodies: list[str]) -> Handler:
    """An endpoint answering its n-th scrape with ``bodies[n]`` (the last one after)."""
    served = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal served
        await _read_request(stream)
        body = bodies[min(served, len(bodies) - 1)].encode()
        served += 1
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return handler


# The review's hostile endpoint: counters jumping between 1 and 1e308 (and past a
# float: 1e400 reads as inf), bucket bounds of 1e308 and -1e308, a negative counter.
_HOSTILE = [
    _exposition(1.0),
    _exposition(1e308, bounds=("1e308",)),
    _exposition(2.0, bounds=("-1e308",)),
    _exposition(1e400, bounds=("1e308",)),
    _exposition(-5.0),
    _exposition(3.0, bounds=("-1", "1e308", "0.01"), audit_sum=1e308),
    _exposition(float(2**53), bounds=(str(float(2**53)),)),
    _exposition(4.0),
]


def _all_numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _all_numbers(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _all_numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


async def test_a_hostile_endpoint_never_puts_a_non_finite_figure_in_the_section() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, _scripted(_HOSTILE))
            scraper = Scraper(address, interval=1.0, run_seconds=len(_HOSTILE))
            for t in range(len(_HOSTILE)):
                await trio.to_thread.run_sync(scraper.scrape, float(t))
            nursery.cancel_scope.cancel()
    # 1e308 and 1e400 counters, the negative one and the 1e308 audit sum: refused,
    # counted, left out.
    assert dict(scraper.failures) == {"out_of_range": 4}
    section = scraper.section(warmup=0.0)
    json.dumps(section, allow_nan=False)  # valid JSON: no Infinity, no NaN
    assert all(math.isfinite(n) and n >= 0 for n in _all_numbers(section))
    # The -1e308 and 1e308 bounds were dropped: every estimate is within a real bucket.
    for interval in section["timeline"]:
        for value in interval["latency_ms_est"].values():
            assert value is None or value <= 2**53 * 1000
    assert len(scraper.snapshots) == 4
    assert all(
        i["audit_write_ms_est"]["mean"] is None or math.isfinite(i["audit_write_ms_est"]["mean"])
        for i in section["timeline"]
    )


async def test_a_refused_scrape_is_left_out_not_a_fake_spike() -> None:
    # 10, then a counter gone negative (a hostile or broken server), then 20: the
    # interval is measured from the last good scrape, 10 requests, not 20 from a 0.
    bodies = [_exposition(10.0), _exposition(-3.0), _exposition(20.0)]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, _scripted(bodies))
            scraper = Scraper(address, interval=1.0, run_seconds=3.0)
            for t in range(3):
                await trio.to_thread.run_sync(scraper.scrape, float(t))
            nursery.cancel_scope.cancel()
    assert dict(scraper.failures) == {"out_of_range": 1}
    section = scraper.section(warmup=0.0)
    assert [i["requests"] for i in section["timeline"]] == [{"read:ok": 10, "write:ok": 10}]


@pytest.mark.parametrize("value", ["NaN", "-1", "1e308", "+Inf", str(2**53 + 2**11)])
def test_a_sample_out_of_range_refuses_the_scrape(value: str) -> None:
    text = _HEAD + f'taonet_secret_server_requests_total{{operation="read",outcome="ok"}} {value}\n'
    with pytest.raises(ScrapeError) as caught:
        parse_exposition(text, 0.0, None)
    assert caught.value.kind == "out_of_range"


@pytest.mark.slow
async def test_a_run_against_a_hostile_endpoint_writes_a_valid_json_report() -> None:
    """The review's repro on real processes: a run scraping the hostile endpoint above
    each interval; its report is valid JSON and its server figures finite."""
    server = ControlledEcho()
    bodies = _HOSTILE * 4
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, _scripted(bodies))
            report: dict[str, Any] = await run_against(
                server, workers=1, rate=50, clients=2, duration=2.0, warmup=0.5,
                interval=0.25, server_metrics=address,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    assert report["results"]["ok"] >= 50
    text = json.dumps(report, allow_nan=False)
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the report"))
    section = report["server"]
    assert section["failed_scrapes"].get("out_of_range", 0) >= 2
    assert section["scrapes"] >= 2
    assert all(math.isfinite(n) for n in _all_numbers(section))
