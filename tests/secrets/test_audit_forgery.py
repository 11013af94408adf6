"""Attacks with write access to the secret server's database, repeated (review A4).

F1: entry hashes use no key, so anyone who can write the database appends an entry
that links to the head (here: a forged ``secret_written`` naming an old version's
tag, with that version's rows put back). The server used to append after it and
sign a checkpoint over it; now every entry carries a MAC under a key of the master
key's, and the server refuses to record (so to release) anything over an entry it
cannot verify, running or freshly started.

F2: after a rotation of ``/app/k``, an old copy of ``/app/k/c`` (with its manifest),
still wrapped under the retired ``/app/k#1``, was served: the retired epoch still
unwraps it. Now a row wrapped under anything but its protector's active epoch is
refused (``corrupt``), and a release names its protector.

F3: a release's ``read_after`` came from the server's memory (0 on a fresh server,
stale on an idle replica), which excused a served rollback as "a read that raced
the change". Now it is the audit head read in the read's own snapshot.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from taonet.audit import AuditEntry, encode_details
from taonet.secrets import CorruptError, connect
from taonet_services.storage import AuditStore, Database, StorageError
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
OBJECT = "SELECT protector_name, protector_epoch, tag, blob, mac FROM secret_objects"
NAMES = "SELECT manifest, mac FROM secret_names"

Copy = tuple[tuple[Any, ...], tuple[Any, ...]]


@contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def copy_of(path: Path, name: str, epoch: int = 1) -> Copy:
    """What an attacker keeps of a name: one row and the name's manifest."""
    with sql(path) as conn:
        row = conn.execute(f"{OBJECT} WHERE name = ? AND epoch = ?", (name, epoch)).fetchone()
        names = conn.execute(f"{NAMES} WHERE name = ?", (name,)).fetchone()
    return tuple(row), tuple(names)


def put_back(path: Path, name: str, copy: Copy, epoch: int = 1) -> None:
    row, names = copy
    with sql(path) as conn:
        conn.execute("BEGIN")
        conn.execute(
            "UPDATE secret_objects SET protector_name = ?, protector_epoch = ?, tag = ?,"
            " blob = ?, mac = ? WHERE name = ? AND epoch = ?",
            (*row, name, epoch),
        )
        conn.execute("UPDATE secret_names SET manifest = ?, mac = ? WHERE name = ?", (*names, name))
        conn.execute("COMMIT")


