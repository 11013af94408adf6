"""services/taonet_services/_db.py: one Database over SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import TaoError
from taonet_services._db import Database, StorageError, StorageReason
from tests.mounts import remount_read_only, tmpfs
from tests.pg import PgServer, binaries_or_skip, database_name
from tests.sqlite_helpers import sqlite_connection

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id {id}, v TEXT NOT NULL UNIQUE, b {blob})"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'x.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    with trio.fail_after(30):
        database = await Database.open(url)
        await _create(database)
    try:
        yield database
    finally:
        await database.aclose()


async def _create(db: Database) -> None:
    schema = SCHEMA.format(id=db.id_column, blob=db.blob_type)
    await db.transaction(lambda cur: cur.execute(schema))


async def _fill(db: Database, row: bytes) -> tuple[list[str], StorageError]:
    """Insert rows until the database fails; the rows acknowledged and the error."""
    acknowledged: list[str] = []
    for i in range(10_000):
        try:
            await db.transaction(_insert(db, f"row{i}", row))
        except StorageError as exc:
            return acknowledged, exc
        acknowledged.append(f"row{i}")
    raise AssertionError("the file system never filled up")


def _insert(db: Database, v: str, b: bytes = b"") -> Any:
    def fn(cur: Any) -> int:
        cur.execute(db.sql("INSERT INTO t (v, b) VALUES (?, ?) RETURNING id"), (v, b))
        return int(cur.fetchone()[0])

    return fn


def _values(db: Database) -> Any:
    def fn(cur: Any) -> list[str]:
        cur.execute(db.sql("SELECT v FROM t ORDER BY id"))
        return [row[0] for row in cur.fetchall()]

    return fn


async def test_commit_rollback_and_bytes(db: Database) -> None:
    with trio.fail_after(30):
        first = await db.transaction(_insert(db, "a", b"\x00\xff"))
        assert first >= 1

        def fails(cur: Any) -> None:
            _insert(db, "b")(cur)
            raise KeyError("boom")

        with pytest.raises(KeyError):
            await db.transaction(fails)
        assert await db.transaction(_values(db), write=False) == ["a"]

        def blob(cur: Any) -> bytes:
            cur.execute(db.sql("SELECT b FROM t WHERE v = ?"), ("a",))
            return bytes(cur.fetchone()[0])

        assert await db.transaction(blob, write=False) == b"\x00\xff"
        # A literal percent sign survives the placeholder conversion.
        await db.transaction(_insert(db, "100%"))
        assert await db.transaction(_values(db), write=False) == ["a", "100%"]


async def test_constraint_is_conflict(db: Database) -> None:
    with trio.fail_after(30):
        await db.transaction(_insert(db, "dup"))
        with pytest.raises(StorageError) as info:
            await db.transaction(_insert(db, "dup"))
        assert info.value.reason is StorageReason.CONFLICT
        assert isinstance(info.value, TaoError)
        assert await db.transaction(_values(db), write=False) == ["dup"]


async def test_read_only_transaction_refuses_writes(db: Database) -> None:
    with trio.fail_after(30), pytest.raises(StorageError) as info:
        await db.transaction(_insert(db, "x"), write=False)
    assert info.value.reason is StorageReason.READ_ONLY
    assert await db.transaction(_values(db), write=False) == []


async def test_concurrent_read_modify_write_serializes(db: Database) -> None:
    """Forty tasks increment one counter; none of the increments is lost."""
    await db.transaction(
        lambda cur: cur.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER)")
    )
    await db.transaction(lambda cur: cur.execute("INSERT INTO c (id, n) VALUES (1, 0)"))
    lock = " FOR UPDATE" if db.dialect == "postgresql" else ""

    def bump(cur: Any) -> None:
        cur.execute(f"SELECT n FROM c WHERE id = 1{lock}")
        (n,) = cur.fetchone()
        cur.execute(db.sql("UPDATE c SET n = ? WHERE id = 1"), (n + 1,))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(db.transaction, bump)

    def count(cur: Any) -> int:
        cur.execute("SELECT n FROM c WHERE id = 1")
        return int(cur.fetchone()[0])

    assert await db.transaction(count, write=False) == 40


async def test_closed_database_refuses(db: Database) -> None:
    await db.aclose()
    with pytest.raises(StorageError) as info:
        await db.transaction(_values(db))
    assert info.value.reason is StorageReason.UNAVAILABLE


async def test_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="sqlite:///absolute"):
        await Database.open("sqlite://relative/x.db")
    with pytest.raises(StorageError, match="scheme"):
        await Database.open("mysql://x/y")
    with pytest.raises(StorageError) as info:
        await Database.open(tmp_path / "no" / "such" / "dir" / "x.db")
    assert info.value.reason is StorageReason.UNAVAILABLE


async def test_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite file at all" * 100)
    with trio.fail_after(10), pytest.raises(StorageError) as info:
        await Database.open(path)
    assert info.value.reason is StorageReason.CORRUPT


async def test_sqlite_settings(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 's.db'}")
    try:

        def pragmas(cur: Any) -> tuple[Any, ...]:
            return tuple(
                cur.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys")
            )

        assert await db.transaction(pragmas, write=False) == ("wal", 2, 1)
    finally:
        await db.aclose()


async def test_sqlite_disk_full_acknowledges_only_what_was_stored(tmp_path: Path) -> None:
    """Fill a 1 MB file system: the failing write is FULL and every acknowledged row is there."""
    with tmpfs(tmp_path / "small", size="1m") as small:
        db = await Database.open(small / "full.db")
        await _create(db)
        with trio.fail_after(60):
            acknowledged, error = await _fill(db, bytes(8192))
        assert error.reason is StorageReason.FULL, error
        assert "nothing was committed" in str(error)
        await db.aclose()
        with sqlite_connection(small / "full.db") as conn:
            stored = [v for (v,) in conn.execute("SELECT v FROM t ORDER BY id")]
        assert stored == acknowledged
        assert acknowledged  # the file system took some rows before it was full


async def test_sqlite_read_only_file_system(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", size="4m") as where:
        db = await Database.open(where / "ro.db")
        await _create(db)
        await db.transaction(_insert(db, "before"))
        await db.aclose()
        remount_read_only(where)
        with trio.fail_after(10), pytest.raises(StorageError) as info:
            await Database.open(where / "ro.db")
        assert info.value.reason is StorageReason.READ_ONLY, info.value


async def test_postgres_stopped_is_unavailable_and_nothing_is_acknowledged() -> None:
    binaries_or_skip()
    server = PgServer()
    try:
        await trio.to_thread.run_sync(server.start)
        url = server.url()
        db = await Database.open(url)
        await _create(db)
        await db.transaction(_insert(db, "kept"))
        await trio.to_thread.run_sync(server.stop)
        with trio.fail_after(30), pytest.raises(StorageError) as info:
            await db.transaction(_insert(db, "lost"))
        assert info.value.reason is StorageReason.UNAVAILABLE
        # The pool does not keep the dead connection; a restarted server serves again.
        await trio.to_thread.run_sync(server.start)
        with trio.fail_after(30):
            assert await db.transaction(_values(db), write=False) == ["kept"]
        await db.aclose()
        await trio.to_thread.run_sync(server.stop)
        with trio.fail_after(30), pytest.raises(StorageError) as info:
            await Database.open(url)
        assert info.value.reason is StorageReason.UNAVAILABLE
    finally:
        await trio.to_thread.run_sync(server.remove)


async def test_postgres_read_only_database(postgres_server: PgServer, postgres_url: str) -> None:
    name = database_name(postgres_url)
    postgres_server.admin(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    db = await Database.open(postgres_url)
    try:
        with trio.fail_after(30), pytest.raises(StorageError) as info:
            await db.transaction(lambda cur: cur.execute("CREATE TABLE x (a INTEGER)"))
        assert info.value.reason is StorageReason.READ_ONLY
    finally:
        await db.aclose()


async def test_postgres_disk_full(postgres_server: PgServer, postgres_url: str) -> None:
    """A table in a tablespace on a 1 MB file system: the write that does not fit is FULL."""
    import pwd

    entry = pwd.getpwnam("postgres")
    tablespace = f"small_{database_name(postgres_url)}"
    where = postgres_server.private_dir(tablespace)
    with tmpfs(where, size="1m", owner=(entry.pw_uid, entry.pw_gid)) as space:
        postgres_server.admin(f"CREATE TABLESPACE {tablespace} LOCATION '{space}'")
        db = await Database.open(postgres_url)
        try:
            await db.transaction(
                lambda cur: cur.execute(
                    f"CREATE TABLE t (id SERIAL PRIMARY KEY, v TEXT UNIQUE, b BYTEA)"
                    f" TABLESPACE {tablespace}"
                )
            )
            await db.transaction(lambda cur: cur.execute("ALTER TABLE t ALTER b SET STORAGE PLAIN"))
            with trio.fail_after(60):
                acknowledged, error = await _fill(db, bytes(range(256)) * 7)
            assert error.reason is StorageReason.FULL, error
            assert await db.transaction(_values(db), write=False) == acknowledged
            await db.transaction(lambda cur: cur.execute("DROP TABLE t"))
        finally:
            await db.aclose()
            postgres_server.admin(f"DROP TABLESPACE IF EXISTS {tablespace}")
