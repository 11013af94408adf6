"""Operator credentials and grants bound to one store, not only to a server principal.

The review's attack (F4): two instances of the same secret server program on one
host (so one principal), each over its own database, a test server and production.
A credential the operator made for one was accepted by the other, and spent there
too (each keeps its own nonces); a grant signed through one, its row copied into the
other's database, was honoured there. Each database now has a store id, announced
over the channel (Info) and named by every credential and grant proof.

Everything is real: two secret servers over TLS on 127.0.0.1, separate SQLite files,
or two replicas on one real PostgreSQL database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import ConfigError
from taonet.channel import ChannelIdentity
from taonet.protected import SecretObject
from taonet.secrets import (
    STORE_ID_BYTES,
    CreateRequest,
    GrantRequest,
    InfoRequest,
    ReadRequest,
    ServerInfo,
    UnauthorizedError,
    connect,
)
from taonet_services.secret_server import SecretTables
from taonet_services.secret_server._operator_auth import load_store_id, store_id_mac
from taonet_services.secret_server._store import new_master_key
from taonet_services.storage import Database
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.test_grant import tail
from tests.secrets.test_operator_server import OWNER, audit_entries, operator, refusals
from tests.secrets.world import World, secret_world


def _value(response: object) -> bytes:
    assert isinstance(response, SecretObject), response
    return response.value


async def _second(world: World, base: Path) -> tuple[tuple[str, int], Path]:
    """Another instance of the same program on the same host, over its own database."""
    db_file = base / "b" / "secrets.db"
    db_file.parent.mkdir()
    running = await world.start_server("server-b", db_url=f"sqlite:///{db_file}")
    return ("127.0.0.1", running.port), db_file


def _store_row(db_file: Path) -> bytes:
    return _whole_row(db_file)[0]


def _whole_row(db_file: Path) -> tuple[bytes, bytes]:
    db = sqlite3.connect(db_file)
    try:
        row = db.execute("select store_id, mac from secret_store_id where id = 1").fetchone()
        return bytes(row[0]), bytes(row[1])
    finally:
        db.close()


async def test_a_credential_for_one_instance_is_refused_by_another(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            address_b, db_b = await _second(world, tmp_path)
            async with operator(world) as a, operator(world, address_b) as b:
                # One program on one host: the principal cannot tell them apart.
                assert a.server == b.server
                assert len(a.store_id) == STORE_ID_BYTES
                assert a.store_id != b.store_id
                assert b.store_id == _store_row(db_b)
                await a.call(CreateRequest("/ops/x", b"test server's"))
                await b.call(CreateRequest("/ops/x", b"production's"))

                # The operator signs for A (the test server); the attacker sends it to B.
                for_a = a.sign(ReadRequest("/ops/x"))
                with pytest.raises(UnauthorizedError, match="another store"):
                    await b.once(for_a)
                # Refused before its nonce was spent anywhere: A accepts it, once.
                assert _value(await a.once(for_a)) == b"test server's"
                with pytest.raises(UnauthorizedError, match="used already"):
                    await a.once(for_a)
                # And a change signed for A does not change B.
                overwrite = a.sign(CreateRequest("/ops/y", b"planted"))
                with pytest.raises(UnauthorizedError, match="another store"):
                    await b.once(overwrite)
                # B's own credentials work on B.
                assert _value(await b.call(ReadRequest("/ops/x"))) == b"production's"
        entries = await audit_entries(f"sqlite:///{db_b}")
    why = " ".join(e.details.get("reason", "") for e in refusals(entries))
    assert why.count("another store") == 2, why
    assert [e.outcome for e in entries if e.subject.startswith("/ops/y")] == ["refused"]


async def test_a_grant_row_signed_for_another_instance_gives_nothing(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            address_b, db_b = await _second(world, tmp_path)
            grantee = tail(world, "stranger")
            async with operator(world) as a, operator(world, address_b) as b:
                assert a.server == b.server
                await a.call(CreateRequest("/ops/x", b"test server's"))
                await b.call(CreateRequest("/ops/x", b"production's"))
                # The operator grants the stranger Read on the test server A...
                await a.call(GrantRequest(grantee, ("Read",), "/ops"))
            stranger = await world.identity("stranger")
            async with connect(world.address, stranger) as store:
                assert (await store.read("/ops/x")).value == b"test server's"
            # ... and someone with write access to B's database copies the row over.
            src = sqlite3.connect(world.domain.path / "secrets.db")
            try:
                copied = src.execute(
                    "select principal, name, op, proof from secret_grants"
                ).fetchall()
            finally:
                src.close()
            assert len(copied) == 1
            dst = sqlite3.connect(db_b)
            try:
                with dst:
                    dst.executemany(
                        "insert into secret_grants (principal, name, op, proof)"
                        " values (?, ?, ?, ?)",
                        copied,
                    )
                    dst.execute("update secret_grants_generation set generation = generation + 1")
            finally:
                dst.close()
            async with connect(address_b, stranger) as store:
                with pytest.raises(UnauthorizedError):
                    await store.read("/ops/x")  # the old check (the principal) released it
        entries = await audit_entries(f"sqlite:///{db_b}")
    assert [e.details["principal"] for e in entries if e.kind == "secret_grant_invalid"] == [
        grantee
    ]
    assert not [e for e in entries if e.kind == "secret_released" and "/ops/x" in e.subject]


async def test_a_store_id_edited_while_the_server_runs_changes_nothing(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """Someone with write access to A's database copies B's store id row over A's,
    hoping that A then takes credentials and grants made for B: A keeps the id it read
    at start, and a restart on the edited row refuses to start (its MAC is not under
    A's master key)."""
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            address_b, db_b = await _second(world, tmp_path)
            db_a = world.domain.path / "secrets.db"
            async with operator(world) as a, operator(world, address_b) as b:
                await a.call(CreateRequest("/ops/x", b"A's"))
                grantee = tail(world, "stranger")
                await a.call(GrantRequest(grantee, ("Read",), "/ops"))
                original = a.store_id
                db = sqlite3.connect(db_a)
                try:
                    with db:
                        db.execute(
                            "update secret_store_id set store_id = ?, mac = ?", _whole_row(db_b)
                        )
                        db.execute(
                            "update secret_grants_generation set generation = generation + 1"
                        )
                finally:
                    db.close()
                assert _store_row(db_a) == b.store_id
                # A credential made for B, sent to A: refused.
                with pytest.raises(UnauthorizedError, match="another store"):
                    await a.once(b.sign(ReadRequest("/ops/x")))
                # A still announces, and accepts, its own id; its grants still hold.
                async with connect(
                    world.address, ChannelIdentity.anonymous(world.domain.policy_cert)
                ) as fresh:
                    info = await fresh.call(InfoRequest())
                assert info == ServerInfo(original)
                assert _value(await a.once(a.sign(ReadRequest("/ops/x")))) == b"A's"
                async with connect(world.address, await world.identity("stranger")) as store:
                    assert (await store.read("/ops/x")).value == b"A's"
            # A restart (here: another server of A's program on A's database) reads the
            # row again and refuses it.
            with pytest.raises(BaseExceptionGroup) as refused:
                await world.start_server("server-a-restarted")
            assert refused.group_contains(ConfigError, match="master key")


async def test_replicas_of_one_postgresql_database_share_the_store(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    with trio.fail_after(120):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            async with (
                operator(world) as one,
                operator(world, ("127.0.0.1", second.port)) as two,
            ):
                assert one.server == two.server
                assert one.store_id == two.store_id  # one database, one store
                await one.call(CreateRequest("/ops/x", b"shared"))
                # A credential made at one replica is good at the other, once in all.
                for_one = one.sign(ReadRequest("/ops/x"))
                assert _value(await two.once(for_one)) == b"shared"
                with pytest.raises(UnauthorizedError, match="used already"):
                    await one.once(for_one)
                with pytest.raises(UnauthorizedError, match="used already"):
                    await two.once(for_one)
                # A grant made through one holds on the other (its proof names the store).
                grantee = tail(world, "stranger")
                await two.call(GrantRequest(grantee, ("Read",), "/ops"))
            async with connect(
                ("127.0.0.1", second.port), await world.identity("stranger")
            ) as store:
                assert (await store.read("/ops/x")).value == b"shared"
            async with connect(world.address, await world.identity("stranger")) as store:
                assert (await store.read("/ops/x")).value == b"shared"


MASTER = new_master_key()


async def _race(url: str, replicas: int) -> list[bytes]:
    """``replicas`` servers' first start on one database at the same moment."""
    dbs = [await Database.open(url) for _ in range(replicas)]
    ids: list[bytes] = []
    try:
        go = trio.Event()

        async def start(db: Database) -> None:
            await go.wait()
            ids.append(await load_store_id(db, MASTER))

        async with trio.open_nursery() as nursery:
            for db in dbs:
                nursery.start_soon(start, db)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
    finally:
        for db in dbs:
            await db.aclose()
    return ids


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
async def test_replicas_starting_at_once_agree_on_one_store_id(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'secrets.db'}"
        if storage == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    with trio.fail_after(60):
        ids = await _race(url, 6)
        assert len(ids) == 6
        assert len(set(ids)) == 1
        (store_id,) = set(ids)
        assert len(store_id) == STORE_ID_BYTES
        assert (await _race(url, 2)) == [store_id, store_id]  # and at every later start


async def test_a_database_made_before_store_ids_gets_one_and_keeps_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'secrets.db'}"
    with trio.fail_after(30):
        async with await Database.open(url) as db:
            # A database as the previous version left it: its tables, no store id.
            await db.transaction(lambda cur: SecretTables.create_tables_in(db, cur))
            tables: Any = await db.transaction(
                lambda cur: cur.execute("select name from sqlite_master").fetchall(),
                write=False,
            )
            assert "secret_store_id" not in {t[0] for t in tables}
            first = await load_store_id(db, MASTER)
            assert first == await load_store_id(db, MASTER)
        assert _store_row(tmp_path / "secrets.db") == first


@pytest.mark.parametrize("bad", [b"", b"\x01" * 15, b"\x01" * 17])
async def test_a_store_id_row_that_is_not_one_stops_the_start(tmp_path: Path, bad: bytes) -> None:
    url = f"sqlite:///{tmp_path / 'secrets.db'}"
    with trio.fail_after(30):
        async with await Database.open(url) as db:
            await load_store_id(db, MASTER)

            def edit(cur: Any) -> None:
                cur.execute("update secret_store_id set store_id = ?", (bad,))

            await db.transaction(edit)
            with pytest.raises(ConfigError, match="store id"):
                await load_store_id(db, MASTER)


async def test_a_store_id_row_made_under_another_master_key_stops_the_start(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with (
            await Database.open(f"sqlite:///{tmp_path / 'a.db'}") as a,
            await Database.open(f"sqlite:///{tmp_path / 'b.db'}") as b,
        ):
            other_master = new_master_key()
            id_b = await load_store_id(b, other_master)
            mac_b = store_id_mac(other_master, id_b)
            await load_store_id(a, MASTER)

            def copy(cur: Any) -> None:
                cur.execute("update secret_store_id set store_id = ?, mac = ?", (id_b, mac_b))

            await a.transaction(copy)
            with pytest.raises(ConfigError, match="master key"):
                await load_store_id(a, MASTER)
            assert await load_store_id(b, other_master) == id_b
            # Deleting the row (what the message offers) makes a new store id.
            await a.transaction(lambda cur: cur.execute("delete from secret_store_id"))
            assert await load_store_id(a, MASTER) not in (id_b, b"")


async def test_info_is_answered_to_any_caller_and_records_nothing(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            anonymous = ChannelIdentity.anonymous(world.domain.policy_cert)
            answers = []
            for identity in (anonymous, await world.identity("stranger")):
                async with connect(world.address, identity) as store:
                    # Twice on one channel: an anonymous channel is not closed after it.
                    answers += [await store.call(InfoRequest()), await store.call(InfoRequest())]
            assert len(set(answers)) == 1
            assert answers[0] == ServerInfo(_store_row(world.domain.path / "secrets.db"))
        entries = await audit_entries(world.domain.path / "secrets.db")
    assert not refusals(entries)