def forge_entry(path: Path, *, mac: str, details: dict[str, str]) -> int:
    """Append a well-formed entry at the chain's head with sqlite3, as an attacker can
    (its hash links to the head). ``mac``: none, a guessed one, or the head's own."""
    with sql(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(audit_entries)")}
        has_mac = "mac" in columns  # (so the attack runs against a server without MACs too)
        seq, head, cps, time_ns, head_mac = conn.execute(
            "SELECT seq, entry_hash, checkpoint_seq, time_ns,"
            f" {'mac' if has_mac else 'NULL'} FROM audit_entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        cp = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0] or 0
        entry = AuditEntry(
            seq=seq + 1,
            time_ns=time_ns + 1,
            kind="secret_written",
            actor="owner",
            subject="/app/payroll#1",
            outcome="ok",
            details=details,
            prev_hash=bytes(head),
            checkpoint_seq=max(cps, cp),
        )
        forged_mac = {"none": None, "guessed": os.urandom(32), "replayed": head_mac}[mac]
        conn.execute(
            "INSERT INTO audit_entries (seq, time_ns, kind, actor, subject, outcome, details,"
            " prev_hash, entry_hash, checkpoint_seq"
            + (
                ", mac) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                if has_mac
                else ") VALUES (?,?,?,?,?,?,?,?,?,?)"
            ),
            (
                entry.seq,
                entry.time_ns,
                entry.kind,
                entry.actor,
                entry.subject,
                entry.outcome,
                encode_details(entry.details),
                entry.prev_hash,
                entry.hash,
                entry.checkpoint_seq,
                *([forged_mac] if has_mac else []),
            ),
        )
        conn.execute("COMMIT")
        return entry.seq


def scalar(path: Path, query: str) -> int:
    with sql(path) as conn:
        return int(conn.execute(query).fetchone()[0] or 0)


def releases(path: Path, subject: str) -> list[tuple[int, dict[str, str]]]:
    with sql(path) as conn:
        rows = conn.execute(
            "SELECT seq, details FROM audit_entries WHERE kind = 'secret_released'"
            " AND subject = ? ORDER BY seq",
            (subject,),
        ).fetchall()
    return [(int(seq), json.loads(details)) for seq, details in rows]


def written_seq(path: Path, subject: str) -> int:
    return scalar(
        path,
        "SELECT max(seq) FROM audit_entries WHERE kind = 'secret_written'"
        f" AND subject = '{subject}'",
    )


# -- F1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("mac", ["none", "guessed", "replayed"])
async def test_a_forged_tail_entry_is_refused_by_the_running_server(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, mac: str
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            assert world.running is not None
            db = world.domain.path / "secrets.db"
            await store.create("/app/payroll", b"v1")
            v1 = copy_of(db, "/app/payroll")
            await store.write("/app/payroll", b"v2")
            current = copy_of(db, "/app/payroll")
            assert (await store.read("/app/payroll")).value == b"v2"
            # The attack: a write entry naming v1's tag, then v1's rows put back.
            with structlog.testing.capture_logs() as logs:
                forged = forge_entry(db, mac=mac, details={"peer": "x", "tag": v1[0][2].hex()})
                put_back(db, "/app/payroll", v1)
                # The old server released v1 here (and its entry went after the forged one).
                with pytest.raises(CorruptError, match=f"audit entry {forged}"):
                    await store.read("/app/payroll")
                with pytest.raises(CorruptError):
                    await store.create("/app/other", b"o")
                with pytest.raises(StorageError, match="not written by a server"):
                    await world.running.server.audit.checkpoint()
            assert any(
                e["event"] == "audit_chain_forged" and e["log_level"] == "error" for e in logs
            )
            # Nothing after the forged entry, and no checkpoint signs it.
            assert scalar(db, "SELECT max(seq) FROM audit_entries") == forged
            assert scalar(db, "SELECT max(seq) FROM audit_checkpoints") < forged
            # The operator removes the forged entry and puts the rows back: served again.
            put_back(db, "/app/payroll", current)
            with sql(db) as conn:
                conn.execute("DELETE FROM audit_entries WHERE seq = ?", (forged,))
            assert (await store.read("/app/payroll")).value == b"v2"
        # Shut down: the last checkpoint signed the chain, which holds no forged entry.
        assert scalar(db, "SELECT max(seq) FROM audit_checkpoints") == scalar(
            db, "SELECT max(seq) FROM audit_entries"
        )


async def test_a_forged_tail_entry_is_refused_by_a_server_started_after_it(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db = world.domain.path / "secrets.db"
            owner = await world.identity("owner")
            async with connect(world.address, owner) as store:
                await store.create("/app/payroll", b"v1")
                await store.write("/app/payroll", b"v2")
            forged = forge_entry(db, mac="none", details={"peer": "x", "tag": "00" * 16})
            # A fresh server knows no entry yet: its first look checks the head.
            second = await world.start_server("restarted", db_url=f"sqlite:///{db}")
            async with connect(("127.0.0.1", second.port), owner) as store:
                with pytest.raises(CorruptError, match=f"audit entry {forged} carries no MAC"):
                    await store.read("/app/payroll")
            assert scalar(db, "SELECT max(seq) FROM audit_entries") == forged


async def test_replicas_on_postgresql_check_each_other_and_refuse_a_forged_entry(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    with trio.fail_after(60):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            owner = await world.identity("owner")
            db = await Database.open(postgres_url)
            try:
                async with (
                    connect(world.address, owner) as one,
                    connect(("127.0.0.1", second.port), owner) as two,
                ):
                    await one.create("/app/payroll", b"v1")
                    for i in range(5):  # each appends after the other's entries
                        await two.write("/app/payroll", b"v%d" % i)
                        assert (await one.read("/app/payroll")).value == b"v%d" % i
                        assert (await two.read("/app/payroll")).value == b"v%d" % i
                    # The attacker appends a linked entry (a store without the key
                    # writes what SQL access can): both replicas refuse to go on.
                    forger = await AuditStore.open(db)
                    forged = await forger.append(
                        kind="secret_written", actor="owner", subject="/app/payroll#1", outcome="ok"
                    )
                    for store in (one, two):
                        with pytest.raises(
                            CorruptError, match=f"entry {forged.seq} carries no MAC"
                        ):
                            await store.read("/app/payroll")
                    assert (await forger.entries())[-1].seq == forged.seq
            finally:
                await db.aclose()


# -- F2 -----------------------------------------------------------------------------


async def test_a_child_put_back_from_before_its_protectors_rotation_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            db = world.domain.path / "secrets.db"
            await store.create("/app/k")
            await store.create("/app/k/c", b"old-password", protector="/app/k")
            old = copy_of(db, "/app/k/c")  # the attacker keeps the old version
            await store.write("/app/k/c", b"new-password")
            await store.rotate("/app/k")  # rewraps c under /app/k#2
            current = copy_of(db, "/app/k/c")
            assert current[0][:2] == ("/app/k", 2)
            put_back(db, "/app/k/c", old)  # c and its manifest as they were, under /app/k#1
            with structlog.testing.capture_logs() as logs:
                # The old server served b"old-password" (the retired epoch still unwraps).
                with pytest.raises(CorruptError, match="not under the active epoch"):
                    await store.read("/app/k/c")
                with pytest.raises(CorruptError, match="not under the active epoch"):
                    await store.read("/app/k/c", epoch=1)
                with pytest.raises(CorruptError):
                    await store.write("/app/k/c", b"over it")
            assert [e["event"] for e in logs if e["log_level"] == "error"] == ["secret_corrupt"] * 2
            assert releases(db, "/app/k/c#1") == []
            put_back(db, "/app/k/c", current)
            assert (await store.read("/app/k/c")).value == b"new-password"
            assert (await store.read("/app/k")).id.epoch == 2
        # Each release names the key its row was wrapped under.
        [(_, details)] = releases(db, "/app/k/c#1")
        assert details["protector"] == "/app/k#2"
        [(_, details)] = releases(db, "/app/k#2")
        assert details["protector"] == "/taonet.secret-server/master#1"


# -- F3 -----------------------------------------------------------------------------


async def test_read_after_of_a_fresh_server_covers_the_last_write(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db = world.domain.path / "secrets.db"
            owner = await world.identity("owner")
            async with connect(world.address, owner) as one:
                await one.create("/app/payroll", b"v1")
                old = copy_of(db, "/app/payroll")
                await one.write("/app/payroll", b"v2")
                current = copy_of(db, "/app/payroll")
            written = written_seq(db, "/app/payroll#1")
            put_back(db, "/app/payroll", old)  # the rollback
            second = await world.start_server("restarted", db_url=f"sqlite:///{db}")
            async with connect(("127.0.0.1", second.port), owner) as two:
                assert (await two.read("/app/payroll")).value == b"v1"
                assert (await two.read("/app/payroll")).value == b"v1"  # a cache hit
            put_back(db, "/app/payroll", current)  # evidence put back
        # The old server said read_after 0: "the read raced the write", excused.
        served = releases(db, "/app/payroll#1")
        assert len(served) == 2
        assert all(int(d["read_after"]) >= written for _, d in served), served


async def test_read_after_of_an_idle_replica_covers_the_other_replicas_write(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db = world.domain.path / "secrets.db"
            second = await world.start_server("replica", db_url=f"sqlite:///{db}")
            owner = await world.identity("owner")
            async with (
                connect(world.address, owner) as one,
                connect(("127.0.0.1", second.port), owner) as two,
            ):
                await one.create("/app/payroll", b"v1")
                assert (await two.read("/app/payroll")).value == b"v1"  # the replica has read
                old = copy_of(db, "/app/payroll")
                await one.write("/app/payroll", b"v2")
                for _ in range(3):
                    await one.read("/app/payroll")
                written = written_seq(db, "/app/payroll#1")
                current = copy_of(db, "/app/payroll")
                put_back(db, "/app/payroll", old)  # the rollback
                first_release = scalar(db, "SELECT max(seq) FROM audit_entries")
                for _ in range(5):  # clients that land on the idle replica
                    assert (await two.read("/app/payroll")).value == b"v1"
                put_back(db, "/app/payroll", current)  # evidence put back
                assert (await one.read("/app/payroll")).value == b"v2"
        served = [d for seq, d in releases(db, "/app/payroll#1") if seq > first_release]
        assert [d["tag"] for d in served[:5]] == [old[0][2].hex()] * 5
        # The old replica's read_after was its own last entry, before the write.
        assert all(int(d["read_after"]) >= written for d in served), served
