"""The parent of a load test: start the target's server and the workers, merge, report.

:func:`run_load` blocks until the run is over and returns the report (a JSON-ready
dict, see :mod:`taonet.loadtest._report`). It is written for the main thread of a
command, and also runs from another thread (tests). The target's server (the echo
server, the handshake target's channel server, the secret target's domain service
and secret server, or the domain target's domain service) runs in a process of its
own unless ``connect`` names a running one; it is stopped when the run ends (the
secret target on PostgreSQL, with its replicas: ``_replicas``). :func:`run_series`
runs several configurations (a rate search) against one start of the target. Every
worker is a :mod:`multiprocessing` spawn process; the parent reads their pipes with
``multiprocessing.connection.wait`` and merges their interval histograms.

The secret and domain targets' servers serve their Prometheus metrics on 127.0.0.1
(or ``server_metrics`` names an endpoint): the parent scrapes it before the workers
start, at each scrape point between reading their pipes, and after they finish
(:class:`~taonet.loadtest._scrape.Scraper`, each scrape bounded in time and size, a
failed one counted), and adds the report's ``server`` section.

Ctrl-C in the parent (``KeyboardInterrupt``) sends SIGINT to the workers still
running; each sends what it measured and stops, and the report, marked interrupted,
is still returned. A worker whose pipe ends without ``done`` died: the report names
it, with its exit code and when it was lost, and the run finishes with the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, Final

import attrs

from taonet import ConfigError, HostError
from taonet._log import get_logger
from taonet.loadtest._config import LoadConfig
from taonet.loadtest._domain import DomainCredentials, serve_domain_process
from taonet.loadtest._echo import make_echo_credentials, serve_echo_process
from taonet.loadtest._handshake import (
    LocalCredentials,
    make_local_credentials,
    serve_handshakes_process,
)
from taonet.loadtest._report import Merger
from taonet.loadtest._scrape import Scraper
from taonet.loadtest._secret import serve_secrets_process
from taonet.loadtest._worker import worker_main

__all__ = ["Progress", "TargetSpec", "WorkerHandle", "run_load", "run_series"]

log = get_logger(__name__)

#: Seconds a worker (or the echo server) may take to start and say it is ready.
START_TIMEOUT: Final = 60.0
#: Seconds after the run's end (and its requests' bound) before workers are stopped.
END_GRACE: Final = 10.0
#: Seconds an interrupted parent waits for workers that saw the Ctrl-C themselves.
SIGNAL_GRACE: Final = 2.0
#: Seconds the parent waits for interrupted workers to send what they have.
INTERRUPT_GRACE: Final = 10.0


@attrs.frozen
class WorkerHandle:
    """A running worker, as progress callbacks see it."""

    index: int
    pid: int


@attrs.frozen
class Progress:
    """What the run has measured so far (given to ``on_progress``)."""

    elapsed: float
    ok: int
    errors: int
    #: Requests per second completed in the last interval received (warm-up included).
    recent_rate: float
    recent_p99_ms: float | None
    workers: tuple[WorkerHandle, ...]
    lost: int
    #: The target's server processes the tool started, where there are several (the
    #: secret-server replicas on PostgreSQL), by index.
    servers: tuple[WorkerHandle, ...] = ()


def _spawn() -> Any:
    return multiprocessing.get_context("spawn")


@attrs.frozen
class TargetSpec:
    """Where the workers send and with what credentials (passed to each worker)."""

    kind: str
    address: tuple[str, int]
    #: The echo server's certificate (PEM), trusted by the clients; None: plain TCP.
    ca_pem: bytes | None = None
    #: The handshake target's local domain credentials.
    credentials: LocalCredentials | None = None
    #: The domain target's: the policy certificate and the host to attest as.
    domain: DomainCredentials | None = None
    #: The server's Prometheus endpoint, scraped by the parent (None: not scraped).
    metrics: tuple[str, int] | None = None
    #: Several servers (the secret target's replicas): client i (over all workers)
    #: sends to ``addresses[i % len(addresses)]``; empty: all to ``address``.
    addresses: tuple[tuple[str, int], ...] = ()
    #: Their processes' ids.
    server_pids: tuple[int, ...] = ()
    #: The replicas' Prometheus endpoints (by index), each scraped like ``metrics``.
    replica_metrics: tuple[tuple[str, int], ...] = ()


class _ServerProcess:
    """A target server the tool runs itself, in a process of its own."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        context = _spawn()
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=target, args=(child, *args), name=f"taonet-loadtest-{name}", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(START_TIMEOUT):
            self.stop()
            raise HostError(f"the {name} server did not start within {START_TIMEOUT:g} s")
        try:
            #: What the server sent once ready: its port (and, for the secret target,
            #: the client's credentials).
            self.result: Any = self._conn.recv()
        except EOFError:
            self.stop()
            raise HostError(f"the {name} server died while starting") from None
        self.port = int(self.result if isinstance(self.result, int) else self.result[0])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._conn.close()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


