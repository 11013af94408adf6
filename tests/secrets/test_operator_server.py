"""Operator requests at a real secret server: anonymous channels, the policy key, once.

The operator's side is what ``taonet secret`` does: an anonymous channel
(``ChannelIdentity.anonymous(policy_cert)``), the server's principal read from it,
each request signed with the policy key for that server. The attacks replay the
same bytes (on one server, and on a second replica of one PostgreSQL database),
sign with another key, edit a field after signing, move the window, aim a
credential at another server, and send unsigned requests over an anonymous channel.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from taonet import auth
from taonet.channel import ChannelIdentity, open_channel
from taonet.crypto import Signer
from taonet.domain import measure_file, program_subprin
from taonet.protected import ObjectId, SecretObject
from taonet.secrets import (
    Changed,
    CreateRequest,
    Deleted,
    DeleteRequest,
    InfoRequest,
    Listing,
    ListRequest,
    ReadRequest,
    Request,
    RotateRequest,
    SecretStore,
    ServerInfo,
    UnauthorizedError,
    WriteRequest,
    connect,
    sign_operator_request,
)
from taonet_services.storage import AuditStore, Database
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

ALL = ("Read", "Write", "Create", "Delete", "Own")
OWNER = [("owner", op, "/app") for op in ALL]


@attrs.define
class Operator:
    """An operator at one server: an anonymous store and the policy key."""

    store: SecretStore
    server: auth.Prin
    #: The store id the server announced (Info), which every credential names.
    store_id: bytes
    signer: Signer
    address: tuple[str, int]
    identity: ChannelIdentity

    def sign(self, request: Request, **kw: Any) -> Any:
        options: dict[str, Any] = {
            "server": self.server,
            "store": self.store_id,
            "now_ns": time.time_ns(),
        }
        options.update(kw)
        return sign_operator_request(request, self.signer, **options)

    async def call(self, request: Request, **kw: Any) -> Any:
        return await self.store.call(self.sign(request, **kw))

    async def once(self, request: Request) -> Any:
        """``request`` as is, on a channel of its own (the server closes an anonymous
        channel after a refusal)."""
        async with connect(self.address, self.identity, server=self.server) as store:
            return await store.call(request)


def _value(response: object) -> bytes:
    assert isinstance(response, SecretObject), response
    return response.value


async def server_principal(world: World, address: tuple[str, int]) -> auth.Prin:
    probe = await open_channel(*address, ChannelIdentity.anonymous(world.domain.policy_cert))
    try:
        principal = probe.peer.principal
    finally:
        await probe.aclose()
    assert principal is not None
    return principal


@contextlib.asynccontextmanager
async def operator(world: World, address: tuple[str, int] | None = None) -> AsyncIterator[Operator]:
    address = address or world.address
    principal = await server_principal(world, address)
    identity = ChannelIdentity.anonymous(world.domain.policy_cert)
    async with connect(address, identity, server=principal) as store:
        info = await store.call(InfoRequest())
        assert isinstance(info, ServerInfo)
        yield Operator(
            store, principal, info.store_id, world.domain.unlock(PASSWORD), address, identity
        )


async def audit_entries(db_url: str | Path) -> list[Any]:
    db = await Database.open(db_url)
    try:
        store = await AuditStore.open(db)
        await store.verify()
        return await store.entries()
    finally:
        await db.aclose()


def refusals(entries: list[Any]) -> list[Any]:
    return [e for e in entries if e.outcome == "refused"]


async def test_operator_requests_over_an_anonymous_channel(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            async with operator(world) as op:
                # The guard names no right for the policy key: a signed request is enough.
                assert await op.call(CreateRequest("/ops/key", type="aes256-gcm")) == Changed(
                    ObjectId("/ops/key", 1)
                )
                await op.call(CreateRequest("/ops/db", b"secret", protector="/ops/key"))
                assert (await op.call(ReadRequest("/ops/db"))).value == b"secret"
                await op.call(WriteRequest("/ops/db", b"new"))
                assert (await op.call(RotateRequest("/ops/key"))).id.epoch == 2
                assert (await op.call(ListRequest("/ops"))) == Listing(("/ops/db", "/ops/key"))
                assert (await op.call(ReadRequest("/ops/db"))).value == b"new"
                assert await op.call(DeleteRequest("/ops/db")) == Deleted("/ops/db", (1,))
            # Programs see what the operator made.
            async with connect(world.address, await world.identity("owner")) as store:
                await store.create("/app/x", b"x")
        entries = await audit_entries(world.domain.path / "secrets.db")
    policy = str(world.domain.policy_principal)
    made = [e for e in entries if e.actor == policy and e.outcome == "ok"]
    assert {e.kind for e in made} >= {
        "secret_created",
        "secret_written",
        "secret_rotated",
        "secret_deleted",
        "secret_released",
    }


async def test_an_anonymous_channel_without_a_credential_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            async with connect(world.address, await world.identity("owner")) as store:
                await store.create("/app/x", b"secret")
            async with operator(world) as op:
                for request in (
                    ReadRequest("/app/x"),
                    ListRequest("/"),
                    WriteRequest("/app/x", b"mine"),
                    CreateRequest("/app/y", b"y"),
                    DeleteRequest("/app/x"),
                ):
                    with pytest.raises(UnauthorizedError):
                        await op.once(request)
                # An anonymous client with a garbage credential: refused as well.
                with pytest.raises(UnauthorizedError, match="operator credential"):
                    await op.once(ReadRequest("/app/x", operator=b"\0" * 64))
            async with connect(world.address, await world.identity("owner")) as store:
                assert (await store.read("/app/x")).value == b"secret"
        entries = await audit_entries(world.domain.path / "secrets.db")
    assert len([e for e in refusals(entries) if e.actor == "anonymous"]) >= 6


async def test_attacks_on_credentials_are_refused_and_audited(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            operator(world) as op,
        ):
            await op.call(CreateRequest("/ops/x", b"secret"))
            read = ReadRequest("/ops/x")

            # Replayed: the same bytes, twice.
            once = op.sign(read)
            assert _value(await op.store.call(once)) == b"secret"
            with pytest.raises(UnauthorizedError, match="used already"):
                await op.once(once)

            # Forged: another key signs.
            other = Signer.generate()
            forged = sign_operator_request(
                read, other, server=op.server, store=op.store_id, now_ns=time.time_ns()
            )
            with pytest.raises(UnauthorizedError, match="another key"):
                await op.once(forged)

            # A field edited after signing: a Read made into a Write.
            signed_write = op.sign(WriteRequest("/ops/x", b"operator's"))
            with pytest.raises(UnauthorizedError, match="does not cover"):
                await op.once(attrs.evolve(signed_write, value=b"attacker's"))

            # Stale and future windows.
            stale = op.sign(read, now_ns=time.time_ns() - 120 * 10**9)
            with pytest.raises(UnauthorizedError, match="expired"):
                await op.once(stale)
            future = op.sign(read, now_ns=time.time_ns() + 120 * 10**9)
            with pytest.raises(UnauthorizedError, match="not valid yet"):
                await op.once(future)

            # A credential for another server.
            elsewhere = auth.key_principal(Signer.generate().public_key_der())
            with pytest.raises(UnauthorizedError, match="another server"):
                await op.once(op.sign(read, server=elsewhere))
            # A credential for another store of this server's principal.
            with pytest.raises(UnauthorizedError, match="another store"):
                await op.once(op.sign(read, store=bytes(16)))

            assert (await op.call(read)).value == b"secret"  # the value was never changed
        entries = await audit_entries(world.domain.path / "secrets.db")
    reasons = [e.details.get("reason", "") + e.details.get("why", "") for e in refusals(entries)]
    text = " ".join(reasons) + " ".join(str(e.details) for e in refusals(entries))
    whys = ("used already", "another key", "does not cover", "expired", "not valid yet")
    for why in (*whys, "another server", "another store"):
        assert why in text, why


async def test_a_replay_on_another_replica_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    with trio.fail_after(90):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
        ) as world:
            second = await world.start_server("replica", db_url=postgres_url)
            other_address = ("127.0.0.1", second.port)
            async with operator(world) as one, operator(world, other_address) as two:
                # Same program on the same host: one principal, so only the nonce tells.
                assert one.server == two.server
                await one.call(CreateRequest("/ops/x", b"secret"))
                once = one.sign(ReadRequest("/ops/x"))
                assert _value(await one.store.call(once)) == b"secret"
                with pytest.raises(UnauthorizedError, match="used already"):
                    await two.once(once)
                # And the other way round, at the same moment on both.
                twice = two.sign(ReadRequest("/ops/x"))
                outcomes: list[str] = []

                async def send(store: SecretStore) -> None:
                    try:
                        await store.call(twice)
                        outcomes.append("read")
                    except UnauthorizedError:
                        outcomes.append("refused")

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send, one.store)
                    nursery.start_soon(send, two.store)
                assert sorted(outcomes) == ["read", "refused"]


async def test_the_cli(tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost) -> None:
    password_file = tmp_path / "pw"
    password_file.write_bytes(PASSWORD + b"\n")

    async def taonet(*argv: str, check: int = 0) -> str:
        env = dict(os.environ)
        env.pop("TAO_DOMAIN", None)
        done = await trio.run_process(
            [sys.executable, "-m", "taonet", "secret", *argv, *common],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        assert done.returncode == check, (argv, done.stderr.decode())
        if check:
            err = done.stderr.decode()
            assert err.startswith("taonet: error: "), err
            assert err.count("\n") == 1, err
            return err
        return str(done.stdout.decode())

    with trio.fail_after(120):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            common = [
                "--domain",
                str(world.domain.path),
                "--server",
                f"127.0.0.1:{world.running.port if world.running else 0}",
                "--password-file",
                str(password_file),
            ]
            assert "created /app/k epoch 1" in await taonet("create", "/app/k")
            await taonet("create", "/app/db", "--value", "hunter2", "--protector", "/app/k")
            import json

            doc = json.loads(await taonet("read", "/app/db", "-o", "json"))
            assert bytes.fromhex(doc["value_hex"]) == b"hunter2"
            assert doc["epoch"] == 1
            assert "rotated to /app/k epoch 2" in await taonet("rotate", "/app/k")
            assert json.loads(await taonet("list", "/app", "-o", "json"))["names"] == [
                "/app/db",
                "/app/k",
            ]
            await taonet("write", "/app/db", "--value-hex", "00ff")
            assert json.loads(await taonet("read", "/app/db", "-o", "json"))["value_hex"] == "00ff"
            await taonet("read", "/nothing", check=3)
            await taonet("delete", "/app/db")
            await taonet("read", "/app/db", check=3)
            # Grants: the stranger program may read /app/k once granted, not after.
            stranger = str(auth.PrinTail(program_subprin(measure_file(world.files["stranger"]))))
            granted = json.loads(
                await taonet("grant", stranger, "--ops", "Read", "--name", "/app", "-o", "json")
            )
            assert granted == {
                "principal": stranger,
                "ops": ["Read"],
                "name": "/app",
                "revoked": False,
            }
            async with connect(world.address, await world.identity("stranger")) as store:
                assert (await store.read("/app/k")).id.epoch == 2
                assert "revoked Read on /app" in await taonet(
                    "grant", stranger, "--ops", "Read", "--name", "/app", "--revoke"
                )
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/k")
            await taonet("grant", stranger, "--ops", "Execute", "--name", "/app", check=2)
            # A wrong password: refused before anything is sent.
            password_file.write_bytes(b"wrong\n")
            assert "password" in await taonet("read", "/app/k", check=4)
        # Nobody listening: unavailable.
        password_file.write_bytes(PASSWORD + b"\n")
        await taonet("read", "/app/k", check=5)
