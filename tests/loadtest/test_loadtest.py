"""The load generator: measurement from intended send times, rates not sustained, a
worker lost mid-run, loopback only, the report and compare through the CLI.

Servers the tests control run in the test's own trio loop (plain TCP on 127.0.0.1);
``run_load`` runs in a thread beside it and starts real worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import ConfigError
from taonet.loadtest import (
    LoadConfig,
    Progress,
    decode_histogram,
    intended_time,
    loopback_address,
    offered_between,
    run_load,
)
from taonet.loadtest._secret import weighted_cycle

pytest.importorskip("hdrh")


class ControlledEcho:
    """A plain TCP echo server that can stall once, or answer every request late."""

    def __init__(
        self, *, stall_at: int | None = None, delay: float = 0.0, die_at: int | None = None
    ) -> None:
        self.stall_at = stall_at
        self.delay = delay
        self.die_at = die_at
        self.died = trio.Event()
        self.requests = 0
        self.resumed = trio.Event()
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    self.requests += 1
                    if self.requests == self.die_at:
                        self.died.set()  # serve() stops listening and drops everyone
                        await trio.sleep_forever()
                    if self.requests == self.stall_at:
                        await trio.sleep(0.2)  # the stall the generator must show
                        self.resumed.set()
                    elif self.stall_at is not None and self.requests > self.stall_at:
                        await self.resumed.wait()  # everyone waits while it stalls
                    if self.delay:
                        await trio.sleep(self.delay)  # a server slower than the rate
                    await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.handle, listeners)
            task_status.started()
            await self.died.wait()
            nursery.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()


async def _run_against(server: ControlledEcho, **options: Any) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        config = LoadConfig(connect=("127.0.0.1", server.port), tls=False, **options)
        report: dict[str, Any] = await trio.to_thread.run_sync(run_load, config)
        nursery.cancel_scope.cancel()
    return report


@pytest.mark.slow
async def test_open_model_measures_from_intended_send_times() -> None:
    # 200 sends/s over 4 clients; the server stalls 200 ms once, after 100 requests.
    # Only 4 requests are in flight during the stall, but about 40 sends are due in
    # it: measured from their intended times, every one of them shows the wait.
    server = ControlledEcho(stall_at=100)
    with trio.fail_after(120):
        report = await _run_against(
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
        report = await _run_against(
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


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1:80", "192.168.1.1:443", "172.16.0.1:80", "8.8.8.8:53", "0.0.0.0:80",
        "[::]:80", "[::ffff:127.0.0.1]:80", "[fe80::1]:80", "example.com:80",
        "127.0.0.1.nip.io:80", "localhost.evil:80", "127.0.0.1", "127.0.0.1:0",
        "127.0.0.1:70000", ":80",
    ],
)  # fmt: skip
def test_non_loopback_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError):
        loopback_address(address)


def test_loopback_addresses_are_accepted() -> None:
    assert loopback_address("127.0.0.1:8124") == ("127.0.0.1", 8124)
    assert loopback_address("127.9.9.9:1") == ("127.9.9.9", 1)
    assert loopback_address("localhost:80") == ("127.0.0.1", 80)
    assert loopback_address("[::1]:80") == ("::1", 80)


def test_a_config_cannot_name_a_non_loopback_server_nor_exceed_its_bounds() -> None:
    with pytest.raises(ConfigError, match="not a loopback"):
        LoadConfig(connect=("10.0.0.1", 80), tls=False)
    with pytest.raises(ConfigError, match="clients"):
        LoadConfig(clients=100_000)
    with pytest.raises(ConfigError, match="rate"):
        LoadConfig(rate=1e9)
    with pytest.raises(ConfigError, match="exceed"):
        LoadConfig(duration=1e6)


def test_the_cli_refuses_a_non_loopback_target_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--connect", "192.168.0.10:80", "--plain"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "not a loopback address" in done.stderr


@pytest.mark.parametrize("ramp_up", [0.0, 2.0])
def test_the_schedule_offers_the_rate_and_ramps_linearly(ramp_up: float) -> None:
    rate = 100.0
    times = [intended_time(n, rate, ramp_up) for n in range(1000)]
    assert times == sorted(times)
    assert times[0] == 0.0
    # The sends due before t are what offered_between counts.
    for t in (0.5, 1.0, 3.0, 7.5):
        due = sum(1 for x in times if x < t)
        assert abs(due - offered_between(0, t, rate, ramp_up)) <= 1
    if ramp_up:
        assert offered_between(0, ramp_up, rate, ramp_up) == pytest.approx(rate * ramp_up / 2)


@pytest.mark.slow
def test_cli_quick_echo_run_writes_a_report_that_compare_reads(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--quick", "--workers", "2",
         "--rate", "300", "--duration", "1", "--warmup", "0.5", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["taonet_version"]
    assert report["machine"]["cores"] == os.cpu_count()
    assert report["configuration"]["target"] == "echo"
    assert report["configuration"]["workers"] == 2
    assert report["results"]["ok"] > 0
    assert report["results"]["errors"] == {}
    assert set(report["results"]["latency_ms"]) >= {"p50", "p90", "p99", "p99_9", "max"}
    assert [w["status"] for w in report["workers"]] == ["done", "done"]
    assert "p99.9 ms" in done.stdout
    # compare: a second report (the first, twice as fast) side by side.
    faster = json.loads(json.dumps(report))
    faster["results"]["throughput_per_s"] = report["results"]["throughput_per_s"] * 2
    (tmp_path / "b.json").write_text(json.dumps(faster))
    compared = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "compare", str(out / "report.json"),
         str(tmp_path / "b.json"), "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    rows = {row["figure"]: row for row in json.loads(compared.stdout)}
    assert rows["throughput /s"]["b_over_a"] == "2.00x"
    assert rows["p99 ms"]["a"] == report["results"]["latency_ms"]["p99"]
    text = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "compare", str(out / "report.json"),
         str(tmp_path / "b.json")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert text.returncode == 0
    assert "2.00x" in text.stdout


def test_compare_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"not": "a report"}')
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "compare", str(bogus), str(bogus)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not a load-test report" in done.stderr


class SilentServer:
    """Accepts connections and reads, but never answers; counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.open += 1
        self.accepted += 1
        self.most_open = max(self.most_open, self.open)
        try:
            async with stream:
                while await stream.receive_some(65536):
                    pass
        except trio.BrokenResourceError:
            pass
        finally:
            self.open -= 1

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)


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


