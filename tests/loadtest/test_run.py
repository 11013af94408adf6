"""The load generator against servers the tests control and its own targets:
measurement from intended send times, rates not sustained, failures and a server
that dies, a worker lost mid-run, warm-up and ramp-up, the closed model, the
handshake and secret targets. ``run_load`` runs in a thread and starts real worker
processes (multiprocessing spawn)."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from taonet.loadtest import LoadConfig, Progress, decode_histogram, run_load
from tests.loadtest.servers import ClosingServer, ControlledEcho, SilentServer, run_against


@pytest.mark.slow
async def test_open_model_measures_from_intended_send_times() -> None:
    # 200 sends/s over 4 clients; the server stalls 200 ms once, after 100 requests.
    # Only 4 requests are in flight during the stall, but about 40 sends are due in
    # it: measured from their intended times, every one of them shows the wait.
    server = ControlledEcho(stall_at=100)
    with trio.fail_after(120):
        report = await run_against(
            server, workers=1, rate=200, clients=4, duration=2.0, warmup=0.0, interval=0.5
        )
    assert server.resumed.is_set()
    histogram = decode_histogram(report["results"]["histogram"])
    total = histogram.get_total_count()
    assert total == report["results"]["ok"] >= 350
    # At least 3 % of ~400 samples (12, three times the 4 clients) waited >= 100 ms:
    # a generator measuring from the actual send would show at most 4.
    assert histogram.get_value_at_percentile(97.0) >= 100_000
    assert report["results"]["latency_ms"]["max"] >= 190
    assert report["results"]["errors"] == {}


@pytest.mark.slow
async def test_a_rate_the_server_cannot_sustain_is_reported_with_the_achieved_rate() -> None:
    # 2 clients and 20 ms per answer: at most about 100/s of the 400/s offered.
    server = ControlledEcho(delay=0.02)
    with trio.fail_after(120):
        report = await run_against(
            server, workers=1, rate=400, clients=2, duration=1.5, warmup=0.0, interval=0.5
        )
    rate = report["rate"]
    assert rate["sustained"] is False
    assert rate["target_per_s"] == 400
    assert 0 < rate["achieved_per_s"] < 150
    assert rate["missed"] > 300
    assert "NOT sustained" in rate["note"]
    assert f"{rate['achieved_per_s']:g} requests/s achieved" in rate["note"]
    # The sends waited for the clients: their latency grew, not the rate shrank silently.
    assert report["results"]["latency_ms"]["max"] >= 500


@pytest.mark.slow
async def test_a_worker_killed_mid_run_is_reported_and_the_run_finishes() -> None:
    killed: list[int] = []

    def kill_second_worker(state: Progress) -> None:
        if not killed and len(state.workers) == 2:
            killed.append(state.workers[1].pid)
            os.kill(state.workers[1].pid, signal.SIGKILL)

    config = LoadConfig(rate=400, clients=4, workers=2, duration=2.0, warmup=0.0, interval=0.25)
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(
            lambda: run_load(config, on_progress=kill_second_worker)
        )
    assert killed
    first, second = report["workers"]
    assert first["status"] == "done"
    assert second["status"] == "died"
    assert second["pid"] == killed[0]
    assert second["exit_code"] == -signal.SIGKILL
    assert "worker 1 died" in second["note"]
    assert report["results"]["ok"] > 0  # what both reported before the loss
    assert report["rate"]["sustained"] is False
    assert "cut short" in report["rate"]["note"]


@pytest.mark.slow
async def test_a_server_that_never_answers_costs_timeouts_within_the_bounds() -> None:
    # Every request times out after 0.2 s and its connection is closed; the run ends
    # by itself, and each client opened a connection only after closing its last one:
    # one connection per request that timed out, and no more.
    server = SilentServer()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            config = LoadConfig(
                connect=("127.0.0.1", server.port), tls=False, workers=1, rate=100, clients=3,
                duration=1.0, warmup=0.0, interval=0.5, request_timeout=0.2,
            )  # fmt: skip
            report = await trio.to_thread.run_sync(run_load, config)
            nursery.cancel_scope.cancel()
    assert report["results"]["ok"] == 0
    assert report["results"]["errors"]["timeout"] >= 10
    assert set(report["results"]["errors"]) == {"timeout"}
    timeouts = report["results"]["errors"]["timeout"]
    assert timeouts <= server.accepted <= timeouts + 3
    assert report["rate"]["sustained"] is False


@pytest.mark.slow
async def test_handshake_target_makes_real_tao_channels() -> None:
    config = LoadConfig(
        target="handshake", workers=1, rate=50, clients=2, duration=1.0, warmup=0.0, interval=0.5
    )
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(run_load, config)
    assert report["results"]["errors"] == {}
    assert report["results"]["ok"] >= 40
    assert report["configuration"]["target"] == "handshake"


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [False, True])
async def test_secret_target_runs_every_operation_of_the_mix(fresh: bool) -> None:
    config = LoadConfig(
        target="secret", workers=1, rate=60, clients=2, duration=1.0, warmup=0.0,
        interval=0.5, objects=5, request_size=48, fresh=fresh,
        mix=(("read", 1), ("write", 1), ("list", 1), ("rotate", 1)),
    )  # fmt: skip
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(run_load, config)
    assert report["results"]["errors"] == {}
    assert report["results"]["ok"] >= 50
    assert report["configuration"]["mix"] == {"read": 1, "write": 1, "list": 1, "rotate": 1}
    operations = report["results"]["operations"]
    assert set(operations) == {"read", "write", "list", "rotate"}
    assert sum(o["ok"] for o in operations.values()) == report["results"]["ok"]
    assert all(o["ok"] >= 10 and o["latency_ms"]["p99"] > 0 for o in operations.values())
    assert report["rate"]["sustained"] is True


@pytest.mark.slow
async def test_a_rate_answered_with_failures_is_not_sustained() -> None:
    server = ClosingServer()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            config = LoadConfig(
                connect=("127.0.0.1", server.port), tls=False, workers=1, rate=100, clients=2,
                duration=1.0, warmup=0.0, interval=0.5,
            )  # fmt: skip
            report = await trio.to_thread.run_sync(run_load, config)
            nursery.cancel_scope.cancel()
    assert report["results"]["ok"] == 0
    assert report["results"]["error_count"] >= 90
    assert report["rate"]["sustained"] is False
    assert "requests failed" in report["rate"]["note"]


@pytest.mark.slow
async def test_a_server_that_dies_mid_run_shows_its_errors_and_when() -> None:
    # 2 workers at 200/s in all; the server drops every connection and stops
    # listening at its 200th request (about 1 s in): the rest are refused.
    server = ControlledEcho(die_at=200)
    with trio.fail_after(120):
        report = await run_against(
            server, workers=2, rate=200, clients=4, duration=2.0, warmup=0.0, interval=0.25
        )
    assert server.died.is_set()
    results = report["results"]
    assert 150 <= results["ok"] < 200
    assert results["errors"]["ECONNREFUSED"] >= 100
    assert set(results["errors"]) <= {"ECONNREFUSED", "connection_broken", "ECONNRESET", "timeout"}
    assert 0.5 <= results["first_error_at_s"] <= 1.5
    assert [w["status"] for w in report["workers"]] == ["done", "done"]
    assert report["rate"]["sustained"] is False
    assert any(i["errors"] and not i["ok"] for i in report["timeline"])


@pytest.mark.slow
async def test_warm_up_is_excluded_and_the_rate_ramps_up() -> None:
    # 1 s of ramp-up to 200/s inside 1 s of warm-up, then 1 s measured at 200/s.
    server = ControlledEcho()
    with trio.fail_after(120):
        report = await run_against(
            server, workers=1, rate=200, clients=4, duration=1.0, warmup=1.0, ramp_up=1.0,
            interval=0.25,
        )  # fmt: skip
    results = report["results"]
    assert abs(results["warmup_requests"] - 100) <= 3  # the ramp's triangle: 200 * 1 / 2
    assert 190 <= results["ok"] <= 201  # a loaded machine may miss a send at the very end
    assert server.requests == results["warmup_requests"] + results["ok"]
    timeline = report["timeline"]
    ramp = [i["warmup"] for i in timeline[:4]]
    assert ramp == sorted(ramp)  # growing while the rate ramps up
    assert ramp[0] < ramp[3]
    assert report["rate"]["target_per_s"] == 200
    assert report["rate"]["sustained"] is True


@pytest.mark.slow
async def test_closed_model_keeps_its_clients_busy() -> None:
    server = ControlledEcho(delay=0.01)  # each answer takes 10 ms: 2 clients, ~200/s
    with trio.fail_after(120):
        report = await run_against(
            server, workers=2, model="closed", clients=2, duration=1.0, warmup=0.0, interval=0.5
        )
    assert report["rate"]["model"] == "closed"
    assert 100 <= report["rate"]["achieved_per_s"] <= 200
    assert report["results"]["latency_ms"]["p50"] >= 10
    assert report["results"]["errors"] == {}


@pytest.mark.slow
async def test_an_answer_of_other_bytes_is_no_echo() -> None:
    """A server that answers each request with as many bytes, but not the ones sent (a
    server flooding whatever it likes), gets no ``ok``: every request is a
    ProtocolError."""
    server = ControlledEcho(garble=True)
    with trio.fail_after(120):
        report = await run_against(
            server, workers=1, rate=100, clients=2, duration=1.0, warmup=0.0, interval=0.5
        )
    assert server.requests > 0
    results = report["results"]
    assert results["ok"] == 0
    assert results["errors"]["ProtocolError"] >= 50
    assert report["rate"]["sustained"] is False
