"""Watch: change events pushed by a real secret server, to those who may Read them.

Real channels on 127.0.0.1, the domain's ACL guard, SQLite and PostgreSQL. The
attacks: a watcher that may not Read a name must not learn of its changes; a
thousand watchers at once (one database read per change, not one per watcher); a
client that stops reading its channel is dropped while the others get their events.
"""

from __future__ import annotations

import gc
import resource
import time
from pathlib import Path
from typing import Any

import trio

from taonet.protected import ObjectId
from taonet.secrets import (
    Op,
    SecretStore,
    WatchEvent,
    connect,
)
from taonet_services.secret_server._watch import WatchHub
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

ALL = ("Read", "Write", "Create", "Delete", "Own")
GRANTS = [
    *[("owner", op, "/app") for op in ALL],
    *[("owner", op, "/other") for op in ALL],
    ("reader", "Read", "/app/db"),
]


def hub_of(world: World, running: Any = None) -> WatchHub:
    running = running or world.running
    assert running is not None
    serve = running.server.extensions[Op.WATCH]
    hub = serve.__self__
    assert isinstance(hub, WatchHub)
    return hub


async def collect(
    store: SecretStore, prefix: str, n: int, out: list[WatchEvent], *, cursor: int = 0
) -> None:
    async for event in store.watch(prefix, cursor=cursor):
        out.append(event)
        if len(out) == n:
            return


async def test_events_in_order_only_for_names_the_watcher_may_read(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            hub = hub_of(world)
            owner_events: list[WatchEvent] = []
            reader_events: list[WatchEvent] = []
            async with (
                connect(world.address, await world.identity("owner")) as owner,
                connect(world.address, await world.identity("owner")) as owner_watch,
                connect(world.address, await world.identity("reader")) as reader,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(collect, owner_watch, "/app", 6, owner_events)
                nursery.start_soon(collect, reader, "/", 3, reader_events)
                await hub.wait_watching(2)
                await owner.create("/app/key")
                await owner.create("/other/x", b"not under /app")
                await owner.create("/app/db/password", b"1", protector="/app/key")
                await owner.create("/app/secret", b"the reader may not read this")
                await owner.write("/app/db/password", b"2")
                await owner.rotate("/app/key")
                await owner.delete("/app/secret")
                await owner.rotate("/app/db/password", b"3")
            assert [(e.id, e.kind) for e in owner_events] == [
                (ObjectId("/app/key", 1), "created"),
                (ObjectId("/app/db/password", 1), "created"),
                (ObjectId("/app/secret", 1), "created"),
                (ObjectId("/app/db/password", 1), "written"),
                (ObjectId("/app/key", 2), "rotated"),
                (ObjectId("/app/secret", 1), "deleted"),
            ]
            seqs = [e.seq for e in owner_events]
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == len(seqs)
            # The reader watches everything but hears only of /app/db: no /app/key,
            # no /app/secret, no /other.
            assert [(e.id, e.kind) for e in reader_events] == [
                (ObjectId("/app/db/password", 1), "created"),
                (ObjectId("/app/db/password", 1), "written"),
                (ObjectId("/app/db/password", 2), "rotated"),
            ]


async def test_a_watcher_resumes_from_its_cursor(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            hub = hub_of(world)
            events: list[WatchEvent] = []
            async with connect(world.address, await world.identity("owner")) as owner:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect, owner, "/app", 1, events)
                    await hub.wait_watching(1)
                    await owner.create("/app/a", b"a")
                # Nobody watches while these happen; the cursor brings them back.
                await owner.create("/app/b", b"b")
                await owner.create("/app/c", b"c")
                later: list[WatchEvent] = []
                await collect(owner, "/app", 2, later, cursor=events[0].seq)
            assert [e.id.name for e in later] == ["/app/b", "/app/c"]


async def test_a_change_on_one_replica_wakes_watchers_on_another(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    """PostgreSQL: the change's transaction NOTIFYs; the other replica's listener wakes,
    reads the log once and answers its watchers (nothing polls)."""
    with trio.fail_after(90):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=GRANTS, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            hub_two = hub_of(world, second)
            got: list[WatchEvent] = []
            reader = await world.identity("reader")
            async with (
                connect(world.address, await world.identity("owner")) as one,
                connect(("127.0.0.1", second.port), reader) as two,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(collect, two, "/app/db", 3, got)
                await hub_two.wait_watching(1)
                fetches = hub_two.fetches
                await one.create("/app/db/a", b"1")
                await one.write("/app/db/a", b"2")
                await one.create("/app/other", b"not for the reader")
                await one.rotate("/app/db/a", b"3")
            assert [(e.id, e.kind) for e in got] == [
                (ObjectId("/app/db/a", 1), "created"),
                (ObjectId("/app/db/a", 1), "written"),
                (ObjectId("/app/db/a", 2), "rotated"),
            ]
            # Woken by notifications only: at most one log read per change.
            assert hub_two.fetches - fetches <= 4


async def test_a_thousand_watchers(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """1,000 Watch calls at once over 100 real channels (10 each): every one gets the
    event; the server reads the log once per change. Prints the figures."""
    channels, per_channel, rounds = 100, 10, 3
    with trio.fail_after(240):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            hub = hub_of(world)
            identity = await world.identity("reader")
            async with connect(world.address, await world.identity("owner")) as owner:
                await owner.create("/app/db/k", b"0")
                stores: list[SecretStore] = []
                async with trio.open_nursery() as nursery:
                    for _ in range(channels):
                        stores.append(await nursery.start(_open_store, world, identity))
                    gc.collect()
                    rss_before = _rss_kib()
                    fetches = hub.fetches
                    latencies: list[float] = []
                    for round_ in range(rounds):
                        got: list[float] = []
                        done = trio.Event()
                        started = 0.0

                        async def watch_once(store: SecretStore, *, got: list[float] = got,
                                             done: trio.Event = done) -> None:  # fmt: skip
                            async for event in store.watch("/app/db"):
                                assert event.kind == "written"
                                got.append(time.perf_counter())
                                if len(got) == channels * per_channel:
                                    done.set()
                                return

                        async with trio.open_nursery() as watchers:
                            for store in stores:
                                for _ in range(per_channel):
                                    watchers.start_soon(watch_once, store)
                            await hub.wait_watching(channels * per_channel)
                            if round_ == 0:
                                rss_during = _rss_kib()
                            started = time.perf_counter()
                            await owner.write("/app/db/k", b"%d" % round_)
                            await done.wait()
                        latencies.append(max(got) - started)
                    fetch_count = hub.fetches - fetches
                    nursery.cancel_scope.cancel()
    print(
        f"\n1000 watchers: all received each event within {max(latencies) * 1000:.0f} ms"
        f" (rounds: {', '.join(f'{x * 1000:.0f}' for x in latencies)} ms);"
        f" server+clients RSS {rss_before} -> {rss_during} KiB while watching"
        f" ({(rss_during - rss_before) / 1000:.1f} KiB per watcher, both sides);"
        f" {fetch_count} log reads for {rounds} changes"
    )
    # One read of the log per change, whatever the number of watchers.
    assert fetch_count <= rounds * 2


async def _open_store(
    world: World, identity: Any, *, task_status: trio.TaskStatus[SecretStore]
) -> None:
    async with connect(world.address, identity) as store:
        task_status.started(store)
        await trio.sleep_forever()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
