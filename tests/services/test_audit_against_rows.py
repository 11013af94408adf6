"""``taonet audit verify --against-rows``: a name rolled back behind the secret server.

Review F8: someone with write access to the database copies an older, genuine row of
a name back, together with the name's manifest row (both were valid once: the blob,
the tag and both MACs are the server's own). The server cannot tell that copy from
the latest and serves it. Its audit chain recorded each write's tag, and now each
release's: ``--against-rows`` holds the chain against the rows and names what
disagrees. The attacks are done with ``sqlite3`` (and psycopg) on a real server.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from taonet.cli import main
from taonet.crypto import Signer
from taonet.secrets import CorruptError, connect
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

REFUSED = 4
OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
OBJECT = "SELECT protector_name, protector_epoch, tag, blob, mac FROM secret_objects"
NAMES = "SELECT manifest, mac FROM secret_names"


@contextlib.contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def copy_of(path: Path, name: str, epoch: int = 1) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What an attacker keeps: the name's object row and its manifest row, as they are."""
    with sql(path) as conn:
        row = conn.execute(f"{OBJECT} WHERE name = ? AND epoch = ?", (name, epoch)).fetchone()
        names = conn.execute(f"{NAMES} WHERE name = ?", (name,)).fetchone()
    return tuple(row), tuple(names)


def put_back(
    path: Path, name: str, copy: tuple[tuple[Any, ...], tuple[Any, ...]], epoch: int = 1
) -> None:
    """The rollback: both rows put back as they were, in one transaction."""
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


