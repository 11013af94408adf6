"""The epochs of a name only grow: a deleted (name, epoch) is never made again.

A disclosure directive names exactly (name, epoch), and so do the audit chain and
an operator thinking of ``/app/k#1``. Before, deleting every epoch of a name dropped
its manifest and a later Create started it at epoch 1 again: a directive still valid
for the old ``/app/k#1`` opened the new, different object. Each test repeats that as
the parties would (an owner who deletes and re-creates, a reader holding an old
directive, an attacker with ``sqlite3`` on the database file) on a real server.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet.disclosure import DirectiveOp, sign_directive
from taonet.protected import KEY_TYPE, ObjectId
from taonet.secrets import (
    ConflictError,
    CorruptError,
    NotFoundError,
    UnauthorizedError,
    connect,
)
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.world import secret_world
from tests.services.test_audit_against_rows import server_key, signed, verify

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
HOUR = 3600 * 10**9
FLOOR = "SELECT last_epoch, mac FROM secret_epoch_floor WHERE name = ?"


@contextlib.contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def floor_row(path: Path, name: str) -> tuple[Any, ...] | None:
    with sql(path) as conn:
        found = conn.execute(FLOOR, (name,)).fetchone()
    return None if found is None else tuple(found)


def put_floor(path: Path, name: str, last_epoch: Any, mac: Any) -> None:
    with sql(path) as conn:
        conn.execute(
            "INSERT INTO secret_epoch_floor (name, last_epoch, mac) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_epoch = excluded.last_epoch,"
            " mac = excluded.mac",
            (name, last_epoch, mac),
        )


async def test_a_name_created_again_after_its_delete_gets_a_new_epoch(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            policy = world.domain.unlock(PASSWORD)
            owner, reader = await world.identity("owner"), await world.identity("reader")
            assert reader.principal is not None
            async with connect(world.address, owner) as store:
                first = await store.create("/app/k", b"the old value")
            assert first == ObjectId("/app/k", 1)
            # The reader is given /app/k#1 for an hour (it has no right by the guard).
            granted = sign_directive(
                policy,
                op=DirectiveOp.READ,
                delegate=reader.principal,
                object_id=first,
                not_before=None,
                not_after=time.time_ns() + HOUR,
            )
            async with connect(world.address, reader) as store:
                assert (await store.read("/app/k", 1, directive=granted)).value == b"the old value"
            # The owner deletes the name and makes a new object under it.
            async with connect(world.address, owner) as store:
                assert await store.delete("/app/k") == (1,)
                second = await store.create("/app/k", b"the new value")
                assert second == ObjectId("/app/k", 2)
                assert (await store.read("/app/k")).id == second
                # Deleting one epoch by number counts too.
                assert await store.delete("/app/k", 2) == (2,)
                third = await store.create("/app/k", b"the third value")
                assert third == ObjectId("/app/k", 3)
                # A name never deleted still starts at 1.
                assert await store.create("/app/fresh") == ObjectId("/app/fresh", 1)
            # The old directive, still within its window, opens nothing new.
            async with connect(world.address, reader) as store:
                with pytest.raises(NotFoundError):
                    await store.read("/app/k", 1, directive=granted)
                for epoch in (2, 3):
                    with pytest.raises(UnauthorizedError):
                        await store.read("/app/k", epoch, directive=granted)
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/k")
            # Another server started on the same database keeps counting.
            again = await world.start_server("again")
            async with connect(("127.0.0.1", again.port), owner) as store:
                await store.delete("/app/k")
                assert await store.create("/app/k", b"4") == ObjectId("/app/k", 4)


async def test_a_deleted_latest_epoch_is_never_made_again(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            for kind, name in (("bytes", "/app/r"), (KEY_TYPE, "/app/key")):
                if kind == "bytes":
                    await store.create(name, b"v1")
                    assert (await store.rotate(name, b"v2")).epoch == 2
                    assert (await store.rotate(name, b"v3")).epoch == 3
                else:
                    await store.create(name, type=KEY_TYPE)
                    assert (await store.rotate(name)).epoch == 2
                    assert (await store.rotate(name)).epoch == 3
                # Epoch 3 (the latest, the only active one) deleted: 1 and 2 are retired,
                # so nothing can be rotated, and #3 is gone.
                assert await store.delete(name, 3) == (3,)
                with pytest.raises(NotFoundError):
                    await store.rotate(name, b"v4" if kind == "bytes" else None)
                with pytest.raises(NotFoundError):
                    await store.read(name, 3)
                assert (await store.read(name, 2)).id == ObjectId(name, 2)
                # The rest deleted, then the name made again: after 3, not at 1.
                assert await store.delete(name) == (1, 2)
                again = await store.create(name, b"v5" if kind == "bytes" else None, type=kind)
                assert again == ObjectId(name, 4)
                with pytest.raises(NotFoundError):
                    await store.read(name, 3)
                # And a rotation of the new object goes on from there.
                assert (await store.rotate(name, b"v6" if kind == "bytes" else None)).epoch == 5


async def test_a_floor_row_edited_by_hand_is_corrupt(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """The attacker has the database file, not the master key: it lowers a name's floor
    (to make the old numbers come back), moves another name's floor onto it, or
    forges one; each is refused as corrupt, and nothing is created."""
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            db = world.domain.path / "secrets.db"
            await store.create("/app/gone", b"x")
            await store.rotate("/app/gone", b"y")
            await store.delete("/app/gone")
            await store.create("/app/other", b"z")
            await store.delete("/app/other")
            genuine = floor_row(db, "/app/gone")
            other = floor_row(db, "/app/other")
            assert genuine is not None
            assert other is not None
            assert genuine[0] == 2
            assert other[0] == 1
            forged: list[tuple[Any, Any]] = [
                (1, genuine[1]),  # lowered, its MAC kept
                (0, genuine[1]),  # lowered below any epoch
                other,  # another name's genuine floor moved here
                (2, b"\0" * 32),  # a forged MAC
                ("two", genuine[1]),  # not a number
            ]
            for last_epoch, mac in forged:
                put_floor(db, "/app/gone", last_epoch, mac)
                with pytest.raises(CorruptError, match="epoch floor"):
                    await store.create("/app/gone", b"new")
                with pytest.raises(NotFoundError):
                    await store.read("/app/gone", 1)
            # Put back, the genuine row works: the name goes on after 2.
            put_floor(db, "/app/gone", *genuine)
            assert await store.create("/app/gone", b"new") == ObjectId("/app/gone", 3)

            # A name that still has epochs: a bad floor refuses its Delete and Rotate,
            # while its reads (which do not need the floor) still work.
            await store.create("/app/live", b"1")
            await store.rotate("/app/live", b"2")
            await store.delete("/app/live", 1)
            live = floor_row(db, "/app/live")
            assert live is not None
            put_floor(db, "/app/live", 1, live[1])
            with pytest.raises(CorruptError, match="epoch floor"):
                await store.delete("/app/live", 2)
            with pytest.raises(CorruptError, match="epoch floor"):
                await store.rotate("/app/live", b"3")
            assert (await store.read("/app/live")).value == b"2"
            put_floor(db, "/app/live", *live)
            assert (await store.rotate("/app/live", b"3")).epoch == 3


async def test_replicas_on_one_postgresql_share_the_floor(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    with trio.fail_after(60):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            owner = await world.identity("owner")
            async with (
                connect(world.address, owner) as one,
                connect(("127.0.0.1", second.port), owner) as two,
            ):
                assert await one.create("/app/k", b"1") == ObjectId("/app/k", 1)
                await two.delete("/app/k")
                assert await one.create("/app/k", b"2") == ObjectId("/app/k", 2)
                await one.delete("/app/k")
                assert await two.create("/app/k", b"3") == ObjectId("/app/k", 3)
                # Both at once after a delete: one creates #4, the other conflicts.
                await two.delete("/app/k")
                made: list[object] = []

                async def create(store: Any) -> None:
                    with contextlib.suppress(ConflictError):
                        made.append(await store.create("/app/k", b"race"))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(create, one)
                    nursery.start_soon(create, two)
                assert made == [ObjectId("/app/k", 4)]


async def test_audit_against_rows_passes_after_create_delete_create(
    tmp_path: Path,
    make_domain: MakeDomain,
    make_host: MakeHost,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            await store.create("/app/key", type=KEY_TYPE)
            await store.create("/app/k", b"1", protector="/app/key")
            await store.read("/app/k")
            await store.delete("/app/k")
            await store.create("/app/k", b"2", protector="/app/key")
            await store.read("/app/k")
            await store.rotate("/app/k", b"3")
            await store.read("/app/k")
            await store.rotate("/app/key")
            await store.read("/app/k", 2)
            await store.create("/app/r", b"1")
            await store.rotate("/app/r", b"2")
            await store.delete("/app/r")
            await store.create("/app/r", b"3")
            assert (await store.read("/app/r")).id == ObjectId("/app/r", 3)
            db = world.domain.path / "secrets.db"
            key = server_key(world, tmp_path)
            await signed(world)
            trust = ("--db", str(db), "--key", str(key), "--against-rows")
            status, out, err = await verify(capsys, *trust)
            assert (status, err) == (0, ""), out
            assert "no mismatches" in out
            status, out, err = await verify(capsys, *trust, "-o", "json")
    assert (status, err) == (0, ""), out
    rows = json.loads(out)["rows"]
    assert rows["match"] is True
    assert rows["releases_checked"] >= 5


def test_a_rotation_goes_on_after_the_floor(tmp_path: Path) -> None:
    """Only the latest epoch is ever active, so a floor above it (its latest epoch
    deleted) leaves nothing that the service can rotate (the test above); the store
    still never makes a number at or below the floor: a value's rotation goes on after
    it, a key's (whose new epoch is its old one + 1) is refused."""
    from taonet_services.secret_server import SecretTables, new_master_key
    from taonet_services.secret_server._store import utc_now
    from taonet_services.storage import Database

    db = Database.open_sync(f"sqlite:///{tmp_path / 'secrets.db'}")
    try:
        db.transaction_sync(lambda cur: SecretTables.create_tables_in(db, cur))
        tables, now = SecretTables(db, new_master_key()), utc_now()

        def run(cur: Any) -> None:
            tables.create_in(cur, "/v", b"1", "bytes", None, None, None, now)
            tables.create_in(cur, "/k", None, KEY_TYPE, None, None, None, now)
            for name in ("/v", "/k"):
                tables._raise_floor_in(cur, name, 5)
                assert tables._floor_in(cur, name) == 5
                tables._raise_floor_in(cur, name, 2)  # never lowered
                assert tables._floor_in(cur, name) == 5
            assert tables.rotate_in(cur, "/v", b"2", now)[0] == ObjectId("/v", 6)
            with pytest.raises(ConflictError, match="had epochs up to 5"):
                tables.rotate_in(cur, "/k", None, now)

        db.transaction_sync(run)
    finally:
        db.close_sync()
