"""The audit chain in a real database (SQLite and PostgreSQL): appends, checkpoints, tampering."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet.audit import AuditError, AuditReason, sign_checkpoint
from taonet.crypto import Signer
from taonet_services.storage import AuditStore, Database
from tests.sqlite_helpers import sqlite_connection

ROOT = Path(__file__).resolve().parents[2]
KEY = Signer.generate()
OTHER = Signer.generate()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


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


async def fill(store: AuditStore, n: int) -> None:
    for i in range(n):
        await store.append(
            kind="secret_read",
            actor=f"key([{i:02x}])",
            subject=f"/s/{i}",
            outcome="ok",
            details={"epoch": str(i)},
        )


async def test_append_checkpoint_and_verify(db: Database) -> None:
    store = await AuditStore.open(db, signer=KEY, checkpoint_every=4, clock=Clock())
    with trio.fail_after(30):
        await fill(store, 10)
        summary = await store.verify([KEY.verifier()])
    assert (summary.entries, summary.head_seq, summary.checkpoints) == (10, 10, 2)
    assert summary.last_checkpoint_seq == 8
    # The shutdown checkpoint covers the tail; a second one has nothing new to sign.
    assert (await store.checkpoint()) is not None
    assert (await store.checkpoint()) is None
    summary = await store.verify([KEY.verifier()])
    assert (summary.checkpoints, summary.last_checkpoint_seq) == (3, 10)
    entries = await store.entries(since_seq=8)
    assert [e.seq for e in entries] == [9, 10]
    assert entries[0].details == {"epoch": "8"}


def _items(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "kind": "secret_read",
            "actor": f"key([{i:02x}])",
            "subject": f"/s/{i}",
            "outcome": "ok",
            "details": {"epoch": str(i)},
        }
        for i in range(start, start + n)
    ]


async def test_a_batch_appends_as_entries_one_by_one_would(db: Database) -> None:
    """append_many_in (the secret server's batched releases): the same chain, links and
    checkpoints (signed where one-by-one appends sign them, mid-batch included) as
    appends one at a time."""
    store = await AuditStore.open(db, signer=KEY, checkpoint_every=4, clock=Clock())
    with trio.fail_after(30):
        await fill(store, 2)
        batch = await db.transaction(lambda cur: store.append_many_in(cur, _items(9, 2)))
        store.committed(batch[-1])
        await fill(store, 1)  # after the batch: its head, read back
        summary = await store.verify([KEY.verifier()])
        entries = await store.entries()
    assert [e.seq for e in batch] == list(range(3, 12))
    assert all(e.recorded_hash == e.hash for e in batch)
    assert (summary.entries, summary.head_seq, summary.checkpoints) == (12, 12, 3)
    assert summary.last_checkpoint_seq == 12
    # Each entry names the last checkpoint before it: 4, 8 and 12 were signed.
    assert [e.checkpoint_seq for e in entries] == [0] * 4 + [4] * 4 + [8] * 4
    assert [e.subject for e in entries] == [f"/s/{i}" for i in (*range(11), 0)]
    assert [e.prev_hash for e in entries[1:]] == [e.recorded_hash for e in entries[:-1]]


async def test_a_batch_with_one_bad_entry_writes_nothing(db: Database) -> None:
    store = await AuditStore.open(db, signer=KEY, checkpoint_every=4, clock=Clock())
    await fill(store, 3)
    items = _items(3, 3)
    items[2]["kind"] = "not a word!"
    with pytest.raises(ValueError, match="kind must be"):
        await db.transaction(lambda cur: store.append_many_in(cur, items))
    summary = await store.verify([KEY.verifier()])
    assert (summary.entries, summary.head_seq, summary.checkpoints) == (3, 3, 0)
    await fill(store, 1)  # the chain goes on from where it was
    assert (await store.verify([KEY.verifier()])).head_seq == 4


async def test_checkpoint_after_an_interval(db: Database) -> None:
    clock = Clock()
    store = await AuditStore.open(
        db, signer=KEY, checkpoint_every=1000, checkpoint_interval=60, clock=clock
    )
    await fill(store, 3)
    assert (await store.verify()).checkpoints == 0
    clock.now += 61 * 10**9
    await fill(store, 1)
    summary = await store.verify()
    assert (summary.checkpoints, summary.last_checkpoint_seq) == (1, 4)


async def test_append_commits_or_rolls_back_with_the_business_write(db: Database) -> None:
    store = await AuditStore.open(db, signer=KEY, checkpoint_every=2)
    await db.transaction(lambda cur: cur.execute("CREATE TABLE things (name TEXT PRIMARY KEY)"))

    def write(name: str, fail: bool) -> Callable[[Any], None]:
        def fn(cur: Any) -> None:
            cur.execute(db.sql("INSERT INTO things (name) VALUES (?)"), (name,))
            store.append_in(cur, kind="thing_written", actor="me", subject=name, outcome="ok")
            if fail:
                raise RuntimeError("crash after the append, before commit")

        return fn

    await db.transaction(write("kept", False))
    with pytest.raises(RuntimeError):
        await db.transaction(write("lost", True))
    await db.transaction(write("kept2", False))

    def names(cur: Any) -> list[str]:
        cur.execute("SELECT name FROM things ORDER BY name")
        return [r[0] for r in cur.fetchall()]

    assert await db.transaction(names, write=False) == ["kept", "kept2"]
    entries = await store.entries()
    assert [e.subject for e in entries] == ["kept", "kept2"]
    assert (await store.verify([KEY.verifier()])).head_seq == 2


# Tampering with the stored rows, as someone with write access to the database would.


def tamper(db: Database, url: str, *statements: str) -> None:
    """Run SQL on the database behind the service's back (sqlite3 / psycopg)."""
    if db.dialect == "sqlite":
        with sqlite_connection(url.removeprefix("sqlite://")) as conn:
            for statement in statements:
                conn.execute(statement)
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())


