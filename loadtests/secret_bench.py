"""The secret server's figures: reads against a plain TLS echo, fresh-channel reads
against bare handshakes, writes on SQLite and PostgreSQL, a 10,000-object rotation.

Everything runs in this one process on 127.0.0.1 (clients and servers share one
thread and one event loop; the database works in its worker threads), against a
REAL secret server: :func:`~taonet_services.secret_server.run_secret_server` as
``taonet secret-server`` runs it (provisioned through a real domain service on a
soft host, its master key sealed, the domain's ACL guard, the extensions on), over
real Tao channels (TLS 1.3) and a real database (an SQLite file, WAL and
synchronous=FULL; and PostgreSQL with fsync on). Every read is authorized by the
guard and its release committed to the audit chain before the value is sent.

* ``read``: ``--clients`` clients (default 50), each on its own persistent channel
  (:func:`taonet.secrets.connect`), read a 32-byte key again and again;
  ``echo``: the same number of clients, each on its own ``trio.SSLStream`` (TLS 1.3,
  the same certificates and SSL contexts), against a plain TLS echo server that
  answers each request of exactly the Read request's size on the wire with an
  answer of exactly the Read answer's size; ``tao_echo``: the same echo over Tao
  channels (the server's identity and CRL), which shows what the channel layer
  costs; ``protocol_echo``: the same clients (``store.read``) against a server that
  only parses each request's envelope and body and sends a fixed Read answer (no
  guard, database or audit), which shows what the protocol stack costs. Blocks
  alternate read, protocol_echo, tls_echo, tao_echo, then the reverse, for
  ``--rounds`` rounds. ``read_ratio_vs_tls_echo`` = reads/s over echoes/s (median
  of the per-round ratios), p50/p99 latency (sorted samples) and the CPU time of
  the process per operation (``*_cpu_us``: clients and server together).
* ``fresh_read``: ``--fresh-clients`` clients (default: ``--clients``), each in a
  loop: a new channel (TLS handshake, the server's verdict), one Read, close;
  ``handshake``: the same channel opened, accepted and closed without a request,
  against a channel server with the same identity and CRL.
  ``fresh_read_ratio_vs_handshake``.
* ``write``: ``--clients`` clients each writing its own name (a 32-byte value; each
  write its own transaction, audited in it) on SQLite and on PostgreSQL (a private
  server started like the tests' one with fsync on, or ``--pg-url``; skipped with a
  note in the JSON when there is none).
* ``rotation_s``: one Rotate of a key protecting ``--children`` objects (default
  10,000; every child rewrapped, one transaction), on SQLite.

``--metrics`` adds ``read_metrics``: the same reads against the same server with its
Prometheus metrics on (:class:`~taonet_services.metrics.ServiceMetrics`: requests,
latency histograms, channels, handshakes, audit writes; not scraped), in blocks
alternating with the others; ``read_metrics_cpu_ratio`` = its CPU per read over
``read``'s, ``read_metrics_ratio_vs_read`` = its reads/s over ``read``'s. It also adds
``read_again``, the same reads with the metrics off once more, so that
``read_again_cpu_ratio`` and ``read_again_ratio_vs_read`` show how far two identical
subjects differ in this run (the noise a metrics ratio must be read against); and
``metrics_record_us``, the CPU time of recording one request (counter and latency
histogram) in a tight loop, against ``prometheus_client_record_us``, the same with
prometheus-client's own Counter and Histogram objects, their label children made once
(``metrics_record_ratio``).

``--profile FILE`` also profiles one read block (cProfile, all of this process's
event loop: clients and server) and prints the top functions to stderr.

    python loadtests/secret_bench.py [--quick] [--clients N] [--seconds S] [--rounds N]
        [--children N] [--pg-url URL | --no-pg] [--profile FILE] [--metrics]
        [--only reads|fresh|writes|rotation]

Prints a table, then as its last line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taonet.certs import CHANNEL_HOSTNAME
from taonet.channel import ChannelIdentity, TaoStream, open_channel, serve_channels
from taonet.crypto import KdfParams
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.secrets import (
    MAX_RESPONSE_BODY,
    ReadRequest,
    SecretStore,
    connect,
    decode_request,
    encode_request,
    encode_response,
    request_body_limit,
)
from taonet.wire import END_OF_STREAM, MAX_REQUEST_HEADER, NEED_DATA, Envelope, Role
from taonet_services.metrics import ServiceMetrics
from taonet_services.secret_server import Running, SecretServer
from taonet_services.secret_server._store import utc_now
from tests.secrets.world import World, secret_world

HOST = "127.0.0.1"
PASSWORD = b"bench"
KEY = "/bench/key"
OWNER = [("owner", op, "/bench") for op in ("Read", "Write", "Create", "Delete", "Own")]
#: Upper bound on one operation (a hang is a failure, not a figure).
IO_TIMEOUT = 60.0


def wire_sizes(store_value: bytes) -> tuple[int, int]:
    """Bytes of one Read request and of its answer on the wire (envelope frames)."""
    client = Envelope(Role.CLIENT, body_limit=MAX_RESPONSE_BODY)
    method, body = encode_request(ReadRequest(KEY))
    request = b"".join(client.request(method, 1, body))
    server = Envelope(Role.SERVER, body_limit=request_body_limit)
    server.receive_data(request)
    server.next_event()
    answer = b"".join(server.response(method, 1, store_value))
    return len(request), len(answer)


# --- the plain TLS echo ------------------------------------------------------------


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bool:
    got = 0
    while got < n:
        data = await stream.receive_some(n - got)
        if not data:
            return False
        got += len(data)
    return True


async def start_echo(
    nursery: trio.Nursery, identity: ChannelIdentity, request: int, answer: int
) -> int:
    """A plain TLS server: each ``request`` bytes in get ``answer`` bytes back."""
    context = identity.server_context()
    reply = b"a" * answer

    async def serve_one(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, context, server_side=True)
        try:
            await stream.do_handshake()
            while await _receive_exactly(stream, request):
                await stream.send_all(reply)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve_one, 0, host=HOST))
    return int(listeners[0].socket.getsockname()[1])


async def start_tao_echo(
    nursery: trio.Nursery, server: SecretServer, request: int, answer: int
) -> int:
    """The same echo over Tao channels (the secret server's identity and CRL)."""
    reply = b"a" * answer

    async def serve(stream: TaoStream) -> None:
        while await _receive_exactly(stream, request):
            await stream.send_all(reply)

    listeners = await nursery.start(
        functools.partial(serve_channels, serve, 0, server.identity, revocations=server.revocations)
    )
    return int(listeners[0].socket.getsockname()[1])


async def start_protocol_echo(nursery: trio.Nursery, server: SecretServer, answer: bytes) -> int:
    """The secret service's protocol without the server: over Tao channels, each
    request's envelope parsed and its body decoded, then a fixed Read answer sent in an
    envelope, one request at a time (no guard, no database, no audit)."""

    async def serve(stream: TaoStream) -> None:
        envelope = Envelope(
            Role.SERVER, body_limit=request_body_limit, header_limit=MAX_REQUEST_HEADER
        )
        while True:
            event = envelope.next_event()
            if event is NEED_DATA:
                envelope.body_length()
                envelope.receive_data(await stream.receive_some(65536))
                continue
            if event is END_OF_STREAM:
                return
            decode_request(event.op, event.body)
            await stream.send_all(b"".join(envelope.response(event.op, event.seq, answer)))

    listeners = await nursery.start(
        functools.partial(serve_channels, serve, 0, server.identity, revocations=server.revocations)
    )
    return int(listeners[0].socket.getsockname()[1])


class TaoEchoClient:
    def __init__(self, stream: TaoStream, request: int, answer: int) -> None:
        self.stream, self.request, self.answer = stream, b"r" * request, answer

    @classmethod
    async def open(
        cls, port: int, identity: ChannelIdentity, request: int, answer: int
    ) -> TaoEchoClient:
        stream = await open_channel(HOST, port, identity)
        await stream.wait_accepted()
        return cls(stream, request, answer)

    async def once(self) -> None:
        await self.stream.send_all(self.request)
        if not await _receive_exactly(self.stream, self.answer):
            raise RuntimeError("the echo server closed the stream")

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class EchoClient:
    def __init__(self, stream: trio.SSLStream[Any], request: int, answer: int) -> None:
        self.stream, self.request, self.answer = stream, b"r" * request, answer

    @classmethod
    async def open(
        cls, port: int, identity: ChannelIdentity, request: int, answer: int
    ) -> EchoClient:
        tcp = await trio.open_tcp_stream(HOST, port)
        stream = trio.SSLStream(tcp, identity.client_context(), server_hostname=CHANNEL_HOSTNAME)
        await stream.do_handshake()
        return cls(stream, request, answer)

    async def once(self) -> None:
        await self.stream.send_all(self.request)
        if not await _receive_exactly(self.stream, self.answer):
            raise RuntimeError("the echo server closed the stream")

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class ReadClient:
    def __init__(self, stack: contextlib.AsyncExitStack, store: SecretStore) -> None:
        self.stack, self.store = stack, store

    @classmethod
    async def open(cls, address: tuple[str, int], identity: ChannelIdentity) -> ReadClient:
        stack = contextlib.AsyncExitStack()
        store = await stack.enter_async_context(connect(address, identity))
        return cls(stack, store)

    async def once(self) -> None:
        obj = await self.store.read(KEY)
        if len(obj.value) != 32:
            raise RuntimeError("not the 32-byte key")

    async def aclose(self) -> None:
        await self.stack.aclose()


# --- measuring -----------------------------------------------------------------------


class Block:
    """One measured block: operations, their latencies, wall and CPU seconds."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.wall = 0.0
        self.cpu = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.wall

    @property
    def cpu_us(self) -> float:
        """CPU time of this whole process (every thread) per operation, microseconds."""
        return self.cpu / max(1, self.count) * 1e6


async def concurrent_rate(
    clients: int, seconds: float, make: Callable[[], Awaitable[Any]], block: Block
) -> float:
    """Operations per second by ``clients`` tasks, each on its own open connection
    (``make()``, an object with ``once()`` and ``aclose()``), counted in ``block``.
    Connections are opened before the clock starts and closed after it stops."""
    conns = [await make() for _ in range(clients)]
    latencies = block.latencies
    count = 0
    ready = trio.Event()
    stop_at = 0.0

    async def run(conn: Any) -> None:
        nonlocal count
        await ready.wait()
        while (now := time.perf_counter()) < stop_at:
            with trio.fail_after(IO_TIMEOUT):
                await conn.once()
            latencies.append(time.perf_counter() - now)
            count += 1

    try:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(run, conn)
            cpu = time.process_time()
            start = time.perf_counter()
            stop_at = start + seconds
            ready.set()
        block.wall += time.perf_counter() - start
        block.cpu += time.process_time() - cpu
        block.count += count
    finally:
        for conn in reversed(conns):  # nurseries inside: last opened, first closed
            await conn.aclose()
    return count / (time.perf_counter() - start)


class Repeat:
    """A "connection" whose every operation is the whole of ``one()`` (a fresh channel)."""

    def __init__(self, one: Callable[[], Awaitable[None]]) -> None:
        self.once = one

    async def aclose(self) -> None:
        pass


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(value: float) -> float:
    return round(value * 1000, 3)


@contextlib.asynccontextmanager
async def world_of(base: Path) -> AsyncIterator[World]:
    kdf = KdfParams.for_tests()
    counter = iter(range(1000))

    def make_domain(**fields: Any) -> Domain:
        return Domain.create(
            base / f"d{next(counter)}", DomainTemplate(**fields), PASSWORD, kdf=kdf
        )

    def make_host(domain: Domain) -> SoftHost:
        host = SoftHost.create(base / f"h{next(counter)}", PASSWORD, kdf=kdf)
        host.set_root_endorsement(
            domain.certify_host(domain.unlock(PASSWORD), host.public_key_der())
        )
        return host

    async with secret_world(
        base / "w", make_domain, make_host, grants=OWNER, password=PASSWORD
    ) as world:
        yield world


async def reads(world: World, args: argparse.Namespace, result: dict[str, Any]) -> None:
    assert world.running is not None
    assert world.nursery is not None
    server = world.running.server
    identity = await world.identity("owner")
    async with connect(world.address, identity) as store:
        obj = await store.read(KEY)
    request, answer = wire_sizes(encode_response(obj))
    port = await start_echo(world.nursery, server.identity, request, answer)
    tao_port = await start_tao_echo(world.nursery, server, request, answer)
    protocol_port = await start_protocol_echo(world.nursery, server, encode_response(obj))
    metrics: ServiceMetrics | None = None
    subjects: dict[str, Callable[[], Awaitable[Any]]] = {
        "read": lambda: ReadClient.open(world.address, identity),
        "protocol_echo": lambda: ReadClient.open((HOST, protocol_port), identity),
        "tls_echo": lambda: EchoClient.open(port, identity, request, answer),
        "tao_echo": lambda: TaoEchoClient.open(tao_port, identity, request, answer),
    }
    order: tuple[str, ...] = ("read", "protocol_echo", "tls_echo", "tao_echo")
    if args.metrics:  # the same server, its metrics on for these blocks only
        metrics = ServiceMetrics("secret_server")
        subjects["read_metrics"] = subjects["read_again"] = subjects["read"]
        order = ("read", "read_metrics", "read_again", *order[1:])
    await concurrent_rate(args.clients, 0.3, subjects["read"], Block())  # warm up
    blocks = {subject: Block() for subject in subjects}
    rates: dict[str, list[float]] = {subject: [] for subject in subjects}
    for _ in range(args.rounds):
        for subject in (*order, *reversed(order)):
            server.metrics = metrics if subject == "read_metrics" else None
            rate = await concurrent_rate(
                args.clients, args.seconds / 2, subjects[subject], blocks[subject]
            )
            rates[subject].append(rate)

    def ratio(subject: str, baseline: str) -> float:
        a, b = rates[subject], rates[baseline]
        per_round = [
            (a[2 * i] + a[2 * i + 1]) / (b[2 * i] + b[2 * i + 1]) for i in range(len(a) // 2)
        ]
        return round(statistics.median(per_round), 3)

    for subject, block in blocks.items():
        result[f"{subject}_per_s"] = round(statistics.median(rates[subject]), 1)
        result[f"{subject}_p50_ms"] = ms(percentile(block.latencies, 0.5))
        result[f"{subject}_p99_ms"] = ms(percentile(block.latencies, 0.99))
        result[f"{subject}_cpu_us"] = round(block.cpu_us, 1)
    result.update(
        read_ratio_vs_tls_echo=ratio("read", "tls_echo"),
        read_ratio_vs_tao_echo=ratio("read", "tao_echo"),
        read_ratio_vs_protocol_echo=ratio("read", "protocol_echo"),
        protocol_echo_ratio_vs_tls_echo=ratio("protocol_echo", "tls_echo"),
        tao_echo_ratio_vs_tls_echo=ratio("tao_echo", "tls_echo"),
        request_bytes=request,
        answer_bytes=answer,
    )
    server.metrics = None
    if metrics is not None:
        counted = sum(
            sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == "taonet_secret_server_requests_total"
        )
        result.update(
            read_metrics_cpu_ratio=round(blocks["read_metrics"].cpu_us / blocks["read"].cpu_us, 3),
            read_metrics_ratio_vs_read=ratio("read_metrics", "read"),
            read_metrics_requests_counted=int(counted),
            read_again_cpu_ratio=round(blocks["read_again"].cpu_us / blocks["read"].cpu_us, 3),
            read_again_ratio_vs_read=ratio("read_again", "read"),
            **record_costs(),
        )
    cache = getattr(server, "cache", None)
    if cache is not None:
        result.update(read_cache_hits=cache.hits, read_cache_misses=cache.misses)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await concurrent_rate(args.clients, args.seconds / 2, subjects["read"], Block())
        profiler.disable()
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(args.profile, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)


def record_costs(n: int = 200_000) -> dict[str, float]:
    """CPU microseconds to record one read (counter + latency histogram): ServiceMetrics
    against prometheus-client's own objects, in the same run."""
    import prometheus_client

    ours = ServiceMetrics("secret_server")
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("c", "c", ("operation", "outcome"), registry=registry)
    histogram = prometheus_client.Histogram("h", "h", ("operation",), registry=registry)
    # Their label children made once (labels() per call would cost more still).
    read_ok, read_latency = counter.labels("read", "ok"), histogram.labels("read")

    def theirs(seconds: float) -> None:
        read_ok.inc()
        read_latency.observe(seconds)

    def cost(record: Callable[[float], None]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for _ in range(n):
                record(0.0004)
            best = min(best, time.process_time() - start)
        return best / n * 1e6

    mine = cost(lambda seconds: ours.request("read", "ok", seconds))
    base = cost(theirs)
    return {
        "metrics_record_us": round(mine, 3),
        "prometheus_client_record_us": round(base, 3),
        "metrics_record_ratio": round(mine / base, 3),
    }


async def fresh(world: World, args: argparse.Namespace, result: dict[str, Any]) -> None:
    assert world.running is not None
    assert world.nursery is not None
    server = world.running.server
    identity = await world.identity("owner")

    async def wait_for_close(stream: TaoStream) -> None:
        while await stream.receive_some():
            pass

    listeners = await world.nursery.start(
        functools.partial(
            serve_channels, wait_for_close, 0, server.identity, revocations=server.revocations
        )
    )
    bare = int(listeners[0].socket.getsockname()[1])

    async def handshake() -> None:
        stream = await open_channel(HOST, bare, identity)
        try:
            await stream.wait_accepted()
        finally:
            await stream.aclose()

    async def fresh_read() -> None:
        async with connect(world.address, identity) as store:
            await store.read(KEY)

    subjects = {"fresh_read": fresh_read, "handshake": handshake}
    blocks = {subject: Block() for subject in subjects}
    rates: dict[str, list[float]] = {subject: [] for subject in subjects}
    for _ in range(args.rounds):
        for subject in ("fresh_read", "handshake", "handshake", "fresh_read"):
            one = subjects[subject]

            async def make(one: Callable[[], Awaitable[None]] = one) -> Repeat:
                return Repeat(one)

            rates[subject].append(
                await concurrent_rate(args.fresh_clients, args.seconds / 2, make, blocks[subject])
            )
    a, b = rates["fresh_read"], rates["handshake"]
    per_round = [(a[2 * i] + a[2 * i + 1]) / (b[2 * i] + b[2 * i + 1]) for i in range(args.rounds)]
    for subject, block in blocks.items():
        result[f"{subject}_per_s"] = round(statistics.median(rates[subject]), 1)
        result[f"{subject}_p50_ms"] = ms(percentile(block.latencies, 0.5))
        result[f"{subject}_cpu_us"] = round(block.cpu_us, 1)
    result["fresh_clients"] = args.fresh_clients
    result["fresh_read_ratio_vs_handshake"] = round(statistics.median(per_round), 3)


async def writes(
    world: World, running: Running, label: str, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    identity = await world.identity("owner")
    address = (HOST, running.port)
    async with connect(address, identity) as store:
        for i in range(args.clients):
            await store.create(f"/bench/w/{i}", bytes(32))

    class Writer:
        def __init__(self, stack: contextlib.AsyncExitStack, store: SecretStore, i: int) -> None:
            self.stack, self.store, self.name = stack, store, f"/bench/w/{i}"

        async def once(self) -> None:
            await self.store.write(self.name, os.urandom(32))

        async def aclose(self) -> None:
            await self.stack.aclose()

    counter = iter(range(10**9))

    async def make() -> Writer:
        stack = contextlib.AsyncExitStack()
        store = await stack.enter_async_context(connect(address, identity))
        return Writer(stack, store, next(counter) % args.clients)

    block = Block()
    await concurrent_rate(args.clients, args.seconds, make, block)
    result[f"{label}_write_per_s"] = round(block.rate, 1)
    result[f"{label}_write_p50_ms"] = ms(percentile(block.latencies, 0.5))
    result[f"{label}_write_p99_ms"] = ms(percentile(block.latencies, 0.99))


async def rotation(world: World, args: argparse.Namespace, result: dict[str, Any]) -> None:
    assert world.running is not None
    server: SecretServer = world.running.server
    identity = await world.identity("owner")
    async with connect(world.address, identity) as store:
        await store.create("/bench/rot")
        now = utc_now()

        def fill(cur: Any) -> None:  # setup only: the children, in one transaction
            for i in range(args.children):
                server.tables.create_in(
                    cur,
                    f"/bench/rot-child/{i}",
                    os.urandom(32),
                    "bytes",
                    "/bench/rot",
                    None,
                    None,
                    now,
                )

        await server.db.transaction(fill)
        start = time.perf_counter()
        with trio.fail_after(IO_TIMEOUT * 5):
            new = await store.rotate("/bench/rot")
        result["rotation_s"] = round(time.perf_counter() - start, 3)
        result["rotation_children"] = args.children
        # Spot check: a child reads back under the new epoch's protection.
        child = await store.read(f"/bench/rot-child/{args.children - 1}")
        if len(child.value) != 32 or new.epoch != 2:
            raise RuntimeError("the rotation did not keep its children")


async def measure(args: argparse.Namespace, pg_url: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "clients": args.clients,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "server": "in process: run_secret_server, real TLS on 127.0.0.1, SQLite file (WAL, FULL)",
    }
    base = Path(tempfile.mkdtemp(prefix="secret-bench-"))
    try:
        async with world_of(base) as world:
            assert world.running is not None
            async with connect(world.address, await world.identity("owner")) as store:
                await store.create(KEY)  # a random 32-byte key
            only = args.only
            if only in (None, "reads"):
                await reads(world, args, result)
            if only in (None, "fresh"):
                await fresh(world, args, result)
            if only in (None, "writes"):
                await writes(world, world.running, "sqlite", args, result)
                if pg_url is not None:
                    running = await world.start_server("pg-server", db_url=pg_url)
                    await writes(world, running, "postgresql", args, result)
            if only in (None, "rotation"):
                await rotation(world, args, result)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--fresh-clients", type=int, default=None, help="clients opening a channel per read"
    )
    parser.add_argument("--seconds", type=float, default=None, help="per subject and round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--pg-url", help="a PostgreSQL to use (default: start a private one)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--profile", help="cProfile one read block into this file")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also measure reads with the server's Prometheus metrics on (read_metrics)",
    )
    parser.add_argument(
        "--only",
        choices=("reads", "fresh", "writes", "rotation"),
        help="measure only this part (the table then shows only its lines)",
    )
    args = parser.parse_args()
    args.seconds = args.seconds or (2.0 if args.quick else 6.0)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.fresh_clients = args.fresh_clients or args.clients

    pg = None
    pg_url = args.pg_url
    note = None
    if pg_url is None and not args.no_pg and args.only in (None, "writes"):
        try:
            from tests.pg import PgServer

            if shutil.which("initdb") is None:
                raise RuntimeError("initdb not on PATH")
            pg = PgServer(fsync=True)
            pg.start()
            pg_url = pg.url()
        except Exception as exc:  # the bench reports it and goes on without
            note = f"not measured: {exc}"
            print(f"no PostgreSQL: {exc}", file=sys.stderr)
    try:
        result = trio.run(measure, args, pg_url)
    finally:
        if pg is not None:
            pg.remove()
    if pg_url is None:
        result["postgresql"] = note or "not measured: --no-pg"

    if "read_per_s" in result:
        print_reads(args, result)
    if "fresh_read_per_s" in result:
        print(
            f"fresh channel per read ({args.fresh_clients} clients):"
            f" {result['fresh_read_per_s']:.0f}/s, bare handshakes:"
            f" {result['handshake_per_s']:.0f}/s  ratio {result['fresh_read_ratio_vs_handshake']}"
        )
    for label in ("sqlite", "postgresql"):
        if f"{label}_write_per_s" in result:
            print(
                f"writes on {label}: {result[f'{label}_write_per_s']:.0f}/s"
                f" (p50 {result[f'{label}_write_p50_ms']} ms)"
            )
    if "rotation_s" in result:
        print(f"rotation of a key protecting {args.children} objects: {result['rotation_s']} s")
    print(json.dumps(result, sort_keys=True))


def print_reads(args: argparse.Namespace, result: dict[str, Any]) -> None:
    print(
        f"reads, {args.clients} clients on persistent channels:"
        f" {result['read_per_s']:.0f}/s (p50 {result['read_p50_ms']} ms,"
        f" p99 {result['read_p99_ms']} ms)"
    )
    print(
        f"plain TLS echo, same sizes ({result['request_bytes']} B in,"
        f" {result['answer_bytes']} B out): {result['tls_echo_per_s']:.0f}/s"
        f" (p50 {result['tls_echo_p50_ms']} ms, p99 {result['tls_echo_p99_ms']} ms)"
        f"  ratio {result['read_ratio_vs_tls_echo']}"
    )
    print(
        f"echo over Tao channels, same sizes: {result['tao_echo_per_s']:.0f}/s"
        f"  (reads vs it: {result['read_ratio_vs_tao_echo']}; it vs plain TLS:"
        f" {result['tao_echo_ratio_vs_tls_echo']})"
    )
    print(
        f"the protocol alone (envelope and codec over Tao channels, the client's read):"
        f" {result['protocol_echo_per_s']:.0f}/s (vs plain TLS echo:"
        f" {result['protocol_echo_ratio_vs_tls_echo']}; reads vs it:"
        f" {result['read_ratio_vs_protocol_echo']})"
    )
    print(
        "CPU per operation (this process, every thread):"
        f" read {result['read_cpu_us']} us, protocol alone {result['protocol_echo_cpu_us']} us,"
        f" TLS echo {result['tls_echo_cpu_us']} us, Tao echo {result['tao_echo_cpu_us']} us"
    )
    if "read_metrics_per_s" in result:
        print(
            f"reads with Prometheus metrics on: {result['read_metrics_per_s']:.0f}/s"
            f" (vs off: {result['read_metrics_ratio_vs_read']}), CPU per read"
            f" {result['read_metrics_cpu_us']} us (vs off: {result['read_metrics_cpu_ratio']});"
            f" the same reads off again: {result['read_again_ratio_vs_read']},"
            f" CPU {result['read_again_cpu_ratio']} (this run's noise)"
        )


if __name__ == "__main__":
    # As deployed: info and debug events filtered out (they would be measured too).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main()
