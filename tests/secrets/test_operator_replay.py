"""Operator credentials and grants under a database writer: replays, rows copied in.

The review's attack (F11): someone with write access to the database deletes the
rows of ``secret_operator_nonces`` and sends an operator's credential again within
its window; the server used to accept it a second time. The gate now remembers the
nonces it accepted in memory as well. And a grant row signed for another secret
server, copied into this database, was honoured (proofs were checked for no server):
now only one signed for a server holding this database's key is.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from taonet import auth
from taonet.crypto import Signer
from taonet.protected import SecretObject
from taonet.secrets import CreateRequest, GrantRequest, ReadRequest, UnauthorizedError, connect
from taonet_services.secret_server._grants import _proof
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.test_grant import tail
from tests.secrets.test_operator_server import OWNER, operator
from tests.secrets.world import secret_world


async def test_a_replay_after_the_nonce_rows_were_deleted_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            operator(world) as op,
        ):
            await op.call(CreateRequest("/ops/x", b"secret"))
            once = op.sign(ReadRequest("/ops/x"))
            answer = await op.store.call(once)
            assert isinstance(answer, SecretObject)
            assert answer.value == b"secret"
            db = sqlite3.connect(world.domain.path / "secrets.db")
            try:
                with db:
                    deleted = db.execute("delete from secret_operator_nonces").rowcount
            finally:
                db.close()
            assert deleted >= 2
            with pytest.raises(UnauthorizedError, match="used already"):
                await op.once(once)


async def test_a_grant_signed_for_another_server_copied_in_gives_nothing(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            operator(world) as op,
        ):
            await op.call(CreateRequest("/ops/x", b"secret"))
            grantee = tail(world, "stranger")
            # The operator granted this on another secret server B (its own principal);
            # someone with write access copies B's row into this database.
            other = auth.key_principal(Signer.generate().public_key_der())
            signed = op.sign(GrantRequest(grantee, ("Read",), "/ops"), server=other)
            assert isinstance(signed, GrantRequest)
            db = sqlite3.connect(world.domain.path / "secrets.db")
            try:
                with db:
                    db.execute(
                        "insert into secret_grants (principal, name, op, proof)"
                        " values (?, ?, ?, ?)",
                        (grantee, "/ops", "Read", _proof(signed)),
                    )
                    db.execute("update secret_grants_generation set generation = generation + 1")
            finally:
                db.close()
            async with connect(world.address, await world.identity("stranger")) as store:
                with pytest.raises(UnauthorizedError):  # the old server released it
                    await store.read("/ops/x")
            # The same grant signed for this server is honoured (the check is the server).
            await op.call(GrantRequest(grantee, ("Read",), "/ops"))
            async with connect(world.address, await world.identity("stranger")) as store:
                assert (await store.read("/ops/x")).value == b"secret"
