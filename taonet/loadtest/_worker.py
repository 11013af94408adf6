"""One worker process: its own trio loop, its share of the clients and the rate.

The parent starts each worker with :mod:`multiprocessing` (spawn) and a pipe. The
worker says ``ready``, waits for ``go`` with the common start time (a
``time.monotonic()`` value: one clock for every process of the machine), runs its
clients until the run's end, and sends one ``interval`` message per interval (an
encoded HDR histogram of the latencies that completed in it, in microseconds, and the
counts) and a last ``done``. Ctrl-C (SIGINT) stops it early: it still sends what it
measured, then ``done`` marked interrupted.

Open model: a client takes the next send from the worker's schedule, waits for its
intended time, sends, and measures the latency from the intended time, not from when
it could send: a server that stalls holds the clients, later sends start late, and
their latencies include the wait (no coordinated omission). A send still not started
when the run ends is counted as missed.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import ssl
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final

import trio

from taonet.channel import ChannelIdentity
from taonet.loadtest._config import LoadConfig, intended_time, offered_between, split
from taonet.loadtest._domain import POOL, DomainClient, domain_error_kind, make_attestations
from taonet.loadtest._echo import EchoClient
from taonet.loadtest._extras import histogram_class
from taonet.loadtest._handshake import HandshakeClient
from taonet.loadtest._secret import SecretClient, weighted_cycle

if TYPE_CHECKING:
    from taonet.loadtest._run import TargetSpec

#: What a worker's clients are.
Client = EchoClient | HandshakeClient | SecretClient | DomainClient

__all__ = ["HIGHEST_US", "new_histogram", "worker_main"]

#: The histograms' range: 1 µs to 120 s, three significant digits.
HIGHEST_US: Final = 120_000_000
_DIGITS: Final = 3


def new_histogram() -> Any:
    """An empty latency histogram (microseconds)."""
    return histogram_class()(1, HIGHEST_US, _DIGITS)


def error_kind(exc: BaseException) -> str:
    """A short name for a failed request's cause, used to count errors by kind: an
    OS error by its errno name (``ECONNREFUSED``), a timeout as ``timeout``, a
    connection the server dropped as ``connection_broken``, a domain service's answer
    as ``refused_<code>`` or ``internal`` (:func:`domain_error_kind`), else the class
    name."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    kind = domain_error_kind(exc)
    if kind is not None:
        return kind
    os_error = _os_error(exc)
    if os_error is not None:
        return errno.errorcode.get(os_error.errno or 0, type(os_error).__name__)
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return "connection_broken"
    return type(exc).__name__


def _os_error(exc: BaseException, depth: int = 0) -> OSError | None:
    """The first OSError with a system errno in ``exc``, its causes and groups."""
    if depth > 8:
        return None
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, ssl.SSLError):
        return exc  # (an SSLError's errno is OpenSSL's error code, not the system's)
    inner: list[BaseException] = []
    if isinstance(exc, BaseExceptionGroup):
        inner.extend(exc.exceptions)
    if exc.__cause__ is not None:
        inner.append(exc.__cause__)
    elif exc.__context__ is not None and not exc.__suppress_context__:
        inner.append(exc.__context__)
    for each in inner:
        found = _os_error(each, depth + 1)
        if found is not None:
            return found
    return None


class _Recorder:
    """What completed since the last interval message, in all and per operation."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.histogram = new_histogram()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.warmup = 0
        #: Per operation: its latency histogram, ok and failed counts.
        self.operations: dict[str, list[Any]] = {}

    def add(self, op: str, latency_us: int | None, error: str | None) -> None:
        """One measured request: its latency if it succeeded, else its error's kind."""
        stats = self.operations.setdefault(op, [new_histogram(), 0, 0])
        if error is not None:
            self.errors[error] += 1
            stats[2] += 1
        else:
            assert latency_us is not None
            self.histogram.record_value(latency_us)
            stats[0].record_value(latency_us)
            self.ok += 1
            stats[1] += 1

    def take(self, index: int, worker: int) -> tuple[Any, ...]:
        """The interval message for what was recorded, and start afresh."""
        histogram = self.histogram.encode() if self.histogram.get_total_count() else None
        operations = {
            op: (h.encode() if h.get_total_count() else None, ok, failed)
            for op, (h, ok, failed) in self.operations.items()
        }
        message = (
            "interval", worker, index, histogram, self.ok, dict(self.errors), self.warmup,
            operations,
        )  # fmt: skip
        self._reset()
        return message