@contextlib.contextmanager
def _claimed_state_dir(path: str | None) -> Iterator[None]:
    """Make ``path`` the servers' state directory for the whole run (nothing if None).

    A new directory is made with mode 0700. An existing one must be a directory of
    this user's, not writable by group or others, and empty (the state of an earlier
    run is not reused: its domain's password is gone); it is then set to 0700. An
    exclusive ``flock`` on the directory is held until the run ends, taken before it is
    checked: a second run given the same directory is refused (ConfigError, one line)
    instead of sharing it. ConfigError for each refusal."""
    if path is None:
        yield
        return
    shown = path[:200]
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot make the state directory {shown}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot use {shown} for the servers' state: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"the state directory {shown} is in use by another run: give a new one"
            ) from None
        status = os.fstat(fd)
        if status.st_uid != os.geteuid():
            raise ConfigError(
                f"the state directory {shown} belongs to another user (uid {status.st_uid}):"
                " give a new one"
            )
        if status.st_mode & 0o022:
            raise ConfigError(
                f"the state directory {shown} is writable by others"
                f" (mode {stat.S_IMODE(status.st_mode):o}): give a new one"
            )
        if os.listdir(fd):
            raise ConfigError(f"the state directory {shown} is not empty: give a new one")
        os.fchmod(fd, 0o700)
        yield
    finally:
        os.close(fd)  # releases the lock


def _local(port: int | None) -> tuple[str, int] | None:
    return None if port is None else ("127.0.0.1", port)


@contextlib.contextmanager
def _target(config: LoadConfig) -> Iterator[TargetSpec]:
    """The target's server (started here unless ``config.connect`` names one), with
    ``config.state_dir`` claimed for the run (:func:`_claimed_state_dir`)."""
    if config.connect is not None:
        if config.tls:
            raise HostError("TLS to an echo server the tool did not start is not supported yet")
        yield TargetSpec("echo", config.connect)
        return
    with _claimed_state_dir(config.state_dir), _server(config) as spec:
        yield spec


