"""The audit chain when storage fails: full, read-only, a stopped PostgreSQL.

Each failure is a StorageError with its reason; every append that returned is in
the chain, none that raised is, and the chain still verifies.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from taonet.crypto import Signer
from taonet_services.storage import AuditStore, Database, StorageError, StorageReason
from tests.mounts import remount_read_only, tmpfs
from tests.pg import PgServer, binaries_or_skip

KEY = Signer.generate()


async def append_until_failure(
    store: AuditStore, limit: int = 100_000
) -> tuple[list[int], StorageError]:
    acknowledged: list[int] = []
    for i in range(limit):
        try:
            entry = await store.append(
                kind="secret_write",
                actor="key([01])",
                subject=f"/s/{i}",
                outcome="ok",
                details={"pad": "x" * 3000},
            )
        except StorageError as exc:
            return acknowledged, exc
        acknowledged.append(entry.seq)
    raise AssertionError("storage never failed")


async def test_a_full_disk_acknowledges_only_stored_entries(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", size="1m") as small:
        db = await Database.open(small / "audit.db")
        try:
            store = await AuditStore.open(db, signer=KEY, checkpoint_every=10)
            with trio.fail_after(120):
                acknowledged, error = await append_until_failure(store)
            assert error.reason is StorageReason.FULL, error
            entries = await store.entries()
            assert [e.seq for e in entries] == acknowledged
            summary = await store.verify([KEY.verifier()])
            assert summary.head_seq == len(acknowledged) > 0
        finally:
            await db.aclose()


async def test_a_read_only_file_system_is_read_only(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", size="4m") as where:
        db = await Database.open(where / "audit.db")
        store = await AuditStore.open(db, signer=KEY)
        await store.append(kind="secret_write", actor="a", subject="/s", outcome="ok")
        await db.aclose()
        remount_read_only(where)
        with trio.fail_after(30), pytest.raises(StorageError) as info:
            await Database.open(where / "audit.db")
        assert info.value.reason is StorageReason.READ_ONLY
        # What was there is still there, and intact.
        conn = sqlite3.connect(f"file:{where / 'audit.db'}?mode=ro&immutable=1", uri=True)
        try:
            assert conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0] == 1
        finally:
            conn.close()


async def test_a_stopped_postgres_is_unavailable_and_loses_nothing_acknowledged() -> None:
    binaries_or_skip()
    server = PgServer()
    try:
        await trio.to_thread.run_sync(server.start)
        db = await Database.open(server.url())
        store = await AuditStore.open(db, signer=KEY, checkpoint_every=3)
        acknowledged = []
        for i in range(5):
            entry = await store.append(
                kind="secret_write", actor="a", subject=f"/{i}", outcome="ok"
            )
            acknowledged.append(entry.seq)
        await trio.to_thread.run_sync(server.stop)
        with trio.fail_after(60), pytest.raises(StorageError) as info:
            await store.append(kind="secret_write", actor="a", subject="/lost", outcome="ok")
        assert info.value.reason is StorageReason.UNAVAILABLE
        await trio.to_thread.run_sync(server.start)
        with trio.fail_after(60):
            entries = await store.entries()
            assert [e.seq for e in entries] == acknowledged
            assert "/lost" not in [e.subject for e in entries]
            assert (await store.verify([KEY.verifier()])).head_seq == 5
        await db.aclose()
    finally:
        await trio.to_thread.run_sync(server.remove)
