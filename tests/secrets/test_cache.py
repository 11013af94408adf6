"""The read cache never serves what the database no longer says, and never skips a check.

A Read answered from memory (``_cache.ObjectCache``) must give what a Read from the
database would: after a write acknowledged by this server, by a second server on
the same SQLite file, or by a replica on the same PostgreSQL; and a row edited by
hand behind a warm cache is still refused as corrupt. Each test warms the cache
first (and checks that it served hits), then does what would make a naive cache
serve a stale or unverified value.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from taonet.domain import ConservativeGuard
from taonet.secrets import CorruptError, NotFoundError, SecretStore, UnauthorizedError, connect
from taonet_services.secret_server import SecretServer
from taonet_services.secret_server._cache import ObjectCache
from taonet_services.secret_server._program import default_db_url
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
ROW = "SELECT protector_name, protector_epoch, tag, blob, mac FROM secret_objects"


@contextlib.contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def server_of(world: World) -> SecretServer:
    assert world.running is not None
    return world.running.server


def cache_of(server: SecretServer) -> ObjectCache:
    assert server.cache is not None
    return server.cache


async def warm(store: SecretStore, server: SecretServer, name: str, value: bytes) -> None:
    """Read ``name`` until the cache answers it (and check what it answers)."""
    cache = cache_of(server)
    hits = cache.hits
    for _ in range(3):
        assert (await store.read(name)).value == value
    assert cache.hits >= hits + 2, "the cache did not answer: the test would prove nothing"


async def test_rows_edited_behind_a_warm_cache_are_never_served(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """The attacker with the database file edits rows the server has just verified
    and cached: a flipped blob bit, a row rolled back to its older valid copy, a
    manifest swapped in from another name. Each is refused as corrupt, not served
    from memory."""
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            server = server_of(world)
            db = world.domain.path / "secrets.db"
            await store.create("/app/a", b"a value")
            await warm(store, server, "/app/a", b"a value")
            with sql(db) as conn:
                blob = conn.execute(f"{ROW} WHERE name = '/app/a'").fetchone()[3]
                flipped = blob[:-1] + bytes([blob[-1] ^ 1])
                conn.execute("UPDATE secret_objects SET blob = ? WHERE name = '/app/a'", (flipped,))
            with pytest.raises(CorruptError):
                await store.read("/app/a")

            # A rollback to the row's own older copy (genuine blob, tag and MAC).
            await store.create("/app/d", b"old")
            with sql(db) as conn:
                before = conn.execute(f"{ROW} WHERE name = '/app/d'").fetchone()
            await store.write("/app/d", b"new")
            await warm(store, server, "/app/d", b"new")
            with sql(db) as conn:
                conn.execute(
                    "UPDATE secret_objects SET protector_name = ?, protector_epoch = ?, tag = ?,"
                    " blob = ?, mac = ? WHERE name = '/app/d'",
                    tuple(before),
                )
            with pytest.raises(CorruptError, match="rolled back"):
                await store.read("/app/d")

            # A manifest taken from another name.
            await store.create("/app/e", b"e")
            await warm(store, server, "/app/e", b"e")
            with sql(db) as conn:
                manifest, mac = conn.execute(
                    "SELECT manifest, mac FROM secret_names WHERE name = '/app/d'"
                ).fetchone()
                conn.execute(
                    "UPDATE secret_names SET manifest = ?, mac = ? WHERE name = '/app/e'",
                    (manifest, mac),
                )
            with pytest.raises(CorruptError):
                await store.read("/app/e")


async def hammer(store: SecretStore, name: str, stop: trio.Event) -> None:
    """Keep reading ``name`` (keeps the cache warm and busy while writes land)."""
    while not stop.is_set():
        await store.read(name)


async def check_never_stale(
    writer: SecretStore, reader: SecretStore, reader_server: SecretServer | None
) -> None:
    """Write v1..v30 through ``writer``; after each acknowledgement, a read through
    ``reader`` (whose server is kept busy reading the same name) gives that value."""
    await writer.create("/app/shared", b"v0")
    if reader_server is not None:
        await warm(reader, reader_server, "/app/shared", b"v0")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(hammer, reader, "/app/shared", stop)
        for i in range(1, 31):
            value = b"v%d" % i
            await writer.write("/app/shared", value)
            assert (await reader.read("/app/shared")).value == value
        stop.set()


async def test_a_write_on_this_server_is_read_back_at_once(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as writer,
            connect(world.address, await world.identity("owner")) as reader,
        ):
            await check_never_stale(writer, reader, server_of(world))
            assert cache_of(server_of(world)).hits > 0


async def test_a_second_server_on_the_same_sqlite_file_is_never_served_stale(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """Two server processes' worth of servers on one SQLite file: what one writes,
    the other's warm cache never hides (its cache sees the other's commits, not only
    its own)."""
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            url = default_db_url(world.domain.path)
            second = await world.start_server("second", db_url=url)
            owner = await world.identity("owner")
            async with (
                connect(world.address, owner) as one,
                connect(("127.0.0.1", second.port), owner) as two,
            ):
                await check_never_stale(one, two, second.server)
                await check_never_stale_other_way(two, one, server_of(world))


async def check_never_stale_other_way(
    writer: SecretStore, reader: SecretStore, reader_server: SecretServer
) -> None:
    await writer.create("/app/other", b"w0")
    await warm(reader, reader_server, "/app/other", b"w0")
    for i in range(1, 11):
        await writer.write("/app/other", b"w%d" % i)
        assert (await reader.read("/app/other")).value == b"w%d" % i
    await writer.rotate("/app/other", b"rotated")
    assert (await reader.read("/app/other")).value == b"rotated"
    await writer.delete("/app/other")
    with pytest.raises(NotFoundError):
        await reader.read("/app/other")


async def test_replicas_on_postgresql_never_serve_stale_after_an_acknowledged_write(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    """Replica B is read from all along while replica A writes: after A acknowledges
    a write, B's next read gives it (a cache invalidated by NOTIFY would lag; on
    PostgreSQL every Read goes to the database)."""
    with trio.fail_after(90):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            assert second.server.cache is None
            owner = await world.identity("owner")
            async with (
                connect(world.address, owner) as one,
                connect(("127.0.0.1", second.port), owner) as two,
            ):
                await check_never_stale(one, two, None)


async def test_an_entry_is_served_only_inside_the_window_of_every_key_of_its_chain(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """A child under a key that expires: the verified entry ends when the key does,
    and the cache does not answer at or after that instant (nor before a start)."""
    now = datetime.now(UTC)
    key_end = now + timedelta(days=1)
    child_start = now - timedelta(hours=1)
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            server = server_of(world)
            await store.create("/app/k", not_after=key_end)
            await store.create("/app/k/c", b"child", protector="/app/k", not_before=child_start)
            verified = await server.db.transaction(
                lambda cur: server.tables.read_verified_in(cur, "/app/k/c", None, now),
                write=False,
            )
            assert verified.obj.value == b"child"
            assert verified.valid_until == key_end  # the key's end, not the child's (none)
            assert verified.valid_from == child_start
            cache = ObjectCache.open(server.db)
            assert cache is not None
            try:
                cache.put("/app/k/c", None, verified)
                assert cache.get("/app/k/c", None, now) is verified.obj
                assert cache.get("/app/k/c", None, key_end - timedelta(microseconds=1)) is not None
                assert cache.get("/app/k/c", None, key_end) is None
                assert cache.get("/app/k/c", None, key_end + timedelta(seconds=1)) is None
                assert cache.get("/app/k/c", None, child_start) is None
                # Any change to the tables (here: another name created) retires it.
                await store.create("/app/unrelated", b"x")
                assert cache.get("/app/k/c", None, now) is None
            finally:
                cache.close()


async def test_a_guard_decision_remembered_by_a_channel_ends_with_that_guard(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """A channel remembers the guard's yes for the names it reads; when the server's
    guard is replaced by one that says no, the next read on that same channel is
    refused (and audited), not answered from the remembered decision; a refusal is
    never remembered."""
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            server = server_of(world)
            await store.create("/app/g", b"g")
            for _ in range(3):
                assert (await store.read("/app/g")).value == b"g"
            allowed = server.guard
            server.guard = ConservativeGuard()
            for _ in range(2):
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/g")
            server.guard = allowed
            assert (await store.read("/app/g")).value == b"g"
            entries = await server.audit.entries()
            refused = [e for e in entries if e.kind == "secret_refused" and e.subject == "/app/g"]
            assert len(refused) == 2