async def verify_fails(store: AuditStore, reason: AuditReason, seq: int) -> AuditError:
    with trio.fail_after(30), pytest.raises(AuditError) as info:
        await store.verify([KEY.verifier()])
    assert info.value.reason is reason, info.value
    assert info.value.seq == seq, info.value
    return info.value


@pytest.fixture
async def filled(db: Database) -> AuditStore:
    store = await AuditStore.open(db, signer=KEY, checkpoint_every=5)
    await fill(store, 12)
    await store.verify([KEY.verifier()])
    return store


@pytest.mark.parametrize(
    "assignment",
    ['details = \'{"epoch":"99"}\'', "outcome = 'refused'", "time_ns = time_ns + 1"],
)
async def test_an_edited_row_is_caught(
    filled: AuditStore, db: Database, url: str, assignment: str
) -> None:
    tamper(db, url, f"UPDATE audit_entries SET {assignment} WHERE seq = 7")
    await verify_fails(filled, AuditReason.EDITED, 7)


async def test_a_deleted_row_is_caught(filled: AuditStore, db: Database, url: str) -> None:
    tamper(db, url, "DELETE FROM audit_entries WHERE seq = 6")
    await verify_fails(filled, AuditReason.REMOVED, 6)


async def test_a_cut_tail_covered_by_a_checkpoint_is_caught(
    filled: AuditStore, db: Database, url: str
) -> None:
    tamper(db, url, "DELETE FROM audit_entries WHERE seq >= 9")
    await verify_fails(filled, AuditReason.TRUNCATED, 9)


async def test_a_cut_tail_after_the_last_checkpoint_is_not_seen(
    filled: AuditStore, db: Database, url: str
) -> None:
    # The limit the chain has: entries 11 and 12 were never signed. The summary says
    # where the signatures stop; a shutdown checkpoint closes the gap.
    tamper(db, url, "DELETE FROM audit_entries WHERE seq >= 11")
    summary = await filled.verify([KEY.verifier()])
    assert (summary.head_seq, summary.last_checkpoint_seq) == (10, 10)


async def test_reordered_rows_are_caught(filled: AuditStore, db: Database, url: str) -> None:
    tamper(
        db,
        url,
        "UPDATE audit_entries SET seq = -3 WHERE seq = 3",
        "UPDATE audit_entries SET seq = 3 WHERE seq = 4",
        "UPDATE audit_entries SET seq = 4 WHERE seq = -3",
    )
    await verify_fails(filled, AuditReason.REORDERED, 3)


async def test_a_forged_checkpoint_is_caught(filled: AuditStore, db: Database, url: str) -> None:
    # Edit entry 11, recompute every hash after it, and sign a checkpoint with another key.
    entries = await filled.entries()
    forged = sign_checkpoint(OTHER, seq=12, head_hash=entries[-1].hash, time_ns=1)

    def blob(value: bytes) -> str:
        return f"X'{value.hex()}'" if db.dialect == "sqlite" else f"'\\x{value.hex()}'"

    tamper(
        db,
        url,
        "INSERT INTO audit_checkpoints (seq, head_hash, time_ns, signer, signer_key, signature)"
        f" VALUES (12, {blob(forged.head_hash)}, 1, '{forged.signer}', {blob(forged.signer_key)},"
        f" {blob(forged.signature)})",
    )
    await verify_fails(filled, AuditReason.UNTRUSTED_SIGNER, 12)


async def test_a_malformed_row_is_caught(filled: AuditStore, db: Database, url: str) -> None:
    tamper(db, url, "UPDATE audit_entries SET details = 'not json' WHERE seq = 2")
    await verify_fails(filled, AuditReason.MALFORMED, 2)


async def _line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"the appender exited; output so far {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_two_processes_appending_at_once_keep_one_chain(postgres_url: str) -> None:
    db = await Database.open(postgres_url)
    try:
        store = await AuditStore.open(db)
        argv = [sys.executable, "-m", "tests.audit.appender", postgres_url, "150"]
        procs = [
            await trio.lowlevel.open_process(
                [*argv, tag], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            for tag in ("a", "b")
        ]
        buffers = [bytearray(), bytearray()]
        try:
            with trio.fail_after(120):
                for proc, buffer in zip(procs, buffers, strict=True):
                    assert proc.stdout is not None
                    assert await _line(proc.stdout, buffer) == "ready"
                for proc in procs:  # both go at once
                    assert proc.stdin is not None
                    await proc.stdin.send_all(b"go\n")
                for proc, buffer in zip(procs, buffers, strict=True):
                    assert proc.stdout is not None
                    assert await _line(proc.stdout, buffer) == "done"
                    assert await proc.wait() == 0
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                with trio.move_on_after(10):
                    await proc.wait()
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        await pipe.aclose()
        summary = await store.verify()
        assert summary.entries == 300
        entries = await store.entries()
        actors = [e.actor for e in entries]
        assert actors.count("a") == actors.count("b") == 150
        # They did interleave: the chain is not all of one, then all of the other.
        switches = sum(1 for x, y in itertools.pairwise(actors) if x != y)
        assert switches > 1
    finally:
        await db.aclose()
