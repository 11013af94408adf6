"""Grants: rights the operator records, honoured only with the policy key's signature.

The attacks: a program asks for a grant itself; rows added or edited in the
database by someone without the policy key (a wider prefix, another op, another
principal, a row made from another grant's proof) must give nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from taonet.domain import measure_file, program_subprin
from taonet.secrets import (
    GrantRequest,
    Op,
    UnauthorizedError,
    connect,
)
from taonet_services.secret_server._grants import GrantBook
from taonet_services.storage import Database
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.test_operator_server import audit_entries, operator
from tests.secrets.world import World, secret_world

ALL = ("Read", "Write", "Create", "Delete", "Own")
OWNER = [("owner", op, "/app") for op in ALL]


def tail(world: World, who: str) -> str:
    from taonet import auth

    return str(auth.PrinTail(program_subprin(measure_file(world.files[who]))))


def book_of(world: World) -> GrantBook:
    assert world.running is not None
    book = world.running.server.extensions[Op.GRANT].__self__  # type: ignore[attr-defined]
    assert isinstance(book, GrantBook)
    return book


async def rows(db_url: Any, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    db = await Database.open(db_url)
    try:

        def run(cur: Any) -> list[Any]:
            cur.execute(db.sql(statement), params)
            return list(cur.fetchall()) if cur.description else []

        return await db.transaction(run)
    finally:
        await db.aclose()


async def test_a_grant_gives_and_revoke_takes_back(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            async with connect(world.address, await world.identity("owner")) as owner:
                await owner.create("/app/db/password", b"hunter2")
                await owner.create("/app/other", b"x")
            stranger = await world.identity("stranger")
            async with connect(world.address, stranger) as store, operator(world) as op:
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/db/password")
                # The stranger cannot grant itself anything.
                with pytest.raises(UnauthorizedError):
                    await store.call(GrantRequest(tail(world, "stranger"), ("Read",), "/app"))
                await op.call(GrantRequest(tail(world, "stranger"), ("Read", "Write"), "/app/db"))
                assert (await store.read("/app/db/password")).value == b"hunter2"
                await store.write("/app/db/password", b"changed")
                assert await store.list("/app") == ["/app/db/password"]
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/other")  # outside the prefix
                with pytest.raises(UnauthorizedError):
                    await store.rotate("/app/db/password", b"x")  # Own was not granted
                await op.call(
                    GrantRequest(tail(world, "stranger"), ("Write",), "/app/db", revoke=True)
                )
                assert (await store.read("/app/db/password")).value == b"changed"
                with pytest.raises(UnauthorizedError):
                    await store.write("/app/db/password", b"again")
                await op.call(
                    GrantRequest(tail(world, "stranger"), ("Read",), "/app/db", revoke=True)
                )
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/db/password")
        entries = await audit_entries(world.domain.path / "secrets.db")
    kinds = [e.kind for e in entries]
    assert kinds.count("secret_granted") == 1
    assert kinds.count("secret_grant_revoked") == 2


async def test_grant_rows_edited_in_the_database_give_nothing(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db_url = world.domain.path / "secrets.db"
            async with connect(world.address, await world.identity("owner")) as owner:
                await owner.create("/app/db/password", b"hunter2")
                await owner.create("/app/key")
            stranger = await world.identity("stranger")
            reader = await world.identity("reader")
            book = book_of(world)
            async with (
                connect(world.address, stranger) as store,
                connect(world.address, reader) as reader_store,
                operator(world) as op,
            ):
                await op.call(GrantRequest(tail(world, "stranger"), ("Read",), "/app/db"))
                assert (await store.read("/app/db/password")).value == b"hunter2"

                # Widen the prefix in the row: /app/db -> /app.
                await rows(db_url, "UPDATE secret_grants SET name = ?", ("/app",))
                await book.load()
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/key")
                with pytest.raises(UnauthorizedError):  # the edited row is not honoured at all
                    await store.read("/app/db/password")

                # Another op in the row: Read -> Own.
                await rows(db_url, "UPDATE secret_grants SET name = ?, op = ?", ("/app/db", "Own"))
                await book.load()
                with pytest.raises(UnauthorizedError):
                    await store.rotate("/app/db/password", b"mine")

                # Another principal: the stranger's row given to the reader.
                await rows(db_url, "UPDATE secret_grants SET op = ?", ("Read",))
                await book.load()
                assert (await store.read("/app/db/password")).value == b"hunter2"  # restored
                await rows(
                    db_url, "UPDATE secret_grants SET principal = ?", (tail(world, "reader"),)
                )
                await book.load()
                with pytest.raises(UnauthorizedError):
                    await reader_store.read("/app/db/password")

                # A row inserted by hand with the proof of another grant, or none at all.
                [(proof,)] = await rows(db_url, "SELECT proof FROM secret_grants")
                await rows(db_url, "DELETE FROM secret_grants")
                for principal, name, op_, forged in (
                    (tail(world, "stranger"), "/", "Read", proof),
                    (tail(world, "stranger"), "/app/db", "Read", b"SecretService.Grant\0"),
                    (tail(world, "stranger"), "/app/db", "Read", proof[:-1] + b"\0"),
                ):
                    await rows(
                        db_url,
                        "INSERT INTO secret_grants (principal, name, op, proof)"
                        " VALUES (?, ?, ?, ?)",
                        (principal, name, op_, forged),
                    )
                    await book.load()
                    with pytest.raises(UnauthorizedError):
                        await store.read("/app/key")
                    await rows(db_url, "DELETE FROM secret_grants")
        entries = await audit_entries(db_url)
    assert len([e for e in entries if e.kind == "secret_grant_invalid"]) >= 5


async def test_a_grant_made_through_one_replica_holds_on_another(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    with trio.fail_after(90):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            other = ("127.0.0.1", second.port)
            book_two = second.server.extensions[Op.GRANT].__self__  # type: ignore[attr-defined]
            assert isinstance(book_two, GrantBook)
            async with connect(world.address, await world.identity("owner")) as owner:
                await owner.create("/app/db/password", b"hunter2")
            async with (
                connect(other, await world.identity("stranger")) as store,
                operator(world) as op,
            ):
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/db/password")
                await op.call(GrantRequest(tail(world, "stranger"), ("Read",), "/app/db"))
                await book_two.load()  # what its refresh does every few seconds
                assert (await store.read("/app/db/password")).value == b"hunter2"
                # Edited in the shared database: no replica honours it.
                await rows(postgres_url, "UPDATE secret_grants SET name = '/'")
                await book_two.load()
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/db/password")
