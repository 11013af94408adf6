"""The secret target on PostgreSQL: only a loopback or Unix-socket database, rows really
in it (in the run's own schema, dropped after), replicas that each serve (by their own
metrics), scale phases, and a replica killed mid-run. A real PostgreSQL (tests/pg.py)
and real processes; the URL checks are pure."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import trio

from taonet import ConfigError
from taonet.loadtest import LoadConfig, Progress, run_load
from taonet.loadtest._pgurl import check_postgres_url, redact, with_schema
from tests.loadtest.cli_run import interrupt, loadtest_process, until_measuring

SOCKET_URL = "postgresql://postgres@/db?host=/tmp/pgsock"

# Each tries to reach a database off this machine (or one the check cannot see).
REFUSED = [
    ("postgresql://u@10.0.0.5/db", "not a loopback"),
    ("postgresql://u@db.example.com:5432/db", "not a loopback IP"),
    ("postgresql://u@localhost/db", "names are not looked up"),
    ("postgresql://u@127.0.0.1,10.0.0.5/db", "not a loopback"),
    ("postgresql://u@[::1],[2001:db8::1]:5432/db", "not a loopback"),
    ("postgresql://u@[::ffff:10.0.0.1]/db", "not a loopback"),
    ("postgresql://u@127.0.0.1/db?host=10.0.0.5", "not a loopback"),
    ("postgresql://u@/db?host=/tmp/s,192.168.1.2", "not a loopback"),
    ("postgresql://u@127.0.0.1/db?hostaddr=10.0.0.5", "not a loopback"),
    ("postgresql://u@127.0.0.1/db?hostaddr=/tmp", "not a loopback IP"),
    ("postgresql://u@/db", "no host"),
    ("postgresql:///db", "no host"),
    ("postgresql://u@127.0.0.1/db?service=prod", "service="),
    ("postgresql://u@127.0.0.1/db?options=-csearch_path%3Dpublic", "options="),
    ("host=10.0.0.5 dbname=db", "not a postgresql:// URL"),
    ("mysql://u@127.0.0.1/db", "not a postgresql:// URL"),
    ("postgresql://u@127.0.0.1/" + "d" * 3000, "longer than"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_a_database_off_this_machine_is_refused_in_one_line(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as raised:
        check_postgres_url(url, {})
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError):
        LoadConfig(target="secret", postgres=url)


@pytest.mark.parametrize(
    ("environ", "why"),
    [({"PGHOSTADDR": "10.0.0.5"}, "not a loopback"), ({"PGSERVICE": "prod"}, "PGSERVICE")],
)
def test_the_environment_cannot_send_the_connection_elsewhere(
    environ: dict[str, str], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        check_postgres_url("postgresql://u@127.0.0.1/db", environ)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@127.0.0.1:5432/db",
        "postgres://u@127.0.0.9/db",
        "postgresql://u@[::1]:5433/db",
        SOCKET_URL,
        "postgresql://u@%2Fvar%2Frun%2Fpostgresql/db",
        "postgresql://u@127.0.0.1/db?hostaddr=127.0.0.1&sslmode=disable",
    ],
)
def test_loopback_and_unix_socket_databases_are_accepted(url: str) -> None:
    assert check_postgres_url(url, {"PGHOSTADDR": "127.0.0.1"}) == url


def test_the_schema_goes_into_the_url_and_the_password_out_of_the_report() -> None:
    from psycopg.conninfo import conninfo_to_dict

    url = with_schema(SOCKET_URL, "taonet_loadtest_0123456789ab", "taonet-loadtest-replica-1")
    assert conninfo_to_dict(url) == {
        "user": "postgres", "dbname": "db", "host": "/tmp/pgsock",
        "options": "-c search_path=taonet_loadtest_0123456789ab",
        "application_name": "taonet-loadtest-replica-1", "connect_timeout": "10",
    }  # fmt: skip
    with pytest.raises(ValueError, match="not a load-test schema"):
        with_schema(SOCKET_URL, "public; DROP TABLE x", "a")
    assert redact("postgresql://u:secret@127.0.0.1/db") == "postgresql://u:***@127.0.0.1/db"
    assert "hunter2" not in redact("postgresql://u@127.0.0.1/db?password=hunter2&x=1")
    config = LoadConfig(target="secret", postgres="postgresql://u:hunter2@127.0.0.1/db")
    assert "hunter2" not in json.dumps(config.as_dict())


def test_replicas_need_postgres_and_postgres_needs_the_secret_target() -> None:
    with pytest.raises(ConfigError, match="--replicas needs --postgres"):
        LoadConfig(target="secret", replicas=(2,))
    with pytest.raises(ConfigError, match="secret target"):
        LoadConfig(target="echo", postgres=SOCKET_URL)
    with pytest.raises(ConfigError, match="between 1 and"):
        LoadConfig(target="secret", postgres=SOCKET_URL, replicas=(0,))
    with pytest.raises(ConfigError, match="differ"):
        LoadConfig(target="secret", postgres=SOCKET_URL, replicas=(2, 2))
    with pytest.raises(ConfigError, match="more replicas than clients"):
        LoadConfig(target="secret", postgres=SOCKET_URL, replicas=(4,), clients=2)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--postgres", "postgresql://u@10.1.2.3/db"], "not a loopback address"),
        (["--replicas", "2"], "--replicas needs --postgres"),
        (["--postgres", SOCKET_URL, "--replicas", "two"], "a number"),
    ],
)
def test_the_cli_refuses_in_one_line(argv: list[str], why: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--target", "secret", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert why in done.stderr


def _sql(url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(query.encode()).fetchall())


@pytest.mark.slow
async def test_a_run_on_postgres_keeps_its_rows_in_its_own_schema(postgres_url: str) -> None:
    config = LoadConfig(
        target="secret", postgres=postgres_url, keep_schema=True, workers=1, rate=60,
        clients=2, duration=1.0, warmup=0.0, interval=0.5, objects=7,
        mix=(("read", 2), ("write", 1), ("list", 1), ("rotate", 1)),
    )  # fmt: skip
    with trio.fail_after(180):
        report = await trio.to_thread.run_sync(run_load, config)
    assert report["results"]["errors"] == {}
    assert report["results"]["ok"] >= 50
    schema = report["postgres"]["schema"]
    assert report["postgres"]["kept"] is True
    # The rows are in PostgreSQL, in the run's schema, and nowhere else.
    (names,) = _sql(postgres_url, f"SELECT count(*) FROM {schema}.secret_names")
    assert names[0] == 7
    writes = report["results"]["operations"]["write"]["ok"]
    (changes,) = _sql(
        postgres_url, f"SELECT count(*) FROM {schema}.audit_entries WHERE kind = 'secret_written'"
    )
    assert changes[0] >= writes > 0
    assert _sql(
        postgres_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN"
        f" ('{schema}', 'pg_catalog', 'information_schema')",
    ) == [(0,)]
    [replica] = report["replicas"]
    assert replica["status"] == "done"
    # The server's own count of the requests it answered agrees with the clients'.
    assert abs(replica["served"] - report["results"]["ok"]) <= 2 * config.clients


@pytest.mark.slow
def test_cli_scale_phases_spread_over_replicas_and_leave_no_schema(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--target", "secret", "--postgres",
         postgres_url, "--replicas", "1,2", "--workers", "1", "--clients", "4", "--rate",
         "80", "--duration", "1", "--warmup", "0.5", "--interval", "0.5", "--mix", "read=1",
         "--objects", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [row["replicas"] for row in report["scale"]] == [1, 2]
    assert all(row["errors"] == 0 and row["achieved_per_s"] > 0 for row in report["scale"])
    assert report["configuration"]["replicas"] == [1, 2]
    # The last phase's replicas: each answered about half, by its own metrics.
    first, second = report["replicas"]
    assert first["pid"] != second["pid"]
    assert first["served"] >= 20
    assert second["served"] >= 20
    assert abs(first["served"] - second["served"]) <= 0.3 * (first["served"] + second["served"])
    assert report["scale"][1]["served_per_s"] == [first["served_per_s"], second["served_per_s"]]
    assert "scale: one phase per replica count" in done.stdout
    assert "by its own metrics" in done.stdout
    # Each replica's /metrics was scraped during the run: its own section and table row,
    # whose count of reads answered agrees with the count it sent over its pipe (the
    # scrapes bound the window a little after its marks: a few requests of slack).
    servers = report["servers"]
    assert len(servers) == 2
    for replica, section in zip(report["replicas"], servers, strict=True):
        assert section["failed_scrapes"] == {}
        scraped = section["measured"]["requests"]["read:ok"]
        assert abs(scraped - replica["served"]) <= max(5, replica["served"] // 10)
    assert "replica 0 (est.)" in done.stdout
    assert "replica 1 (est.)" in done.stdout
    # Nothing left behind in the database.
    assert _sql(
        postgres_url,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'taonet\\_loadtest\\_%'",
    ) == [(0,)]
    assert _sql(
        postgres_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    ) == [(0,)]


@pytest.mark.slow
async def test_a_replica_killed_mid_run_is_reported_and_the_report_finishes(
    postgres_url: str,
) -> None:
    killed: list[int] = []

    def kill_replica_1(progress: Progress) -> None:
        if not killed and progress.ok >= 60 and len(progress.servers) == 2:
            killed.append(progress.servers[1].pid)
            os.kill(progress.servers[1].pid, signal.SIGKILL)

    config = LoadConfig(
        target="secret", postgres=postgres_url, replicas=(2,), workers=1, rate=100,
        clients=4, duration=2.0, warmup=0.0, interval=0.25, mix=(("read", 1),), objects=8,
        request_timeout=2.0,
    )  # fmt: skip
    with trio.fail_after(180):
        report = await trio.to_thread.run_sync(lambda: run_load(config, on_progress=kill_replica_1))
    assert killed
    results = report["results"]
    assert results["ok"] >= 60
    # Clients 1 and 3 were on the dead replica: their requests failed, counted by kind
    # (ProtocolError: the secret store's word for a channel that ended under a call).
    assert results["error_count"] >= 20
    kinds = {"ECONNREFUSED", "connection_broken", "ECONNRESET", "timeout", "ProtocolError"}
    assert set(results["errors"]) <= kinds
    assert results["errors"].get("ECONNREFUSED", 0) >= 10  # its port, closed for good
    assert results["first_error_at_s"] is not None
    assert any(i["errors"] for i in report["timeline"])
    assert report["rate"]["sustained"] is False
    first, second = report["replicas"]
    assert first["status"] == "done"
    assert first["served"] >= 60
    assert second["status"] == "died"
    assert second["pid"] == killed[0]
    assert "died during the run" in second["note"]
    assert [w["status"] for w in report["workers"]] == ["done"]


@pytest.mark.slow
async def test_run_series_runs_each_rate_asked_for_until_none() -> None:
    from taonet.loadtest import run_series
    from tests.loadtest.servers import ControlledEcho

    server = ControlledEcho()
    asked: list[int] = []

    def next_config(reports: list[dict[str, object]]) -> LoadConfig | None:
        asked.append(len(reports))
        if len(reports) == 2:
            return None
        return attrs.evolve(config, rate=(50.0, 100.0)[len(reports)])

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            config = LoadConfig(
                connect=("127.0.0.1", server.port), tls=False, workers=1, clients=2,
                duration=0.5, warmup=0.0, interval=0.25,
            )  # fmt: skip
            reports = await trio.to_thread.run_sync(run_series, config, next_config)
            nursery.cancel_scope.cancel()
    assert asked == [0, 1, 2]
    assert [r["rate"]["target_per_s"] for r in reports] == [50, 100]
    assert server.requests == sum(r["results"]["ok"] for r in reports)
    with trio.fail_after(60), pytest.raises(ConfigError, match="the target started"):
        await trio.to_thread.run_sync(
            run_series, attrs.evolve(config, connect=("127.0.0.1", 1)),
            lambda reports: attrs.evolve(config, connect=("127.0.0.1", 2)),
        )  # fmt: skip


def test_a_tls_eof_is_a_broken_connection_not_an_errno() -> None:
    # A server killed mid-run: the client's TLS layer sees EOF (SSL_ERROR_EOF, 8),
    # whose errno is an OpenSSL code; read as an OS errno it would say ENOEXEC.
    from taonet.loadtest._worker import error_kind

    broken = trio.BrokenResourceError()
    broken.__cause__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert error_kind(broken) == "connection_broken"
    refused = ConnectionRefusedError(111, "Connection refused")
    assert error_kind(OSError("connect failed")) == "OSError"
    assert error_kind(refused) == "ECONNREFUSED"


@pytest.mark.slow
def test_ctrl_c_on_postgres_writes_the_partial_report_and_drops_the_schema(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with loadtest_process(
        "--target", "secret", "--postgres", postgres_url, "--replicas", "2", "--workers",
        "1", "--clients", "2", "--rate", "50", "--duration", "60", "--warmup", "0",
        "--interval", "0.25", "--out", str(out),
    ) as process:  # fmt: skip
        until_measuring(process)
        _, stderr = interrupt(process)
    assert process.returncode == 130, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert report["results"]["measured_seconds"] < 30
    assert [r["status"] for r in report["replicas"]] == ["done", "done"]
    assert all(r["served"] >= 0 for r in report["replicas"])
    assert _sql(
        postgres_url,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'taonet\\_loadtest\\_%'",
    ) == [(0,)]


@pytest.mark.slow
def test_a_killed_tool_still_drops_its_schema(postgres_url: str) -> None:
    # SIGKILL to the tool alone (no cleanup of its own): its world process sees its
    # pipe end and drops the run's schema; the replicas stop too.
    process = subprocess.Popen(
        [sys.executable, "-m", "taonet", "loadtest", "--target", "secret", "--postgres",
         postgres_url, "--replicas", "2", "--workers", "1", "--clients", "2", "--rate", "20",
         "--duration", "60", "--warmup", "0", "--interval", "0.25"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        started = None
        for line in process.stderr:  # bounded: the run itself ends within about 90 s
            if "loadtest_replicas" in line:
                started = json.loads(line)
            if "loadtest_measuring" in line:
                break
        assert started is not None
        assert _sql(postgres_url, "SELECT count(*) FROM pg_namespace WHERE nspname ="
                    f" '{started['schema']}'") == [(1,)]  # fmt: skip
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    children = [started["world_pid"], *started["replica_pids"]]
    for _ in range(600):  # each check at most 0.1 s apart: bounded at about a minute
        if not any(_alive(pid) for pid in children):
            break
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)
    assert _sql(
        postgres_url,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'taonet\\_loadtest\\_%'",
    ) == [(0,)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
