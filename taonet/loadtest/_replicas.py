"""The secret target on PostgreSQL: N secret-server replicas on one store, and scale phases.

:func:`run_on_postgres` runs one load test against ``replicas`` secret servers (one
when the count is not given), each a process of its own, as ``taonet secret-server``
runs it, all on the one PostgreSQL that ``config.postgres`` names:

* a *world* process makes, in a temporary directory of its own, the run's domain, a
  soft host and the client program (as the SQLite target does, see ``_secret``), runs
  the domain service, and creates the run's schema in the database; when it stops it
  drops the schema, says so, and removes its directory (sealed keys, the replicas'
  state), also when the parent was killed (its pipe ends);
* replica 0 starts (creating the tables, then the run's objects through its own
  channel), then the others, one after another; each gets the one master key through
  the store (all replicas are one program on one host: one principal, whose sealed
  copy they share) and provisions its own channel key;
* the workers' client ``i`` (over all workers) sends to replica ``i mod N``;
* each replica counts the requests it answered in its own metrics
  (``taonet_services.metrics.ServiceMetrics``), snapshots the count when the
  measured window opens and closes (or when stopped, if that comes first), and sends
  both when stopped: the report's ``replicas`` gives each one's ``served`` and
  ``served_per_s`` from the servers' own counts (with prometheus-client, the
  ``metrics`` extra; without it the replicas serve uncounted). Each replica also
  serves its metrics on 127.0.0.1, scraped by the parent every interval like the
  other targets' servers: the report's ``servers`` holds one ``server`` section per
  replica, by index. A replica that died is named, with when the errors began.

What it writes. Everything goes into a fresh schema ``taonet_loadtest_<12 hex>``
(``-c search_path``; the tables are those of a secret server: objects, names, master,
audit chain), created at the start and dropped (``DROP SCHEMA ... CASCADE``) when
the run ends, unless ``keep_schema`` (by the world process, when its pipe ends: also
after the parent was killed). A world process that was killed itself (or could not
drop) leaves the schema: the report's ``postgres`` then says ``dropped: false``,
``status: died`` and a note with the ``DROP SCHEMA ... CASCADE`` to run, and the run
fails (the CLI names it, exit 1); the parent removes the world's directory. Every
URL a process gets is libpq's own reading of the checked ``--postgres`` URL with the
run's schema (``_pgurl.with_schema``), checked again before the process starts. The
role needs CREATE on the database. The
secret server's advisory locks and its ``NOTIFY`` channel are per database, not per
schema: a load test on a database a real secret server uses makes that server wait on
the test's audit appends and wake for its changes. Point it at a database of its own.

:func:`run_scale` runs one phase per replica count of ``config.replicas``, each with
the same load and a fresh schema, and gives the last phase's report with a ``scale``
section (see ``_report.scale_row``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from taonet import ConfigError, HostError
from taonet._log import get_logger
from taonet.loadtest._config import LoadConfig
from taonet.loadtest._domain import running_domain_service, start_metrics
from taonet.loadtest._handshake import LocalCredentials
from taonet.loadtest._pgurl import SCHEMA_PREFIX, check_final_url, with_schema
from taonet.loadtest._report import scale_row
from taonet.loadtest._run import START_TIMEOUT, Progress, TargetSpec, _Run, _spawn
from taonet.loadtest._secret import create_objects, make_world, provision_client

__all__ = [
    "postgres_target",
    "run_on_postgres",
    "run_scale",
    "serve_replica_process",
    "serve_world_process",
]

log = get_logger(__name__)

#: Seconds a stopped replica has to send its counts and exit.
STOP_TIMEOUT: Final = 10.0
#: The secret server's request counter, as its metrics export it.
_REQUESTS: Final = "taonet_secret_server_requests_total"


def _quiet_process() -> None:
    from taonet import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us when it is done
    configure_logging(level="warning")  # the servers' own lines would drown the live line


def _receive(conn: Connection) -> Any:
    """The next message, or None when the pipe ends."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _fail(conn: Connection, exc: BaseException) -> None:
    with contextlib.suppress(OSError):
        conn.send(("error", " ".join(str(exc).split())[:500] or type(exc).__name__))


