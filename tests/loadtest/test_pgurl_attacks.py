"""Review A7's attacks on ``taonet loadtest --postgres``, repeated on real processes:
URLs that libpq reads differently from the check (refused before any connection:
a listener on a non-loopback address of this machine sees none), a URL that would put
the run's tables in another schema, passwords in messages and the report, the world
process killed mid-run (the schema it leaves is named, exit 1) and the tool killed
(the world's temporary directory removed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from taonet import ConfigError
from taonet.loadtest._pgurl import check_final_url, check_postgres_url, redact, with_schema

SCHEMA = "taonet_loadtest_0123456789ab"


def _non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (skip if there is none)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.200", 9))  # no packet sent: only picks the route's source
        address = str(probe.getsockname()[0])
    except OSError:
        pytest.skip("no non-loopback IPv4 address on this machine")
    finally:
        probe.close()
    if address.startswith("127.") or address == "0.0.0.0":
        pytest.skip("no non-loopback IPv4 address on this machine")
    return address


@contextlib.contextmanager
def _listener(address: str) -> Iterator[tuple[socket.socket, int]]:
    sock = socket.socket()
    try:
        sock.bind((address, 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def _connections(sock: socket.socket) -> int:
    """Connections in the listener's queue (a connect completes without accept)."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _loadtest(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--target", "secret", "--duration", "1",
         "--warmup", "0.2", "--workers", "1", "--clients", "1", "--rate", "20", *argv],
        capture_output=True, text=True, timeout=180, check=False, env=env,
    )  # fmt: skip


# The repros of /tmp/a7/pgurl_bypass.sh: {ip} {port} is a listener on this machine's
# non-loopback address, where libpq would have connected.
BYPASS = [
    # libpq splits user and host at the FIRST '@': hosts '{ip},x@127.0.0.1'
    ("postgresql://u@{ip}:{port},x@127.0.0.1/db?connect_timeout=3", "more than one '@'"),
    # libpq does not end the URL at '#': host={ip} port={port} come after it
    ("postgresql://127.0.0.1/db?connect_timeout=3#&host={ip}&port={port}", "'#' is not accepted"),
    ("postgresql://127.0.0.1/db#?host={ip}&port={port}", "'#' is not accepted"),
]


@pytest.mark.parametrize(("template", "why"), BYPASS)
def test_a_url_libpq_reads_otherwise_is_refused_before_any_connection(
    template: str, why: str
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    ip = _non_loopback_address()
    with _listener(ip) as (sock, port):
        url = template.format(ip=ip, port=port)
        # What libpq would have done with it: the listener's address is among its hosts.
        if "#?" not in url:
            assert ip in str(conninfo_to_dict(url)["host"])
        with pytest.raises(ConfigError, match=why):
            check_postgres_url(url, {})
        done = _loadtest("--postgres", url)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0
        assert why in done.stderr
        assert _connections(sock) == 0


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1/db?%68ost=10.1.2.3",
        "postgresql://u@127.0.0.1/db?%6Fptions=-c%20search_path%3Dvictim",
        "postgresql://u@127.0.0.1,/db",  # an empty host: libpq's default
        "postgresql://u@127.0.0.1/db?host=127.0.0.1,",
        "postgresql://u@127.0.0.1/db?%73ervice=prod",
    ],
)
def test_what_libpq_reads_is_checked_not_only_the_text(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_postgres_url(url, {})
    assert "\n" not in str(raised.value)


def test_the_url_each_process_gets_is_libpqs_reading_and_is_checked_again() -> None:
    from psycopg.conninfo import conninfo_to_dict

    url = "postgresql://u@127.0.0.1:5433/db?sslmode=disable&connect_timeout=4"
    final = with_schema(check_postgres_url(url, {}), SCHEMA, "taonet-loadtest")
    assert conninfo_to_dict(final) == {
        "user": "u", "host": "127.0.0.1", "port": "5433", "dbname": "db",
        "sslmode": "disable", "connect_timeout": "4",
        "options": f"-c search_path={SCHEMA}", "application_name": "taonet-loadtest",
    }  # fmt: skip
    assert check_final_url(final, SCHEMA, {}) == final
    # A final URL with another schema, another host, or a PGHOSTADDR elsewhere: refused.
    with pytest.raises(ConfigError, match="run's schema"):
        check_final_url(final, "taonet_loadtest_ffffffffffff", {})
    with pytest.raises(ConfigError, match="not a loopback"):
        check_final_url(final.replace("127.0.0.1", "10.1.2.3"), SCHEMA, {})
    with pytest.raises(ConfigError, match="not a loopback"):
        check_final_url(final, SCHEMA, {"PGHOSTADDR": "10.1.2.3"})
    with pytest.raises(ConfigError, match="service"):
        check_final_url(final, SCHEMA, {"PGSERVICE": "prod"})


def _sql(url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode())
        return list(cursor.fetchall()) if cursor.description else []


@pytest.mark.slow
@pytest.mark.parametrize(
    "tail",
    [
        "&connect_timeout=5#&options=-c%20search_path%3Dvictim",  # /tmp/a7/pgurl_schema.sh
        "&connect_timeout=5&%6Fptions=-c%20search_path%3Dvictim",
    ],
)
def test_a_run_cannot_write_into_a_schema_it_did_not_create(postgres_url: str, tail: str) -> None:
    _sql(postgres_url, "CREATE SCHEMA victim; CREATE TABLE victim.precious (x int)")
    done = _loadtest("--postgres", postgres_url + tail)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert _sql(
        postgres_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'victim'",
    ) == [("precious",)]
    assert _sql(
        postgres_url, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'taonet\\_loadtest%'"
    ) == [(0,)]


# -- passwords (/tmp/a7/pw_leak.sh) ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:S3cretPW@127.0.0.1/db",
        "postgresql://u@127.0.0.1/db?password=S3cretPW&connect_timeout=2",
        "postgresql://u@127.0.0.1/db?%70assword=S3cretPW",
        "postgresql://u@127.0.0.1/db?x=1&pass%77ord=S3cretPW",
        "postgresql://u:S3cret@PW@127.0.0.1/db",
        "postgresql://?host=127.0.0.1&password=S3cretPW",
        "host=127.0.0.1 password=S3cretPW",
    ],
)
def test_no_password_in_messages_from_the_tool_or_the_storage_layer(url: str) -> None:
    from taonet_services._db import _redact

    for shown in (redact(url), _redact(url)):
        assert "S3cret" not in shown
        assert "***" in shown