@contextlib.contextmanager
def _server(config: LoadConfig) -> Iterator[TargetSpec]:
    """The target's server, started by the tool (in ``config.state_dir``, claimed)."""
    server: _ServerProcess
    if config.target == "secret":
        server = _ServerProcess(
            "secret", serve_secrets_process, config.objects, config.request_size,
            config.state_dir,
        )  # fmt: skip
        port, credentials, metrics_port = server.result
        spec = TargetSpec("secret", ("127.0.0.1", port), credentials=credentials,
                          metrics=_local(metrics_port))  # fmt: skip
    elif config.target == "domain":
        server = _ServerProcess("domain", serve_domain_process, config.state_dir)
        port, metrics_port, domain = server.result
        spec = TargetSpec("domain", ("127.0.0.1", port), domain=domain,
                          metrics=_local(metrics_port))  # fmt: skip
    elif config.target == "handshake":
        credentials = make_local_credentials()
        server = _ServerProcess("handshake", serve_handshakes_process, credentials)
        spec = TargetSpec("handshake", ("127.0.0.1", server.port), credentials=credentials)
    else:
        cert_pem, key_pem = make_echo_credentials()
        tmp = tempfile.mkdtemp(prefix="taonet-loadtest-")
        try:
            server = _ServerProcess("echo", serve_echo_process, cert_pem, key_pem, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        spec = TargetSpec("echo", ("127.0.0.1", server.port), ca_pem=cert_pem)
    try:
        yield spec
    finally:
        server.stop()


def run_load(
    config: LoadConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Run ``config`` to its end (or Ctrl-C) and return the report."""
    if config.postgres is not None:
        from taonet.loadtest._replicas import run_on_postgres

        return run_on_postgres(config, on_progress)
    with _target(config) as spec:
        return _Run(config, spec, on_progress).run()


def run_series(
    config: LoadConfig,
    next_config: Callable[[list[dict[str, Any]]], LoadConfig | None],
) -> list[dict[str, Any]]:
    """Several runs against one start of ``config``'s target (its servers started once,
    new workers for each run): each with the configuration ``next_config(reports so
    far)`` gives, until it gives None (a rate search: ``loadtests/secret_capacity.py``).
    Each configuration must name the same target as ``config`` (target, objects, value
    size, PostgreSQL and replicas; ConfigError if not); its model, rate, clients,
    workers, mix and timing may change. The reports, in order."""
    reports: list[dict[str, Any]] = []
    if config.postgres is not None:
        from taonet.loadtest._replicas import postgres_target

        target = postgres_target(config)
    else:
        target = _target(config)
    same = ("target", "objects", "request_size", "postgres", "replicas", "connect", "tls")
    with target as spec:
        while (step := next_config(reports)) is not None:
            if any(getattr(step, name) != getattr(config, name) for name in same):
                raise ConfigError("each run of a series loads the target started for the first")
            reports.append(_Run(step, spec, None).run())
            if reports[-1]["interrupted"]:
                break
    return reports


class _Run:
    def __init__(
        self,
        config: LoadConfig,
        spec: TargetSpec,
        on_progress: Callable[[Progress], None] | None,
        *,
        on_start: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.spec = spec
        self.on_progress = on_progress
        #: Told the common start (``time.monotonic()``) once the workers are ready.
        self.on_start = on_start
        self.merger = Merger(config)
        self.processes: dict[int, Any] = {}
        self.conns: dict[int, Connection] = {}
        self.pids: dict[int, int] = {}
        self.start = 0.0
        address = spec.metrics if spec.metrics is not None else config.server_metrics
        #: The server's own figures, scraped each interval (see ``_scrape``).
        self.scraper = (
            None
            if address is None
            else Scraper(address, interval=config.interval, run_seconds=config.end)
        )
        #: Each replica's own figures, the same way.
        self.replica_scrapers = [
            Scraper(at, interval=config.interval, run_seconds=config.end)
            for at in spec.replica_metrics
        ]

    def _scrapers(self) -> list[Scraper]:
        return ([] if self.scraper is None else [self.scraper]) + self.replica_scrapers

    def run(self) -> dict[str, Any]:
        context = _spawn()
        interrupted = False
        try:
            for index in range(self.config.workers):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=worker_main,
                    args=(child_end, self.config, index, self.spec),
                    name=f"taonet-loadtest-worker-{index}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                self.processes[index] = process
                self.conns[index] = parent_end
            self._wait_ready()
            self.start = time.monotonic() + 0.2
            for scraper in self._scrapers():  # the baseline, before any request of the run
                scraper.scrape(-0.2)
            for conn in self.conns.values():
                conn.send(("go", self.start))
            if self.on_start is not None:
                self.on_start(self.start)
            self._collect(self.start + self.config.end + self.config.request_timeout + END_GRACE)
            for scraper in self._scrapers():  # what the server counted, every request answered
                scraper.scrape(self._elapsed())
        except KeyboardInterrupt:
            interrupted = True
            self._interrupt()
        finally:
            self._reap()
        report = self.merger.report(interrupted=interrupted, elapsed=self._elapsed())
        if self.scraper is not None:
            report["server"] = self.scraper.section(warmup=self.config.warmup)
        if self.replica_scrapers:  # one section per replica, by index
            report["servers"] = [
                scraper.section(warmup=self.config.warmup) for scraper in self.replica_scrapers
            ]
        return report

    def _elapsed(self) -> float:
        return max(0.0, time.monotonic() - self.start) if self.start else 0.0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = set(self.conns)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostError(
                    f"workers {sorted(waiting)} did not start within {START_TIMEOUT:g} s"
                )
            for ready in wait([self.conns[i] for i in waiting], timeout=left):
                index, conn = self._which(ready)
                try:
                    message = conn.recv()
                except EOFError:
                    code = self.processes[index].exitcode
                    raise HostError(
                        f"worker {index} died while starting (exit code {code})"
                    ) from None
                self.pids[index] = int(message[2])
                waiting.discard(index)

    def _collect(self, deadline: float) -> None:
        while self.conns:
            left = deadline - time.monotonic()
            if left <= 0:
                for index in list(self.conns):
                    self.merger.worker_lost(index, self.pids.get(index), None, self._elapsed(),
                                            "did not finish in time; stopped")  # fmt: skip
                    self.processes[index].kill()
                    self.conns.pop(index).close()
                return
            for ready in wait(list(self.conns.values()), timeout=min(left, 0.25)):
                self._receive(*self._which(ready))
            for scraper in self._scrapers() if self.start else ():
                if scraper.due(self._elapsed()):
                    scraper.scrape(self._elapsed())

    def _which(self, ready: object) -> tuple[int, Connection]:
        """The worker whose pipe ``ready`` is."""
        return next((i, c) for i, c in self.conns.items() if c is ready)

    def _receive(self, index: int, conn: Connection) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            process = self.processes[index]
            process.join(2)
            self.merger.worker_lost(
                index, self.pids.get(index), process.exitcode, self._elapsed(), "died"
            )
            log.warning("loadtest_worker_died", worker=index, exit_code=process.exitcode)
            self.conns.pop(index).close()
            return
        if message[0] == "interval":
            first = not self.merger.intervals
            self.merger.add_interval(*message[1:])
            if first:  # logged once merged: a Ctrl-C that follows it cannot lose it
                log.info("loadtest_measuring", workers=[self.pids[i] for i in sorted(self.pids)])
            if self.on_progress is not None:
                self.on_progress(self._progress(message[2]))
        elif message[0] == "done":
            self.merger.worker_done(index, self.pids.get(index), message[2])
            self.conns.pop(index).close()

    def _progress(self, interval_index: int) -> Progress:
        ok, errors, rate, p99 = self.merger.running_figures(interval_index)
        return Progress(
            elapsed=self._elapsed(),
            ok=ok,
            errors=errors,
            recent_rate=rate,
            recent_p99_ms=p99,
            workers=tuple(WorkerHandle(i, p) for i, p in sorted(self.pids.items())),
            lost=self.merger.lost_count(),
            servers=tuple(WorkerHandle(i, p) for i, p in enumerate(self.spec.server_pids)),
        )

    def _interrupt(self) -> None:
        """Ask the workers to stop, and take what they still send.

        A Ctrl-C at a terminal reaches the workers too: they are given a moment to
        report before the parent sends SIGINT to those still running (a second
        signal while one is handled could stop a worker before it reports)."""
        log.info("loadtest_interrupted", elapsed_s=round(self._elapsed(), 3))
        with contextlib.suppress(KeyboardInterrupt):  # another Ctrl-C: report what we have
            self._collect(time.monotonic() + SIGNAL_GRACE)
            for index in list(self.conns):
                pid = self.pids.get(index)
                if pid is not None and self.processes[index].is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGINT)
            self._collect(time.monotonic() + INTERRUPT_GRACE)

    def _reap(self) -> None:
        for index, process in self.processes.items():
            process.join(2)
            if process.is_alive():
                process.kill()
                process.join(2)
            conn = self.conns.pop(index, None)
            if conn is not None:
                conn.close()
