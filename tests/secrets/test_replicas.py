"""Two secret server replicas on one PostgreSQL database serve the same objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from taonet.secrets import ConflictError, connect
from taonet_services.storage import AuditStore, Database
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]


async def test_two_replicas_on_one_postgresql(
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
                await one.create("/app/k")
                for i in range(10):
                    await one.create(f"/app/x/{i}", b"%d" % i, protector="/app/k")
                # Written on one, read on the other, both ways.
                assert (await two.read("/app/x/3")).value == b"3"
                await two.write("/app/x/3", b"three")
                assert (await one.read("/app/x/3")).value == b"three"
                # A rotation on one: the other reads every child under the new epoch.
                assert (await two.rotate("/app/k")).epoch == 2
                for i in range(10):
                    expected = b"three" if i == 3 else b"%d" % i
                    assert (await one.read(f"/app/x/{i}")).value == expected
                assert (await one.read("/app/k")).id.epoch == 2
                # The same name created on both at once: one wins, the other conflicts.
                outcomes: list[str] = []

                async def create(store: object, tag: bytes) -> None:
                    try:
                        await store.create("/app/race", tag)  # type: ignore[attr-defined]
                        outcomes.append("created")
                    except ConflictError:
                        outcomes.append("conflict")

                for _ in range(5):
                    outcomes.clear()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(create, one, b"one")
                        nursery.start_soon(create, two, b"two")
                    assert sorted(outcomes) == ["conflict", "created"]
                    await one.delete("/app/race")
                # Writes from both at once to the same object and the audit chain.
                async with trio.open_nursery() as nursery:
                    for i in range(20):
                        store = one if i % 2 else two
                        nursery.start_soon(store.write, "/app/x/5", b"w%d" % i)
                assert (await two.read("/app/x/5")).value.startswith(b"w")
    with trio.fail_after(30):
        db = await Database.open(postgres_url)
        try:
            audit = await AuditStore.open(db)
            await audit.verify()
            kinds = [e.kind for e in await audit.entries()]
        finally:
            await db.aclose()
    assert kinds.count("secret_written") == 21
    assert kinds.count("secret_rotated") == 1


async def test_a_replica_of_another_principal_without_the_key_refuses_to_start(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    """A server whose principal holds no sealed copy, while another does, must not make
    a second master key (the objects would be lost to it): it says how to get one."""
    from taonet import ConfigError

    with trio.fail_after(60):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            db = await Database.open(postgres_url)
            try:
                await db.transaction(
                    lambda cur: cur.execute("UPDATE secret_master SET principal = 'someone else'")
                )
            finally:
                await db.aclose()
            with pytest.RaisesGroup(
                pytest.RaisesExc(ConfigError, match="transfer it from a running replica"),
                flatten_subgroups=True,
            ):
                await world.start_server("replica", db_url=postgres_url)
