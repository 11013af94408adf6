"""Edited database rows are detected and never served: the attacks done with sqlite3.

The attacker has the database file (not the master key, which only the server's
Tao can unseal). Each test edits rows behind the running server's back, the way
such an attacker would, and then reads through the server.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from taonet.secrets import CorruptError, connect
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
ROW = "SELECT protector_name, protector_epoch, tag, blob, mac FROM secret_objects"


@contextlib.contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def row(path: Path, name: str, epoch: int = 1) -> tuple[object, ...]:
    with sql(path) as conn:
        found = conn.execute(f"{ROW} WHERE name = ? AND epoch = ?", (name, epoch)).fetchone()
    assert found is not None
    return tuple(found)


def put_row(path: Path, name: str, values: tuple[object, ...], epoch: int = 1) -> None:
    with sql(path) as conn:
        conn.execute(
            "UPDATE secret_objects SET protector_name = ?, protector_epoch = ?, tag = ?,"
            " blob = ?, mac = ? WHERE name = ? AND epoch = ?",
            (*values, name, epoch),
        )


async def test_edited_swapped_and_rolled_back_rows_are_never_served(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            db = world.domain.path / "secrets.db"
            for name in ("/app/a", "/app/b", "/app/c", "/app/d", "/app/e"):
                await store.create(name, b"old " + name.encode())

            # 1. A flipped bit in a blob.
            protector, pepoch, tag, blob, mac = row(db, "/app/a")
            assert isinstance(blob, bytes)
            put_row(db, "/app/a", (protector, pepoch, tag, blob[:-1] + bytes([blob[-1] ^ 1]), mac))
            with pytest.raises(CorruptError):
                await store.read("/app/a")

            # 2. Two rows swapped between ids (all their columns): each fails.
            b_row, c_row = row(db, "/app/b"), row(db, "/app/c")
            put_row(db, "/app/b", c_row)
            put_row(db, "/app/c", b_row)
            for name in ("/app/b", "/app/c"):
                with pytest.raises(CorruptError):
                    await store.read(name)

            # 3. Rollback: a row put back to an older valid copy of itself (blob,
            #    tag and MAC all genuine, written by the server earlier).
            before = row(db, "/app/d")
            await store.write("/app/d", b"new value")
            assert (await store.read("/app/d")).value == b"new value"
            put_row(db, "/app/d", before)
            with pytest.raises(CorruptError, match="rolled back"):
                await store.read("/app/d")

            # 4. A manifest taken from another name, and a row deleted.
            with sql(db) as conn:
                manifest, mac = conn.execute(
                    "SELECT manifest, mac FROM secret_names WHERE name = '/app/a'"
                ).fetchone()
                conn.execute(
                    "UPDATE secret_names SET manifest = ?, mac = ? WHERE name = '/app/e'",
                    (manifest, mac),
                )
            with pytest.raises(CorruptError):
                await store.read("/app/e")

            # 5. A status flipped in the manifest (a retired epoch shown as active).
            await store.create("/app/r", b"r1")
            await store.rotate("/app/r", b"r2")
            with sql(db) as conn:
                (manifest,) = conn.execute(
                    "SELECT manifest FROM secret_names WHERE name = '/app/r'"
                ).fetchone()
                raw = bytearray(manifest)
                raw[4] = 1  # epoch 1's status byte: RETIRED -> ACTIVE
                conn.execute(
                    "UPDATE secret_names SET manifest = ? WHERE name = '/app/r'", (bytes(raw),)
                )
            with pytest.raises(CorruptError):
                await store.read("/app/r", 1)

            # 6. The row of a name deleted under its manifest.
            await store.create("/app/gone", b"g")
            with sql(db) as conn:
                conn.execute("DELETE FROM secret_objects WHERE name = '/app/gone'")
            with pytest.raises(CorruptError, match="missing"):
                await store.read("/app/gone")

            # What was not touched is still served.
            await store.create("/app/fine", b"fine")
            assert (await store.read("/app/fine")).value == b"fine"


async def test_a_rollback_of_a_rotation_is_detected(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """A child rolled back to its copy under the old key epoch (still a valid blob
    of the same id) after the rotation rewrapped it."""
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            db = world.domain.path / "secrets.db"
            await store.create("/app/k")
            await store.create("/app/child", b"c", protector="/app/k")
            before = row(db, "/app/child")
            await store.rotate("/app/k")
            assert row(db, "/app/child")[1] == 2  # now under epoch 2
            put_row(db, "/app/child", before)
            with pytest.raises(CorruptError):
                await store.read("/app/child")
