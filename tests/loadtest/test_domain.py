"""The domain target: real certificates from a real domain service (checked against
the run's policy key and found in its audit log), refusals and a service of another
domain counted by kind, a service killed mid-run, and the server's own figures
scraped during secret and domain runs (matching what the clients counted)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from taonet import TaoError, certs
from taonet.channel import ChannelIdentity
from taonet.domain import program_subprin
from taonet.loadtest import LoadConfig, Progress, run_load
from taonet.loadtest._domain import (
    DomainClient,
    DomainCredentials,
    LocalDomain,
    make_attestations,
    make_local_domain,
    running_domain_service,
)
from taonet.loadtest._worker import error_kind
from taonet_services.domain_service import AUDIT_FILE, AuditLog

TIMEOUT = 60


async def _one(client: DomainClient) -> None:
    await client.prepare()
    await client.request()


def _credentials(base: Path) -> tuple[LocalDomain, DomainCredentials]:
    base.mkdir(parents=True, exist_ok=True)
    local = make_local_domain(base)
    creds = DomainCredentials(
        local.domain.policy_cert, str(base / "host"), local.password, local.client_name
    )
    return local, creds


@pytest.mark.parametrize("fresh", [False, True])
async def test_domain_client_gets_certificates_that_chain_to_the_policy_key_and_are_logged(
    tmp_path: Path, fresh: bool
) -> None:
    local, creds = _credentials(tmp_path)
    pool = make_attestations(creds, 4)
    assert len({key for _, _, key in pool}) == 4  # a fresh key each
    anonymous = ChannelIdentity.anonymous(creds.policy_cert)
    issued = []
    with trio.fail_after(TIMEOUT):
        async with running_domain_service(local) as (_, address):
            client = DomainClient(address, creds, anonymous, pool, start=0, step=1, fresh=fresh)
            try:
                for _ in range(6):  # past the pool: its keys are sent again
                    await client.prepare()
                    await client.request()
                    await client.settle()
                    assert client.last_certificate is not None
                    issued.append(client.last_certificate)
            finally:
                await client.aclose()
    anchor = anonymous.anchor
    for n, cert in enumerate(issued):
        # Checked again here, independently of the client: signed by this run's
        # policy key, for the key that was attested, naming the client program.
        again = certs.verify_program_certificate(anchor, cert.der, now_ns=time.time_ns())
        assert again.public_key_der == pool[n % 4][2]
        assert again.principal == creds.program
    with AuditLog.open(Path(local.domain.path) / AUDIT_FILE) as audit:
        for cert in issued:
            event = audit.issued(cert.serial)
            assert event is not None
            assert event.kind == "issued"
            assert event.principal == str(creds.program)
    assert len({c.serial for c in issued}) == 6


async def test_refusals_and_a_service_of_another_domain_are_counted_by_kind(
    tmp_path: Path,
) -> None:
    # An attacker's program the guard does not name, attested by the run's host: the
    # service refuses it, and the generator counts the refusal as refused_unauthorized.
    local, creds = _credentials(tmp_path / "a")
    outsider = local.host.name.extend(program_subprin(b"\x66" * 32))
    refused_creds = DomainCredentials(creds.policy_cert, creds.host_dir, creds.password, outsider)
    # A client that trusts another domain's policy key: the service it reaches is not
    # one of its domain, and nothing it says is taken.
    _, other = _credentials(tmp_path / "b")
    with trio.fail_after(TIMEOUT):
        async with running_domain_service(local) as (_, address):
            for fresh in (False, True):
                refused = DomainClient(
                    address, refused_creds,
                    ChannelIdentity.anonymous(refused_creds.policy_cert),
                    make_attestations(refused_creds, 1), start=0, step=1, fresh=fresh,
                )  # fmt: skip
                with pytest.raises(TaoError) as caught:
                    await _one(refused)
                await refused.aclose()
                assert error_kind(caught.value) == "refused_unauthorized"
                assert refused.last_certificate is None

                stranger = DomainClient(
                    address, other, ChannelIdentity.anonymous(other.policy_cert),
                    make_attestations(other, 1), start=0, step=1, fresh=fresh,
                )  # fmt: skip
                with pytest.raises(TaoError) as caught:
                    await _one(stranger)
                await stranger.aclose()
                assert error_kind(caught.value) == "AuthenticationError"
                assert stranger.last_certificate is None


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [False, True])
async def test_domain_target_issues_certificates_and_the_server_counts_the_same(
    tmp_path: Path, fresh: bool
) -> None:
    state = tmp_path / "state"
    config = LoadConfig(
        target="domain", workers=1, rate=80, clients=4, duration=1.5, warmup=0.5,
        interval=0.5, fresh=fresh, state_dir=str(state),
    )  # fmt: skip
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(run_load, config)
    results = report["results"]
    assert results["errors"] == {}
    assert set(results["operations"]) == {"certify"}
    assert results["ok"] >= 100
    assert report["rate"]["sustained"] is True
    sent = report["workers"][0]["sent"]
    assert sent == results["ok"] + results["warmup_requests"]
    # The audit log of the run's domain holds every certificate issued.
    with AuditLog.open(state / "domain" / AUDIT_FILE) as audit:
        issued = [e for e in audit.events() if e.kind == "issued"]
    assert len(issued) == sent
    assert len({e.serial for e in issued}) == sent
    assert len({e.principal for e in issued}) == 1  # the client program, every time
    # The server's own figures: it answered every request the clients sent, ok.
    server = report["server"]
    assert server["service"] == "domain_service"
    assert server["failed_scrapes"] == {}
    assert server["run"]["requests"] == {"certify:ok": sent}
    assert server["run"]["audit_writes"] == sent
    measured = server["measured"]
    # Measured from the scrape nearest the warm-up's end: within one interval of it.
    slack = config.rate * config.interval + config.clients
    assert abs(measured["requests"]["certify:ok"] - results["ok"]) <= slack
    p99 = measured["latency_ms_est"]["p99"]
    assert p99 is not None
    assert 0 < p99 <= results["latency_ms"]["max"] * 2.5
    assert measured["audit_write_ms_est"]["p50"] is not None
    handshakes = server["run"]["handshakes"]["ok"]
    assert handshakes == (sent if fresh else config.clients)
    assert len(server["timeline"]) >= 4
    assert all(t["to_s"] > t["from_s"] for t in server["timeline"])


@pytest.mark.slow
async def test_secret_target_run_has_the_secret_servers_own_figures() -> None:
    config = LoadConfig(
        target="secret", workers=1, rate=60, clients=2, duration=1.0, warmup=0.5,
        interval=0.5, objects=5, mix=(("read", 2), ("write", 1), ("list", 1)),
    )  # fmt: skip
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(run_load, config)
    results = report["results"]
    assert results["errors"] == {}
    server = report["server"]
    assert server["service"] == "secret_server"
    assert server["failed_scrapes"] == {}
    counted = server["run"]["requests"]
    assert set(counted) == {"read:ok", "write:ok", "list:ok"}
    sent = report["workers"][0]["sent"]
    assert sum(counted.values()) == sent  # creating the objects came before the baseline
    assert counted["read:ok"] == pytest.approx(sent / 2, abs=2)
    assert server["run"]["audit_writes"] > 0  # its releases' audit batches
    assert server["measured"]["latency_ms_est"]["p50"] is not None


@pytest.mark.slow
async def test_a_domain_service_killed_mid_run_shows_errors_by_kind_and_the_report_ends() -> None:
    killed: list[int] = []

    def kill_the_service(state: Progress) -> None:
        if killed or state.ok < 40:
            return
        for child in multiprocessing.active_children():
            if child.name == "taonet-loadtest-domain" and child.pid is not None:
                killed.append(child.pid)
                os.kill(child.pid, signal.SIGKILL)

    config = LoadConfig(
        target="domain", workers=1, rate=100, clients=4, duration=2.0, warmup=0.0,
        interval=0.25, request_timeout=1.0,
    )  # fmt: skip
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(
            lambda: run_load(config, on_progress=kill_the_service)
        )
    assert killed
    results = report["results"]
    assert results["ok"] >= 40
    # Refused connections once it is gone, channels it broke as it died; nothing else.
    assert results["error_count"] > 50
    assert set(results["errors"]) <= {"ECONNREFUSED", "connection_broken", "timeout"}
    assert results["errors"].get("ECONNREFUSED", 0) > 0
    assert results["first_error_at_s"] is not None
    assert report["rate"]["sustained"] is False
    assert report["workers"][0]["status"] == "done"
    # The scrapes after it died failed, and were counted.
    server = report["server"]
    assert server["failed_scrapes"].get("unreachable", 0) >= 1
    assert server["scrapes"] >= 2


@pytest.mark.slow
def test_cli_domain_run_shows_the_server_row_and_keeps_its_state(tmp_path: Path) -> None:
    out, state = tmp_path / "run", tmp_path / "state"
    command = [
        sys.executable, "-m", "taonet", "loadtest", "--target", "domain", "--quick",
        "--workers", "1", "--clients", "4", "--rate", "60", "--duration", "1",
        "--warmup", "0.5", "--out", str(out), "--state-dir", str(state),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["configuration"]["target"] == "domain"
    assert report["configuration"]["state_dir"] == str(state)
    assert report["server"]["measured"]["ok_per_s"] > 0
    assert "server (est.)" in done.stdout
    assert "estimated from its histogram buckets" in done.stdout
    assert (state / "domain" / AUDIT_FILE).exists()
    # The state directory now holds a domain: a second run must not reuse it.
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode != 0
    assert again.stderr.strip().count("\n") == 0
    assert "is not empty" in again.stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--server-metrics", "10.0.0.1:9100"], "not a loopback address"),
        (["--target", "domain", "--server-metrics", "127.0.0.1:9100"], "own server is scraped"),
        (["--target", "echo", "--state-dir", "/tmp/x"], "keeps no state"),
    ],
)
def test_the_cli_refuses_scrape_and_state_options_that_do_not_fit_in_one_line(
    options: list[str], said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", *options],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert said in done.stderr


@pytest.mark.slow
async def test_more_clients_than_the_default_anonymous_share_of_an_address_are_served() -> None:
    # A domain service with the default limits holds 16 anonymous connections from
    # one address: the 40 persistent channels here from 127.0.0.1 are all served by
    # the tool's own service (loadtest_connection_limits), and stay open.
    config = LoadConfig(
        target="domain", workers=1, rate=60, clients=40, duration=1.0, warmup=0.5,
        interval=0.25,
    )  # fmt: skip
    with trio.fail_after(120):
        report = await trio.to_thread.run_sync(run_load, config)
    assert report["results"]["errors"] == {}
    assert report["results"]["ok"] >= 50
    timeline = report["server"]["timeline"]
    assert max(t["open_channels"] or 0 for t in timeline) == 40
    assert report["server"]["run"]["handshakes"] == {"ok": 40}


def _domain_run(state: Path, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "taonet", "loadtest", "--target", "domain", "--workers", "1",
        "--clients", "2", "--rate", "20", "--warmup", "0", "--state-dir", str(state), *options,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_second_run_on_a_state_directory_in_use_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    # A7 finding 10: two runs on one new directory used to share it (one died with
    # "wrong password or corrupted keyset"). The first holds it until it ends.
    state, out = tmp_path / "state", tmp_path / "run"
    first = subprocess.Popen(
        _domain_run(state, "--duration", "120", "--out", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        assert first.stderr is not None
        for line in first.stderr:  # bounded: the run ends by itself, or is killed below
            if "loadtest_measuring" in line:
                break
        else:
            raise AssertionError(f"the run never measured: {first.communicate(timeout=60)}")
        second = subprocess.run(
            _domain_run(state, "--duration", "1"),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        os.killpg(first.pid, signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip().count("\n") == 0
    assert f"the state directory {state} is in use by another run" in second.stderr
    # The first run was not disturbed: every request answered, its state in place.
    assert first.returncode == 130, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["ok"] > 0
    assert report["results"]["errors"] == {}
    assert (state / "domain" / AUDIT_FILE).exists()
    assert state.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("kind", ["writable", "foreign"])
def test_a_state_directory_others_could_write_or_own_is_refused_untouched(
    tmp_path: Path, kind: str
) -> None:
    # A7 finding 10: an empty chmod 777 directory, or one owned by nobody, was filled.
    state = tmp_path / "state"
    state.mkdir()
    if kind == "writable":
        state.chmod(0o777)
        said = f"the state directory {state} is writable by others (mode 777)"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        os.chown(state, 65534, 65534)
        said = f"the state directory {state} belongs to another user (uid 65534)"
    done = subprocess.run(
        _domain_run(state, "--duration", "1"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert said in done.stderr
    assert list(state.iterdir()) == []


def test_a_state_directory_is_made_0700_or_tightened_to_it_while_claimed(
    tmp_path: Path,
) -> None:
    from taonet.loadtest._run import _claimed_state_dir

    made, existing = tmp_path / "made", tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    old = os.umask(0)
    try:
        with _claimed_state_dir(str(made)), _claimed_state_dir(str(existing)):
            assert made.stat().st_mode & 0o777 == 0o700
            assert existing.stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)