async def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await trio.to_thread.run_sync(main, ["audit", "verify", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def write_public_key(path: Path, der: bytes) -> Path:
    """A public key (DER SubjectPublicKeyInfo) as a PEM file, for --key."""
    key = serialization.load_der_public_key(der)
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def server_key(world: World, base: Path) -> Path:
    """The secret server's checkpoint key as a PEM file, for --key."""
    assert world.running is not None
    signer = world.running.server.audit.signer
    assert signer is not None
    return write_public_key(base / "server.pub", signer.public_key_der())


async def signed(world: World) -> None:
    """A checkpoint over the head: ``--against-rows`` takes as evidence only entries a
    trusted checkpoint signs (the server signs one about a second after a change)."""
    assert world.running is not None
    await world.running.server.audit.checkpoint()  # None: the head was signed already


async def test_a_name_rolled_back_and_served_is_named_by_verify_against_rows(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            db = world.domain.path / "secrets.db"
            key = server_key(world, tmp_path)
            # A few names the attacker leaves alone, a key with children that is
            # rotated (rewraps with tags the chain does not list), a rotated value.
            await store.create("/app/key")
            for i in range(3):
                await store.create(f"/app/under/{i}", b"c%d" % i, protector="/app/key")
            await store.rotate("/app/key")
            await store.create("/app/plain", b"p1")
            await store.rotate("/app/plain", b"p2")
            await store.create("/app/gone", b"g")
            await store.delete("/app/gone")
            for name in ("/app/under/0", "/app/plain", "/app/key"):
                await store.read(name)

            await store.create("/app/payroll", b"v1")
            v1 = copy_of(db, "/app/payroll")  # the attacker keeps a copy
            await store.write("/app/payroll", b"v2")
            assert (await store.read("/app/payroll")).value == b"v2"

            # A clean database passes, with the server's key trusted (without, the
            # check is refused: a chain re-signed by anyone would pass).
            trust = ("--db", str(db), "--key", str(key))
            await signed(world)
            status, out, err = await verify(capsys, *trust, "--against-rows")
            assert (status, err) == (0, ""), out
            assert "no mismatches" in out
            status, out, _ = await verify(capsys, *trust, "--against-rows", "-o", "json")
            assert status == 0
            clean = json.loads(out)["rows"]
            assert clean["match"] is True
            assert clean["mismatches"] == 0
            assert clean["rows"] == 8  # key #1 #2, three under it, plain #1 #2, payroll
            assert clean["releases_checked"] == 4

            # The attack: v1's rows put back. The server serves v1, as before (it
            # cannot tell the copy from the latest: both are its own).
            put_back(db, "/app/payroll", v1)
            assert (await store.read("/app/payroll")).value == b"v1"

            await signed(world)
            status, out, err = await verify(capsys, *trust, "--against-rows")
            assert status == REFUSED
            lines = out.splitlines()
            assert any(
                line.startswith("rolled_back /app/payroll#1: the row's tag") for line in lines
            ), out
            assert any(
                line.startswith("served_rollback /app/payroll#1: released at entry")
                for line in lines
            ), out
            assert "2 mismatches" in out
            assert err.startswith("taonet: error: audit log ")
            assert "rows do not match the chain: 2 mismatches" in err
            assert len(err.splitlines()) == 1

            status, out, _ = await verify(capsys, *trust, "--against-rows", "-o", "json")
            assert status == REFUSED
            rows = json.loads(out)["rows"]
            assert rows["match"] is False
            assert rows["by_kind"]["rolled_back"] == 1
            assert rows["by_kind"]["served_rollback"] == 1
            assert {(m["kind"], m["name"], m["epoch"]) for m in rows["reported"]} == {
                ("rolled_back", "/app/payroll", 1),
                ("served_rollback", "/app/payroll", 1),
            }

            # Without --against-rows the chain itself still verifies: it was not touched.
            status, _, _ = await verify(capsys, "--db", str(db))
            assert status == 0


async def test_rows_deleted_added_or_rewrapped_back_without_audit_are_flagged(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            db = world.domain.path / "secrets.db"
            await store.create("/app/k")
            await store.create("/app/k/child", b"c", protector="/app/k")
            before_rotation = copy_of(db, "/app/k/child")
            await store.rotate("/app/k")  # rewraps the child under /app/k#2
            await store.create("/app/dropped", b"d")
            await store.create("/app/edited", b"e")
            trust = ("--db", str(db), "--key", str(server_key(world, tmp_path)))
            await signed(world)
            status, _, _ = await verify(capsys, *trust, "--against-rows")
            assert status == 0

            # 1. A name deleted behind the server: its object and manifest rows (a
            #    consistent delete: the server now says "not found", as if never made).
            with sql(db) as conn:
                conn.execute("DELETE FROM secret_objects WHERE name = '/app/dropped'")
                conn.execute("DELETE FROM secret_names WHERE name = '/app/dropped'")
            # 2. A row (and manifest) copied in under a name the server never made.
            with sql(db) as conn:
                conn.execute(
                    "INSERT INTO secret_objects SELECT '/app/forged', epoch, protector_name,"
                    " protector_epoch, tag, blob, mac FROM secret_objects"
                    " WHERE name = '/app/edited'"
                )
                conn.execute(
                    "INSERT INTO secret_names SELECT '/app/forged', manifest, mac"
                    " FROM secret_names WHERE name = '/app/edited'"
                )
            # 3. The child put back as it was before the rotation (wrapped under the
            #    retired epoch #1, with its own genuine tag and MACs).
            put_back(db, "/app/k/child", before_rotation)
            # 4. An edited blob: the server detects it (MAC, AES-GCM), never serves it.
            with sql(db) as conn:
                (blob,) = conn.execute(
                    "SELECT blob FROM secret_objects WHERE name = '/app/edited'"
                ).fetchone()
                conn.execute(
                    "UPDATE secret_objects SET blob = ? WHERE name = '/app/edited'",
                    (blob[:-1] + bytes([blob[-1] ^ 1]),),
                )
            with pytest.raises(CorruptError):
                await store.read("/app/edited")
            with pytest.raises(CorruptError):
                await store.read("/app/forged")  # its MAC binds the other name

            await signed(world)
            status, out, err = await verify(capsys, *trust, "--against-rows", "-o", "json")
            assert status == REFUSED, (out, err)
            # (The server's log lines of the refused reads come first.)
            rows = json.loads(out[out.index("{\n") :])["rows"]
            found = {(m["kind"], m["name"], m["epoch"]) for m in rows["reported"]}
            assert found == {
                ("deleted_unaudited", "/app/dropped", 1),
                ("unaudited_row", "/app/forged", 1),
                ("rolled_back", "/app/k/child", 1),
            }
            (child,) = [m for m in rows["reported"] if m["name"] == "/app/k/child"]
            assert "wrapped under /app/k#1" in child["detail"]
            assert "/app/k#2" in child["detail"]


async def test_a_rollback_on_postgresql_is_named_too(
    tmp_path: Path,
    make_domain: MakeDomain,
    make_host: MakeHost,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import psycopg

    with trio.fail_after(90):
        async with (
            secret_world(
                tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
            ) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            await store.create("/app/payroll", b"v1")
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                row = conn.execute(f"{OBJECT} WHERE name = '/app/payroll'").fetchone()
                names = conn.execute(f"{NAMES} WHERE name = '/app/payroll'").fetchone()
            await store.write("/app/payroll", b"v2")
            trust = ("--db", postgres_url, "--key", str(server_key(world, tmp_path)))
            await signed(world)
            status, out, _ = await verify(capsys, *trust, "--against-rows")
            assert status == 0, out
            with psycopg.connect(postgres_url) as conn:  # one transaction
                conn.execute(
                    "UPDATE secret_objects SET protector_name = %s, protector_epoch = %s,"
                    " tag = %s, blob = %s, mac = %s WHERE name = '/app/payroll'",
                    row,
                )
                conn.execute(
                    "UPDATE secret_names SET manifest = %s, mac = %s WHERE name = '/app/payroll'",
                    names,
                )
            assert (await store.read("/app/payroll")).value == b"v1"
            await signed(world)
            status, out, _ = await verify(capsys, *trust, "--against-rows", "-o", "json")
            assert status == REFUSED
            found = {(m["kind"], m["name"]) for m in json.loads(out)["rows"]["reported"]}
            assert found == {("rolled_back", "/app/payroll"), ("served_rollback", "/app/payroll")}


def fill(path: Path, names: int, rewritten: tuple[int, ...]) -> dict[int, Any]:
    """A secret server database of ``names`` names written as the server writes them
    (each row with its audit entry, in one transaction), the names in ``rewritten``
    written a second time, and a checkpoint signed over them by a key whose public
    half is written to ``path.with_suffix(".pub")`` (for --key); returns an
    attacker's copy of each before that write."""
    from taonet_services.secret_server import SecretTables, new_master_key
    from taonet_services.secret_server._store import utc_now
    from taonet_services.storage import AuditStore, Database

    db = Database.open_sync(f"sqlite:///{path}")
    try:
        db.transaction_sync(lambda cur: SecretTables.create_tables_in(db, cur))
        signer = Signer.generate()
        audit = AuditStore.open_sync(db, signer=signer)
        write_public_key(path.with_suffix(".pub"), signer.public_key_der())
        tables = SecretTables(db, new_master_key())
        now = utc_now()

        def record(cur: Any, kind: str, oid: object, tag: bytes) -> None:
            details = {"peer": "127.0.0.1:1", "tag": tag.hex()}
            audit.append_in(
                cur, kind=kind, actor="key([aa])", subject=str(oid), outcome="ok", details=details
            )

        def create(cur: Any, start: int, stop: int) -> None:
            for i in range(start, stop):
                oid, tag = tables.create_in(
                    cur, f"/n/{i:06d}", b"v1", "bytes", None, None, None, now
                )
                record(cur, "secret_created", oid, tag)

        for start in range(0, names, 10_000):
            db.transaction_sync(
                functools.partial(create, start=start, stop=min(start + 10_000, names))
            )
        copies = {i: copy_of(path, f"/n/{i:06d}") for i in rewritten}

        def write(cur: Any) -> None:
            for i in rewritten:
                oid, tag = tables.write_in(cur, f"/n/{i:06d}", None, b"v2", now)
                record(cur, "secret_written", oid, tag)

        db.transaction_sync(write)
        assert audit.checkpoint_sync() is not None
    finally:
        db.close_sync()
    return copies


async def test_rollbacks_across_page_boundaries_are_each_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2,500 names: entries and rows are read 1,000 at a time; the names touched sit
    # at the edges of those pages.
    db = tmp_path / "secrets.db"
    copies = fill(db, 2500, rewritten=(0, 999, 1000, 2499))
    trust = ("--db", str(db), "--key", str(db.with_suffix(".pub")))
    with trio.fail_after(60):
        status, out, _ = await verify(capsys, *trust, "--against-rows", "-o", "json")
        assert status == 0
        assert json.loads(out)["rows"]["rows"] == 2500
        for i in (999, 1000, 2499):
            put_back(db, f"/n/{i:06d}", copies[i])
        with sql(db) as conn:
            conn.execute("DELETE FROM secret_objects WHERE name = '/n/001999'")
            conn.execute("DELETE FROM secret_names WHERE name = '/n/001999'")
        status, out, _ = await verify(capsys, *trust, "--against-rows", "-o", "json")
    assert status == REFUSED
    rows = json.loads(out)["rows"]
    assert rows["rows"] == 2499
    assert {(m["kind"], m["name"]) for m in rows["reported"]} == {
        ("rolled_back", "/n/000999"),
        ("rolled_back", "/n/001000"),
        ("rolled_back", "/n/002499"),
        ("deleted_unaudited", "/n/001999"),
    }


@pytest.mark.slow
async def test_one_rollback_among_100000_names_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "secrets.db"
    copies = fill(db, 100_000, rewritten=(54_321,))
    put_back(db, "/n/054321", copies[54_321])
    trust = ("--db", str(db), "--key", str(db.with_suffix(".pub")))
    with trio.fail_after(300):
        status, out, _ = await verify(capsys, *trust, "--against-rows", "-o", "json")
    assert status == REFUSED
    rows = json.loads(out)["rows"]
    assert rows["rows"] == 100_000
    assert rows["mismatches"] == 1
    assert [(m["kind"], m["name"]) for m in rows["reported"]] == [("rolled_back", "/n/054321")]


async def test_a_log_without_secret_rows_is_one_line_not_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taonet_services.storage import AuditStore, Database

    path = tmp_path / "audit.sqlite"  # a domain service's log: no secret_objects table
    key = write_public_key(tmp_path / "any.pub", Signer.generate().public_key_der())
    db = Database.open_sync(path)
    try:
        AuditStore.open_sync(db).append_sync(
            kind="cert_issued", actor="a", subject="s", outcome="ok"
        )
    finally:
        db.close_sync()
    with trio.fail_after(30):
        status, out, err = await verify(
            capsys, "--db", str(path), "--key", str(key), "--against-rows"
        )
    assert status == 3
    assert out == ""
    assert err.startswith("taonet: error: no secret server tables in ")
    assert len(err.splitlines()) == 1
