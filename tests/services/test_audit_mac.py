"""Entry MACs of a keyed AuditStore (SQLite and PostgreSQL): an entry appended by
anyone without the key is refused before the store appends after it or signs over
it, replicas sharing the key go on, and a chain from before the key is upgraded."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from taonet.crypto import Signer
from taonet_services.storage import AuditStore, Database, StorageError, StorageReason

KEY = os.urandom(32)
SIGNER = Signer.generate()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    with trio.fail_after(30):
        database = await Database.open(url)
    try:
        yield database
    finally:
        await database.aclose()


async def append(store: AuditStore, i: int = 0) -> None:
    await store.append(kind="secret_released", actor="a", subject=f"/s/{i}", outcome="ok")


async def sql(db: Database, statement: str, params: tuple[Any, ...] = ()) -> None:
    await db.transaction(lambda cur: cur.execute(db.sql(statement), params))


def refused(exc: pytest.ExceptionInfo[StorageError]) -> bool:
    return exc.value.reason is StorageReason.CORRUPT


async def test_an_entry_appended_without_the_key_is_refused(db: Database) -> None:
    with trio.fail_after(30):
        running = await AuditStore.open(db, signer=SIGNER, mac_key=KEY)
        for i in range(3):
            await append(running, i)
        # The attacker: a well-formed entry linked to the head (a store without the key
        # writes exactly what someone with SQL access can).
        await append(await AuditStore.open(db), 99)
        restarted = await AuditStore.open(db, signer=SIGNER, mac_key=KEY)
        with structlog.testing.capture_logs() as logs:
            for store in (running, restarted):
                with pytest.raises(StorageError, match="entry 4 carries no MAC") as exc:
                    await append(store)
                assert refused(exc)
                with pytest.raises(StorageError, match="entry 4") as exc:
                    await store.checkpoint()
                assert refused(exc)
        assert [e["event"] for e in logs] == ["audit_chain_forged"] * 4
        assert [e.seq for e in await running.entries()] == [1, 2, 3, 4]
        assert all(cp.seq < 4 for cp in await db.transaction(running.checkpoints_in))


async def test_a_store_under_another_key_is_refused(db: Database) -> None:
    with trio.fail_after(30):
        await append(await AuditStore.open(db, mac_key=KEY))
        # Another server's master key (a database copied under another server): its
        # MACs are not ours, nor is the start record.
        with pytest.raises(StorageError, match="start record does not verify") as exc:
            await AuditStore.open(db, mac_key=os.urandom(32))
        assert refused(exc)


async def test_replicas_sharing_the_key_append_and_sign_after_each_other(db: Database) -> None:
    with trio.fail_after(60):
        one = await AuditStore.open(db, signer=SIGNER, mac_key=KEY, checkpoint_every=3)
        two = await AuditStore.open(db, signer=SIGNER, mac_key=KEY, checkpoint_every=3)
        for i in range(10):
            await append(one, i)
            for j in range(i % 3):  # the other writes a few, checked by the one next time
                await append(two, 100 * i + j)
            if i % 4 == 0:
                await two.checkpoint()
        await one.checkpoint()
        summary = await one.verify([SIGNER.verifier()])
        assert summary.head_seq == summary.last_checkpoint_seq == 10 + sum(i % 3 for i in range(10))


async def test_a_chain_from_before_the_key_is_taken_up_to_its_head_then(db: Database) -> None:
    with trio.fail_after(30):
        old = await AuditStore.open(db)  # a store without a key (version 1 had none)
        for i in range(3):
            await append(old, i)
        head = (await old.entries())[-1]
        assert head.seq == 3
        # The tables as version 1 wrote them (no mac column).
        await sql(db, "ALTER TABLE audit_entries DROP COLUMN mac")
        await sql(db, "UPDATE taonet_schema SET version = 1 WHERE component = 'audit'")
        await sql(db, "DROP TABLE audit_mac_start")
        keyed = await AuditStore.open(db, mac_key=KEY)  # the upgrade: start at entry 3
        start = await db.transaction(
            lambda cur: (
                cur.execute("SELECT seq, entry_hash FROM audit_mac_start"),
                cur.fetchone(),
            )[1]
        )
        assert (int(start[0]), bytes(start[1])) == (3, head.hash)
        await append(keyed, 3)
        await append(await AuditStore.open(db, mac_key=KEY), 4)  # a restart: head has a MAC
        await sql(db, "DELETE FROM audit_entries WHERE seq > 3")
        # Back at the start record's head (entries without MAC up to it): accepted.
        await append(await AuditStore.open(db, mac_key=KEY), 5)
        await sql(db, "DELETE FROM audit_entries WHERE seq > 2")
        with pytest.raises(StorageError, match="no longer holds entry 3") as exc:
            await append(await AuditStore.open(db, mac_key=KEY))  # cut below the start
        assert refused(exc)
        assert (await old.entries())[-1].seq == 2


async def test_the_start_record_cannot_be_moved_or_removed(db: Database) -> None:
    with trio.fail_after(30):
        store = await AuditStore.open(db, mac_key=KEY)
        await append(store)
        # Moved past entries without a MAC (to cover a forged one): its MAC fails.
        await sql(db, "UPDATE audit_mac_start SET seq = 2")
        with pytest.raises(StorageError, match="start record does not verify") as exc:
            await AuditStore.open(db, mac_key=KEY)
        assert refused(exc)
        # Removed (so that the next open would record the head again): refused too.
        await sql(db, "DELETE FROM audit_mac_start")
        with pytest.raises(StorageError, match="its MAC start record was removed") as exc:
            await AuditStore.open(db, mac_key=KEY)
        assert refused(exc)


async def test_a_store_without_a_key_writes_and_checks_no_mac(db: Database) -> None:
    with trio.fail_after(30):
        store = await AuditStore.open(db)  # the domain service's
        await append(store)
        await append(await AuditStore.open(db))
        await append(store)
        rows = await db.transaction(
            lambda cur: (cur.execute("SELECT mac FROM audit_entries"), cur.fetchall())[1]
        )
        assert [row[0] for row in rows] == [None] * 3


async def test_another_replicas_entry_edited_before_it_is_checked_is_refused(
    db: Database,
) -> None:
    with trio.fail_after(30):
        one = await AuditStore.open(db, mac_key=KEY)
        two = await AuditStore.open(db, mac_key=KEY)
        await append(one)
        await append(two, 1)  # a replica's entry, with its MAC
        await sql(db, "UPDATE audit_entries SET subject = '/s/edited' WHERE seq = 2")
        with pytest.raises(StorageError, match="entry 2 does not hash to its stored hash"):
            await append(one)
        await sql(db, "UPDATE audit_entries SET details = 'not json' WHERE seq = 2")
        with pytest.raises(StorageError, match="entry 2 is malformed"):
            await append(one)