def test_the_handshake_target_runs_its_own_server_only() -> None:
    with pytest.raises(ConfigError, match="no --connect"):
        LoadConfig(target="handshake", connect=("127.0.0.1", 80), tls=False)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_still_writes_the_partial_report(tmp_path: Path) -> None:
    # A long run (60 s measured); SIGINT to its process group as a terminal's Ctrl-C
    # would, once a first report line shows it is measuring.
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "taonet", "loadtest", "--workers", "2", "--rate", "200",
         "--duration", "60", "--warmup", "0", "--interval", "0.25", "--out", str(out),
         "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:  # bounded: the run itself ends within about 75 s
            if "loadtest_measuring" in line:
                break
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 130, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert report["results"]["ok"] > 0
    assert report["results"]["measured_seconds"] < 30
    assert {w["status"] for w in report["workers"]} == {"interrupted"}
    assert "partial report" in stderr
    assert json.loads(stdout)["interrupted"] is True


def test_the_mix_is_a_weighted_cycle() -> None:
    cycle = weighted_cycle((("read", 90), ("write", 5), ("list", 4), ("rotate", 1)))
    assert len(cycle) == 100
    assert {op: cycle.count(op) for op in set(cycle)} == {
        "read": 90, "write": 5, "list": 4, "rotate": 1,
    }  # fmt: skip
    # Interleaved, not in runs: no ten writes in a row, reads spread over the cycle.
    assert cycle[:3] == ["read", "read", "read"]
    assert max(i for i, op in enumerate(cycle) if op == "write") > 50
    assert weighted_cycle((("read", 2), ("write", 2), ("list", 0))) == ["read", "write"]


@pytest.mark.parametrize(
    "mix",
    [(("read", -1),), (("delete", 1),), (("read", 0), ("write", 0))],
)
def test_a_mix_must_weigh_known_operations(mix: tuple[tuple[str, int], ...]) -> None:
    with pytest.raises(ConfigError, match="mix"):
        LoadConfig(target="secret", mix=mix)


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


class ClosingServer:
    """Accepts each connection and closes it at once."""

    port = 0

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(trio.aclose_forcefully, listeners, task_status=task_status)


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
def test_cli_reports_a_killed_worker_and_still_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "taonet", "loadtest", "--workers", "2", "--rate", "200",
         "--duration", "3", "--warmup", "0", "--interval", "0.25", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:  # bounded: the run itself ends within about 20 s
            if "loadtest_measuring" in line:
                pids = json.loads(line)["workers"]
                break
        else:
            raise AssertionError(f"the run never measured: {process.communicate(timeout=60)}")
        os.kill(pids[1], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 1, stderr
    assert "taonet: error: worker 1 died after" in stderr
    assert f"report written to {out / 'report.json'}" in stderr
    report = json.loads((out / "report.json").read_text())
    assert [w["status"] for w in report["workers"]] == ["done", "died"]
    assert report["workers"][1]["pid"] == pids[1]
    assert report["results"]["ok"] > 0
    assert "worker 1 died" in stdout


def test_importing_the_package_imports_neither_extra() -> None:
    # structlog imports rich by itself when it is installed: only what we add counts.
    code = (
        "import sys, structlog; before = set(sys.modules); "
        "import taonet.loadtest, taonet.cli._main; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('hdrh', 'rich')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["hdrh", "rich"])
def test_a_missing_extra_is_one_line_saying_what_to_install(missing: str) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None; "
        "from taonet.cli._main import main; sys.exit(main(['loadtest', '--quick']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "pip install 'taonet[loadtest]'" in done.stderr


@pytest.mark.slow
async def test_a_server_that_dies_mid_run_shows_its_errors_and_when() -> None:
    # 2 workers at 200/s in all; the server drops every connection and stops
    # listening at its 200th request (about 1 s in): the rest are refused.
    server = ControlledEcho(die_at=200)
    with trio.fail_after(120):
        report = await _run_against(
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
        report = await _run_against(
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
        report = await _run_against(
            server, workers=2, model="closed", clients=2, duration=1.0, warmup=0.0, interval=0.5
        )
    assert report["rate"]["model"] == "closed"
    assert 100 <= report["rate"]["achieved_per_s"] <= 200
    assert report["results"]["latency_ms"]["p50"] >= 10
    assert report["results"]["errors"] == {}