class _Worker:
    def __init__(
        self,
        config: LoadConfig,
        index: int,
        conn: Connection,
        spec: TargetSpec,
    ) -> None:
        self.config = config
        self.index = index
        self.conn = conn
        self.spec = spec
        self.identity = None if spec.credentials is None else spec.credentials.client()
        self.cycle = weighted_cycle(config.mix)
        self.recorder = _Recorder()
        self.interval_index = 0
        self.sent = 0
        self.rate = config.rate / config.workers
        self.clients = int(split(config.clients, config.workers, index))
        self.t0 = 0.0
        #: The common start (``time.monotonic()``), once the parent said go.
        self.start_monotonic: float | None = None
        #: The domain target's attested keys, made before the run (see ``_domain``).
        self.certifications = [] if spec.domain is None else make_attestations(spec.domain, POOL)
        self.anonymous = (
            None if spec.domain is None else ChannelIdentity.anonymous(spec.domain.policy_cert)
        )

    def record(self, op: str, measured_from: float, error: BaseException | None) -> None:
        if measured_from - self.t0 < self.config.warmup:
            self.recorder.warmup += 1
        elif error is not None:
            self.recorder.add(op, None, error_kind(error))
        else:
            latency_us = (trio.current_time() - measured_from) * 1e6
            self.recorder.add(op, min(max(1, round(latency_us)), HIGHEST_US), None)

    def flush(self) -> None:
        self.conn.send(self.recorder.take(self.interval_index, self.index))
        self.interval_index += 1

    async def one(self, client: Client, measured_from: float) -> None:
        self.sent += 1
        try:
            await client.prepare()
            with trio.fail_after(self.config.request_timeout):
                await client.request()
        except Exception as exc:  # any failure of the target counts, by its kind
            self.record(client.last_op, measured_from, exc)
        else:
            self.record(client.last_op, measured_from, None)
        finally:
            await client.settle()

    def client(self, number: int) -> Client:
        if self.spec.domain is not None and self.anonymous is not None:
            return DomainClient(
                self.spec.address,
                self.spec.domain,
                self.anonymous,
                self.certifications,
                start=number,
                step=self.clients,
                fresh=self.config.fresh,
            )
        if self.identity is not None and self.spec.kind == "secret":
            position = number * self.config.workers + self.index  # over all workers
            addresses = self.spec.addresses or (self.spec.address,)
            return SecretClient(
                addresses[position % len(addresses)],
                self.identity,
                cycle=self.cycle,
                start=position,
                objects=self.config.objects,
                value_size=self.config.request_size,
                fresh=self.config.fresh,
            )
        if self.identity is not None:
            return HandshakeClient(self.spec.address, self.identity)
        return EchoClient(
            self.spec.address,
            ca_pem=self.spec.ca_pem,
            size=self.config.request_size,
            fresh=self.config.fresh,
        )

    async def open_client(self, number: int, schedule: itertools.count[int]) -> None:
        client = self.client(number)
        end = self.t0 + self.config.end
        try:
            for n in schedule:
                intended = self.t0 + intended_time(n, self.rate, self.config.ramp_up)
                if intended >= end:
                    break
                await trio.sleep_until(intended)
                if trio.current_time() >= end:
                    break  # the rest of the schedule is missed, and counted so
                await self.one(client, intended)
        finally:
            await client.aclose()

    async def closed_client(self, number: int) -> None:
        client = self.client(number)
        end = self.t0 + self.config.end
        # Ramp-up: the clients of all workers start one after another.
        position = number * self.config.workers + self.index
        await trio.sleep_until(self.t0 + self.config.ramp_up * position / self.config.clients)
        try:
            while trio.current_time() < end:
                await self.one(client, trio.current_time())
        finally:
            await client.aclose()

    async def ticker(self) -> None:
        while True:
            await trio.sleep_until(self.t0 + (self.interval_index + 1) * self.config.interval)
            self.flush()

    async def run(self) -> None:
        self.conn.send(("ready", self.index, os.getpid()))
        message = await trio.to_thread.run_sync(self.conn.recv)
        self.start_monotonic = float(message[1])
        self.t0 = trio.current_time() + (self.start_monotonic - time.monotonic())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.ticker)
            async with trio.open_nursery() as clients:
                schedule = itertools.count()
                for number in range(self.clients):
                    if self.config.model == "open":
                        clients.start_soon(self.open_client, number, schedule)
                    else:
                        clients.start_soon(self.closed_client, number)
            nursery.cancel_scope.cancel()

    def missed(self) -> int:
        """Sends due by the end (or by now, if stopped early) that never started."""
        if self.config.model != "open" or self.start_monotonic is None:
            return 0
        until = min(self.config.end, time.monotonic() - self.start_monotonic)
        due = offered_between(0, until, self.rate, self.config.ramp_up)
        return max(0, round(due) - self.sent)


def worker_main(
    conn: Connection,
    config: LoadConfig,
    index: int,
    spec: TargetSpec,
) -> None:
    """A worker process's main (see the module's text for what it says and when)."""
    worker = _Worker(config, index, conn, spec)
    interrupted = False
    try:
        trio.run(worker.run)
    except* KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupted = True
    try:
        worker.flush()
        summary = {"sent": worker.sent, "missed": worker.missed(), "interrupted": interrupted}
        conn.send(("done", index, summary))
    except (OSError, EOFError):
        pass  # the parent is gone: nobody to tell
    finally:
        conn.close()