def test_a_database_that_cannot_be_reached_is_named_without_its_password() -> None:
    closed = socket.socket()  # bound, never listening: connections to it are refused
    closed.bind(("127.0.0.1", 0))
    try:
        port = closed.getsockname()[1]
        for query in ("password=S3cretPW", "%70assword=S3cretPW"):
            url = f"postgresql://u@127.0.0.1:{port}/db?{query}&connect_timeout=2"
            done = _loadtest("--postgres", url)
            assert done.returncode == 1, done.stderr
            assert "cannot connect" in done.stderr
            assert "password=***" in done.stderr
            assert "S3cretPW" not in done.stderr + done.stdout
    finally:
        closed.close()


@pytest.mark.slow
def test_the_report_holds_no_password_however_it_is_encoded(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = _loadtest(
        "--postgres", postgres_url + "&%70assword=S3cretPW", "--out", str(out), "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    assert "S3cretPW" not in done.stdout + done.stderr
    assert "S3cretPW" not in (out / "report.json").read_text()
    assert json.loads(done.stdout)["postgres"]["dropped"] is True


# -- the world process killed; the tool killed ---------------------------------------------


def _started(process: subprocess.Popen[str]) -> dict[str, object]:
    """The tool's ``loadtest_replicas`` log event, read until the measured window opens."""
    assert process.stderr is not None
    started: dict[str, object] | None = None
    for line in process.stderr:  # bounded: the run itself ends within about a minute
        if "loadtest_replicas" in line:
            started = json.loads(line)
        if "loadtest_measuring" in line:
            break
    assert started is not None
    return started


def _popen(postgres_url: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taonet", "loadtest", "--target", "secret", "--postgres",
         postgres_url, "--replicas", "2", "--workers", "1", "--clients", "2", "--rate", "20",
         "--warmup", "0", "--interval", "0.25", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json"},
    )  # fmt: skip


async def _exited(pid: int) -> None:
    """Wait (bounded) until process ``pid``, not our child, has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(60):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _schemas(url: str) -> list[tuple[object, ...]]:
    return _sql(url, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'taonet\\_loadtest%'")


@pytest.mark.slow
def test_a_killed_world_process_leaves_a_schema_that_is_named_and_fails_the_run(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = _popen(postgres_url, "--duration", "3", "--out", str(out))
    try:
        started = _started(process)
        os.kill(int(str(started["world_pid"])), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    schema = str(started["schema"])
    assert process.returncode == 1, stderr
    [error] = [line for line in stderr.splitlines() if line.startswith("taonet: error:")]
    assert error.startswith("taonet: error: the world process")
    assert f"schema {schema} was not dropped" in error
    assert f"DROP SCHEMA {schema} CASCADE" in error
    report = json.loads((out / "report.json").read_text())
    assert report["postgres"]["schema"] == schema
    assert report["postgres"]["dropped"] is False
    assert report["postgres"]["status"] == "died"
    assert report["results"]["ok"] > 0  # the run itself finished: its results are kept
    assert _schemas(postgres_url) == [(schema,)]  # really left, as the report says
    assert not Path(str(started["world_dir"])).exists()  # removed by the parent


@pytest.mark.slow
def test_a_killed_tool_leaves_no_temporary_directory(postgres_url: str) -> None:
    # SIGKILL to the tool alone: the world process, which owns the directory with the
    # run's sealed keys, drops the schema and removes it when its pipe ends.
    process = _popen(postgres_url, "--duration", "60")
    try:
        started = _started(process)
        world_dir = Path(str(started["world_dir"]))
        assert world_dir.is_dir()
        assert world_dir.name.startswith("taonet-loadtest-pg-")
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    trio.run(_exited, int(str(started["world_pid"])))
    assert not world_dir.exists()
    assert _schemas(postgres_url) == []
