"""Measure the secret server in process (not a test; loadtests/secret_bench.py is the full one).

    .venv/bin/python -m tests.secrets.bench_server [--clients 50] [--seconds 3] [--children 10000]

Everything real: TLS channels on 127.0.0.1, the ACL guard, SQLite in a temporary
domain directory. Figures, measured in the same run, in alternating blocks:

* ``reads_per_s``: reads of a 32-byte key by ``--clients`` clients on persistent
  channels, each release committed to the audit chain before the value is sent,
  releases of concurrent reads committed together (the server as built);
* ``reads_per_s_audit_each``: the same with one audit transaction per release (the
  design before batching);
* ``echo_per_s``: the same clients on the same kind of channel against an echo of
  a request and answer of the read's sizes (a baseline for the protocol's cost);
* ``rotation_s``: one rotation of a key protecting ``--children`` objects (rewrap,
  one transaction).

The last line is one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from taonet.channel import ChannelIdentity, MessageStream, TaoStream, open_channel, serve_channels
from taonet.crypto import KdfParams
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.secrets import SecretStore, connect
from taonet_services.secret_server import SecretServer
from tests.secrets.world import World, secret_world

PASSWORD = b"bench"
OWNER = [("owner", op, "/") for op in ("Read", "Write", "Create", "Delete", "Own")]


async def _throughput(
    clients: int, seconds: float, make: Callable[[], Awaitable[Any]], one: str
) -> float:
    """Calls per second by ``clients`` tasks, each on its own persistent connection."""
    count = 0
    deadline = trio.current_time() + seconds

    async def client() -> None:
        nonlocal count
        conn = await make()
        try:
            while trio.current_time() < deadline:
                await getattr(conn, one)()
                count += 1
        finally:
            await conn.aclose()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return count / (trio.current_time() - start)


class _Reader:
    def __init__(self, world: World, identity: ChannelIdentity) -> None:
        self._world, self._identity = world, identity
        self._cm: Any = None
        self.store: SecretStore | None = None

    async def open(self) -> _Reader:
        self._cm = connect(self._world.address, self._identity)
        self.store = await self._cm.__aenter__()
        return self

    async def read(self) -> None:
        assert self.store is not None
        await self.store.read("/bench/key")

    async def aclose(self) -> None:
        await self._cm.__aexit__(None, None, None)


class _Echoer:
    def __init__(self, address: tuple[str, int], identity: ChannelIdentity) -> None:
        self._address, self._identity = address, identity
        self.messages: MessageStream | None = None

    async def open(self) -> _Echoer:
        stream = await open_channel(*self._address, self._identity)
        self.messages = MessageStream(stream, max_frame=4096)
        return self

    async def read(self) -> None:
        assert self.messages is not None
        await self.messages.send_message(b"r" * 40)  # a Read request's size
        await self.messages.receive_message()

    async def aclose(self) -> None:
        assert self.messages is not None
        await self.messages.aclose()


async def _echo(stream: TaoStream) -> None:
    async with MessageStream(stream, max_frame=4096) as messages:
        try:
            while True:
                await messages.receive_message()
                await messages.send_message(b"a" * 110)  # a Read answer's size
        except (trio.EndOfChannel, trio.BrokenResourceError):
            pass


def _audit_each(server: SecretServer) -> None:
    """The design before batching: one audit transaction per release."""

    async def record(**fields: Any) -> None:
        await server.db.transaction(lambda cur: server.audit.append_in(cur, **fields))

    server._batcher.record = record  # type: ignore[method-assign]


async def _fill(world: World, server: SecretServer, children: int) -> None:
    """``children`` objects under /bench/k, created in one transaction (setup only)."""
    from taonet_services.secret_server._store import utc_now

    async with connect(world.address, await world.identity("owner")) as store:
        await store.create("/bench/k")
    now = utc_now()

    def fill(cur: Any) -> None:
        for i in range(children):
            server.tables.create_in(
                cur, f"/bench/c/{i}", b"v" * 32, "bytes", "/bench/k", None, None, now
            )

    await server.db.transaction(fill)


async def main(args: argparse.Namespace) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="secret-bench-"))
    kdf = KdfParams.for_tests()
    counter = iter(range(100))

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

    figures: dict[str, list[float]] = {"batched": [], "each": [], "echo": []}
    async with secret_world(
        base / "w", make_domain, make_host, grants=OWNER, password=PASSWORD
    ) as world:
        assert world.running is not None
        server = world.running.server
        identity = await world.identity("owner")
        async with connect(world.address, identity) as store:
            await store.create("/bench/key")
        listeners = await world.nursery.start(  # type: ignore[union-attr]
            functools.partial(serve_channels, _echo, 0, server.identity)
        )
        echo_address = ("127.0.0.1", int(listeners[0].socket.getsockname()[1]))
        batched_record = server._batcher.record
        for _ in range(args.blocks):
            server._batcher.record = batched_record  # type: ignore[method-assign]
            figures["batched"].append(
                await _throughput(
                    args.clients, args.seconds, lambda: _Reader(world, identity).open(), "read"
                )
            )
            _audit_each(server)
            figures["each"].append(
                await _throughput(
                    args.clients, args.seconds, lambda: _Reader(world, identity).open(), "read"
                )
            )
            figures["echo"].append(
                await _throughput(
                    args.clients,
                    args.seconds,
                    lambda: _Echoer(echo_address, identity).open(),
                    "read",
                )
            )
        server._batcher.record = batched_record  # type: ignore[method-assign]
        await _fill(world, server, args.children)
        async with connect(world.address, identity) as store:
            start = time.perf_counter()
            await store.rotate("/bench/k")
            rotation = time.perf_counter() - start
    reads, each, echo = (sum(v) / len(v) for v in figures.values())
    return {
        "clients": args.clients,
        "reads_per_s": round(reads, 1),
        "reads_per_s_audit_each": round(each, 1),
        "echo_per_s": round(echo, 1),
        "batching_gain": round(reads / each, 2),
        "read_ratio_vs_echo": round(reads / echo, 3),
        "children": args.children,
        "rotation_s": round(rotation, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--children", type=int, default=10_000)
    result = trio.run(main, parser.parse_args())
    print(json.dumps(result))