# -- the world: domain, host, client, domain service, schema ---------------------------


async def _world(base: Path, conn: Connection, url: str, schema: str, keep: bool) -> None:
    from taonet_services.storage import Database

    db = await Database.open(url, pool_size=1)
    try:
        await db.transaction(lambda cur: cur.execute(f"CREATE SCHEMA {schema}"))
        try:
            local = make_world(base)
            async with running_domain_service(local) as (_, ds):
                credentials = await provision_client(local, ds)
                conn.send(("ready", str(base), ds[1], local.password, credentials))
                await trio.to_thread.run_sync(_receive, conn, abandon_on_cancel=True)
        finally:
            if not keep:
                with trio.CancelScope(shield=True):
                    await db.transaction(
                        lambda cur: cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                    )
    finally:
        await db.aclose()
    with contextlib.suppress(OSError):
        conn.send(("done", not keep))  # the schema dropped (True), or kept


def serve_world_process(conn: Connection, url: str, schema: str, keep: bool) -> None:
    """A process's main: make the run's world in a temporary directory of its own and
    its ``schema`` at ``url`` (see the module's text), send ``("ready", directory,
    domain service port, password, credentials)``, and when the pipe ends (or on
    ``stop``) stop, drop the schema (unless ``keep``), send ``("done", dropped)`` and
    remove the directory."""
    _quiet_process()
    try:
        with tempfile.TemporaryDirectory(prefix="taonet-loadtest-pg-") as base:
            trio.run(_world, Path(base), conn, url, schema, keep)
    except Exception as exc:
        _fail(conn, exc)


# -- one replica --------------------------------------------------------------------


def served(metrics: Any) -> int:
    """Requests the secret server answered, by its own metrics (every operation and
    outcome)."""
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == _REQUESTS:
                total += sample.value
    return int(total)


async def _window(metrics: Any, start: float, warmup: float, end: float, marks: list[int]) -> None:
    t0 = trio.current_time() + (start - time.monotonic())
    await trio.sleep_until(t0 + warmup)
    marks.append(served(metrics))
    await trio.sleep_until(t0 + end)
    marks.append(served(metrics))


async def _replica(
    conn: Connection,
    base: Path,
    password: bytes,
    ds_port: int,
    url: str,
    index: int,
    seed: tuple[LocalCredentials, int, int] | None,
) -> None:
    from taonet.domain import Domain
    from taonet.hosts import SoftHost
    from taonet_services.metrics import ServiceMetrics
    from taonet_services.secret_server import program_name, run_secret_server

    domain = Domain.load(base / "domain")
    host = SoftHost.load(base / "host", password)
    try:
        metrics: ServiceMetrics | None = ServiceMetrics("secret_server")
    except ConfigError:  # no prometheus-client: the replica serves without its counts
        metrics = None
    marks: list[int] = []
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            functools.partial(
                run_secret_server,
                host.tao_for(host.name.extend(program_name())),
                domain=domain,
                state_dir=base / f"replica-{index}",
                domain_service=("127.0.0.1", ds_port),
                db_url=url,
                metrics=metrics,
            )
        )
        address = ("127.0.0.1", int(running.port))
        metrics_port = await start_metrics(nursery, metrics)
        if seed is not None:
            credentials, objects, value_size = seed
            await create_objects(address, credentials.client(), objects, value_size)
        conn.send(("ready", address[1], os.getpid(), metrics_port))
        while True:
            message = await trio.to_thread.run_sync(_receive, conn, abandon_on_cancel=True)
            if message is None or message[0] == "stop":
                break
            if message[0] == "window" and metrics is not None:
                _, start, warmup, end = message
                nursery.start_soon(_window, metrics, start, warmup, end, marks)
        if metrics is not None and len(marks) == 1:  # stopped early (Ctrl-C): to now
            marks.append(served(metrics))
        with contextlib.suppress(OSError):
            conn.send(("served", None if metrics is None else served(metrics), marks))
        nursery.cancel_scope.cancel()


def serve_replica_process(
    conn: Connection,
    base: str,
    password: bytes,
    ds_port: int,
    url: str,
    index: int,
    seed: tuple[LocalCredentials, int, int] | None,
) -> None:
    """A process's main: secret-server replica ``index`` on ``url`` (see the module's
    text); with ``seed`` (credentials, objects, value size) it creates the run's objects.
    Sends ``("ready", port, pid, metrics port or None)``; on ``("window", start, warmup,
    end)`` snapshots its count at the measured window's ends; on ``stop`` sends
    ``("served", total, marks)``."""
    _quiet_process()
    try:
        trio.run(_replica, conn, Path(base), password, ds_port, url, index, seed)
    except Exception as exc:
        _fail(conn, exc)


# -- the parent's side --------------------------------------------------------------


class _Child:
    """A process of the run (the world or a replica) and its pipe."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        context = _spawn()
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=target, args=(child, *args), name=f"taonet-loadtest-{name}", daemon=True
        )
        self.process.start()
        child.close()
        self.ready: tuple[Any, ...] = self._wait_ready()

    def _wait_ready(self) -> tuple[Any, ...]:
        arrived = self.conn.poll(START_TIMEOUT)
        message = _receive(self.conn) if arrived else None
        if message is None or message[0] != "ready":
            self.stop()
            if message is not None:
                raise HostError(f"the {self.name} did not start: {message[1]}")
            if arrived:
                code = self.process.exitcode
                raise HostError(f"the {self.name} died while starting (exit code {code})")
            raise HostError(f"the {self.name} did not start within {START_TIMEOUT:g} s")
        return tuple(message[1:])

    def stop(self) -> Any:
        """Stop it (once; again does nothing); what it sent last (None if nothing)."""
        answer = None
        if self.conn.closed:
            return None
        with contextlib.suppress(OSError, EOFError):
            self.conn.send(("stop",))
            if self.conn.poll(STOP_TIMEOUT):
                answer = _receive(self.conn)
        self.conn.close()
        self.process.join(STOP_TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        return answer


@attrs.define
class _Replicas:
    """The world and the replicas of one run."""

    world: _Child
    replicas: list[_Child] = attrs.field(factory=list)

    def window(self, start: float, config: LoadConfig) -> None:
        for replica in self.replicas:
            with contextlib.suppress(OSError):
                replica.conn.send(("window", start, config.warmup, config.end))

    def stop(self, measured: float, first_error_at: float | None) -> list[dict[str, Any]]:
        """Stop every replica; each one's figures, from its own counts."""
        out = []
        for index, replica in enumerate(self.replicas):
            port, pid = replica.ready[:2]
            entry: dict[str, Any] = {"index": index, "pid": pid, "port": port}
            answer = replica.stop()
            if answer is not None and answer[0] == "served":
                total, marks = answer[1], answer[2]
                entry["status"] = "done"
                if total is None:
                    entry["note"] = "no counts: install taonet[metrics] (prometheus-client)"
                entry["served_total"] = total
                if len(marks) == 2:
                    entry["served"] = marks[1] - marks[0]
                    entry["served_per_s"] = round(entry["served"] / measured, 1) if measured else 0
            else:
                code = replica.process.exitcode
                when = "" if first_error_at is None else f"; the first errors at {first_error_at} s"
                entry |= {"status": "died", "exit_code": code,
                          "note": f"replica {index} (pid {pid}) died during the run (exit code"
                                  f" {code}){when}"}  # fmt: skip
            out.append(entry)
        return out

    def finish(self, schema: str, keep: bool) -> dict[str, Any]:
        """Stop the world (after the replicas); the report's ``postgres`` section: whether
        the world said it dropped ``schema``, and if it did not, what to run."""
        answer = self.world.stop()
        section: dict[str, Any] = {"schema": schema, "kept": keep}
        if answer is not None and answer[0] == "done":
            section["dropped"] = bool(answer[1])
            return section
        pid, code = self.world.process.pid, self.world.process.exitcode
        why = (
            f"failed: {answer[1]}"
            if answer is not None and answer[0] == "error"
            else f"died during the run (exit code {code})"
        )
        section |= {
            "dropped": False,
            "status": "died",
            "note": f"the world process (pid {pid}) {why}; schema {schema} was not dropped:"
            f" drop it with DROP SCHEMA {schema} CASCADE",
        }
        return section


@contextlib.contextmanager
def _started(config: LoadConfig, count: int) -> Iterator[tuple[_Replicas, TargetSpec, str]]:
    assert config.postgres is not None
    postgres, schema = config.postgres, SCHEMA_PREFIX + secrets.token_hex(6)

    def url_for(name: str) -> str:  # libpq's reading, checked again for each process
        return check_final_url(with_schema(postgres, schema, name), schema, os.environ)

    world = _Child(
        "world (domain service, schema)",
        serve_world_process,
        url_for("taonet-loadtest"),
        schema,
        config.keep_schema,
    )
    base, ds_port, password, credentials = world.ready
    try:
        run = _Replicas(world)
        try:
            for index in range(count):
                seed = (credentials, config.objects, config.request_size) if index == 0 else None
                url = url_for(f"taonet-loadtest-replica-{index}")
                name = f"secret-server replica {index}"
                args = (base, password, ds_port, url, index, seed)
                run.replicas.append(_Child(name, serve_replica_process, *args))
            addresses = tuple(("127.0.0.1", int(r.ready[0])) for r in run.replicas)
            spec = TargetSpec(
                "secret",
                addresses[0],
                credentials=credentials,
                addresses=addresses,
                server_pids=tuple(int(r.ready[1]) for r in run.replicas),
                replica_metrics=tuple(
                    ("127.0.0.1", int(r.ready[2])) for r in run.replicas if r.ready[2] is not None
                ),
            )
            yield run, spec, schema
        finally:
            for replica in run.replicas:
                replica.stop()
            world.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the world's own, if it could not


@contextlib.contextmanager
def postgres_target(config: LoadConfig) -> Iterator[TargetSpec]:
    """The world and ``config.replicas[0]`` replicas (default 1), for several runs."""
    with _started(config, config.replicas[0] if config.replicas else 1) as (_, spec, _):
        yield spec


def run_on_postgres(
    config: LoadConfig, on_progress: Callable[[Progress], None] | None = None
) -> dict[str, Any]:
    """One load test against ``config.replicas`` (one count, or none: 1) replicas."""
    if len(config.replicas) > 1:
        return run_scale(config, on_progress)
    count = config.replicas[0] if config.replicas else 1
    with _started(config, count) as (run, spec, schema):
        log.info(
            "loadtest_replicas",
            replicas=count,
            schema=schema,
            world_pid=run.world.process.pid,
            world_dir=run.world.ready[0],
            replica_pids=list(spec.server_pids),
        )
        report = _Run(config, spec, on_progress, on_start=lambda t: run.window(t, config)).run()
        measured = float(report["results"]["measured_seconds"])
        report["replicas"] = run.stop(measured, report["results"]["first_error_at_s"])
        report["postgres"] = run.finish(schema, config.keep_schema)
    return report


def run_scale(
    config: LoadConfig, on_progress: Callable[[Progress], None] | None = None
) -> dict[str, Any]:
    """One phase per replica count, the same load each; the last phase's report with
    ``scale`` (one row per phase) and the whole configuration."""
    rows = []
    report: dict[str, Any] = {}
    for count in config.replicas:
        report = run_on_postgres(attrs.evolve(config, replicas=(count,)), on_progress)
        rows.append(scale_row(count, report))
        if report["interrupted"] or report["postgres"].get("status") == "died":
            break
    report["configuration"] = config.as_dict()
    report["scale"] = rows
    return report
