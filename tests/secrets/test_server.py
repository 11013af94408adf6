"""The secret server in process, over real Tao channels on 127.0.0.1, on SQLite.

Each test starts a domain with its ACL guard, a domain service, a soft host, the
secret server (provisioned like any program) and client programs named by the hash
of their code, and speaks to the server as those programs (or as an attacker does,
with raw bytes on a channel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import CodecError, ProtocolError, auth
from taonet.channel import ChannelIdentity, open_channel
from taonet.protected import KEY_TYPE, ObjectId, Status
from taonet.secrets import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ReadRequest,
    UnauthorizedError,
    WriteRequest,
    connect,
    encode_request,
)
from taonet.wire import Envelope, Response, Role
from taonet_services.secret_server import covering_names
from taonet_services.storage import AuditStore, Database
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

ALL = ("Read", "Write", "Create", "Delete", "Own")
OWNER = [("owner", op, "/app") for op in ALL]


async def audit_entries(world: World) -> list[Any]:
    with trio.fail_after(30):
        db = await Database.open(world.domain.path / "secrets.db")
        try:
            store = await AuditStore.open(db)
            await store.verify()  # the chain is whole
            return await store.entries()
        finally:
            await db.aclose()


async def test_create_read_write_rotate_delete(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            assert await store.create("/app/db", b"one") == ObjectId("/app/db", 1)
            with pytest.raises(ConflictError):
                await store.create("/app/db", b"again")
            assert (await store.read("/app/db")).value == b"one"
            assert await store.write("/app/db", b"two") == ObjectId("/app/db", 1)
            assert await store.rotate("/app/db", b"three") == ObjectId("/app/db", 2)
            latest = await store.read("/app/db")
            assert (latest.id.epoch, latest.value, latest.status) == (
                2,
                b"three",
                Status.ACTIVE,
            )
            old = await store.read("/app/db", 1)
            assert (old.value, old.status) == (b"two", Status.RETIRED)
            with pytest.raises(InvalidRequestError):
                await store.rotate("/app/db")  # not a key: a new value is needed
            assert await store.delete("/app/db", 1) == (1,)
            with pytest.raises(NotFoundError):
                await store.read("/app/db", 1)
            assert await store.delete("/app/db") == (2,)
            with pytest.raises(NotFoundError):
                await store.read("/app/db")
            with pytest.raises(NotFoundError):
                await store.write("/app/nothing", b"x")
            key = await store.read(str((await store.create("/app/k")).name))
            assert key.type == KEY_TYPE
            assert len(key.value) == 32


async def test_rotating_a_key_rewraps_what_it_protects(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            await store.create("/app/k")
            await store.create("/app/k2", protector="/app/k")  # a key under the key
            for i in range(30):
                await store.create(f"/app/f/{i}", b"v%d" % i, protector="/app/k2")
            old = await store.read("/app/k2")
            assert await store.rotate("/app/k2") == ObjectId("/app/k2", 2)
            assert await store.rotate("/app/k") == ObjectId("/app/k", 2)
            for i in range(30):
                assert (await store.read(f"/app/f/{i}")).value == b"v%d" % i
            retired = await store.read("/app/k2", 1)
            assert retired.value == old.value
            assert retired.status is Status.RETIRED
            assert (await store.read("/app/k2")).value != old.value
            with pytest.raises(ConflictError, match="rotate"):
                await store.write("/app/k2", bytes(32))  # it protects others
            with pytest.raises(ConflictError):
                await store.delete("/app/k2")
    with trio.fail_after(30):
        db = await Database.open(world.domain.path / "secrets.db")
        try:
            rows = await db.transaction(
                lambda cur: cur.execute(
                    "SELECT DISTINCT protector_name, protector_epoch FROM secret_objects"
                    " WHERE name LIKE '/app/f/%'"
                ).fetchall(),
                write=False,
            )
        finally:
            await db.aclose()
    assert rows == [("/app/k2", 2)]  # every child under the new epoch, none left behind


async def test_many_calls_at_once_on_one_channel(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            for i in range(20):
                await store.create(f"/app/{i}", b"%d" % i)
            channel = store._channel
            results: dict[int, bytes] = {}

            async def read(i: int) -> None:
                results[i] = (await store.read(f"/app/{i % 20}")).value

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(read, i)
            assert results == {i: b"%d" % (i % 20) for i in range(200)}
            assert store._channel is channel  # all on the one channel
    released = [e for e in await audit_entries(world) if e.kind == "secret_released"]
    assert len(released) == 200


def test_covering_names() -> None:
    assert covering_names("/a/b/c") == ["/a/b/c", "/a/b", "/a", "/"]
    assert covering_names("/a") == ["/a", "/"]
    assert "/a" not in covering_names("/ab")


async def test_the_guard_decides_by_name_and_prefix(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    grants = [
        *OWNER,
        ("owner", "Create", "/apple"),
        ("reader", "Read", "/app"),
        ("writer", "Write", "/app/w"),
    ]
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=grants) as world:
            async with connect(world.address, await world.identity("owner")) as store:
                for name in ("/app/a", "/app/w/b", "/apple"):
                    await store.create(name, b"s")
            async with connect(world.address, await world.identity("reader")) as store:
                assert (await store.read("/app/a")).value == b"s"
                assert (await store.read("/app/w/b")).value == b"s"
                with pytest.raises(UnauthorizedError):
                    await store.read("/apple")  # "/app" does not cover "/apple"
                with pytest.raises(UnauthorizedError):
                    await store.write("/app/a", b"x")  # Read is not Write
                assert await store.list("/") == ["/app/a", "/app/w/b"]
                with pytest.raises(UnauthorizedError):  # prefixes are whole segments:
                    await store.list("/ap")  # no right reaches under "/ap"
            async with connect(world.address, await world.identity("writer")) as store:
                assert await store.write("/app/w/b", b"new") == ObjectId("/app/w/b", 1)
                with pytest.raises(UnauthorizedError):
                    await store.rotate("/app/w/b", b"newer")  # rotation needs Own
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/w/b")
                with pytest.raises(UnauthorizedError):  # no Read anywhere: no scan
                    await store.list("/")
            stranger = await world.identity("stranger")
            async with connect(world.address, stranger) as store:
                for attempt in (
                    store.read("/app/a"),
                    store.create("/app/evil", b"x"),
                    store.delete("/app/a"),
                ):
                    with pytest.raises(UnauthorizedError):
                        await attempt
    entries = await audit_entries(world)
    refused = [e for e in entries if e.kind == "secret_refused"]
    stranger_name = str(stranger.certificate.principal)  # type: ignore[union-attr]
    assert [(e.actor, e.subject, e.details["op"]) for e in refused][-3:] == [
        (stranger_name, "/app/a", "Read"),
        (stranger_name, "/app/evil", "Create"),
        (stranger_name, "/app/a", "Delete"),
    ]
    assert all(e.outcome == "refused" for e in refused)
    assert refused[-1].details["reason"] == "the guard does not give Delete on /app/a"
    assert len(refused) == 9  # 7 and the two Lists that no right reached


async def test_list_pages(tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            names = sorted(f"/app/n{i:03d}" for i in range(130))
            for name in names:
                await store.create(name, b"")
            page = await store.list_page("/app", limit=100)
            assert list(page.names) == names[:100]
            assert page.next_after == names[99]
            page = await store.list_page("/app", after=page.next_after, limit=100)
            assert list(page.names) == names[100:]
            assert page.next_after is None
            assert await store.list("/app/") == names


async def raw_channel(world: World, who: str = "owner") -> Any:
    return await open_channel(*world.address, await world.identity(who))


async def test_bad_bytes_cost_one_connection_only(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            await store.create("/app/x", b"kept")
            # A body that does not decode: a typed 'invalid' answer; the channel lives on.
            stream = await raw_channel(world)
            client = Envelope(Role.CLIENT, body_limit=1 << 20)
            await stream.send_all(b"".join(client.request("SecretService.Read", 1, b"\xff")))
            answer = await _answer(stream, client)
            method, body = encode_request(ReadRequest("/app/x"))
            await stream.send_all(b"".join(client.request(method, 2, body)))
            assert (await _answer(stream, client)).error is None
            assert answer.error is None  # an answer body with the code
            from taonet.secrets import decode_response

            failure = decode_response("SecretService.Read", answer.body)
            assert getattr(failure, "code", None) is not None
            assert failure.code.value == "invalid"  # type: ignore[union-attr]
            # A body over its method's limit (a 1 MiB value where a Read is a few
            # kB): refused on the length announced, the connection closed.
            method, body = encode_request(WriteRequest("/app/x", b"x" * (1 << 20)))
            head, _rest = client.request("SecretService.Read", 3, body)
            await stream.send_all(head)  # the header and the body's length only
            with pytest.raises(CodecError):
                await _answer(stream, client, raise_error=True)
            assert await closed(stream)
            # Garbage before any header: dropped without an answer.
            stream = await raw_channel(world)
            await stream.send_all(b"\xff\xff\xff\xff" + b"x" * 100)
            assert await closed(stream)
            # Everyone else is still served, on the channel they had.
            assert (await store.read("/app/x")).value == b"kept"


async def closed(stream: Any) -> bool:
    """Whether the server closed the channel (cleanly or not); closes our end."""
    try:
        data = await stream.receive_some(100)
    except trio.BrokenResourceError:
        data = b""
    await stream.aclose()
    return bool(data == b"")


async def _answer(stream: Any, client: Envelope, *, raise_error: bool = False) -> Any:
    from taonet.wire import NEED_DATA

    while (event := client.next_event()) is NEED_DATA:
        client.receive_data(await stream.receive_some(65536))
    assert isinstance(event, Response)
    if raise_error and event.error is not None:
        raise event.error
    return event


async def test_operator_credentials_and_change_hook(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    changes: list[tuple[ObjectId, str]] = []
    seen: list[Any] = []
    policy: list[auth.Prin] = []

    async def authenticate(request: Any) -> auth.Prin:
        seen.append(request)
        if request.operator != b"good":
            from taonet import AuthenticationError

            raise AuthenticationError("bad signature")
        return policy[0]

    with trio.fail_after(60):
        async with secret_world(
            tmp_path,
            make_domain,
            make_host,
            grants=OWNER,
            on_change=lambda oid, kind: changes.append((oid, kind)),
            authenticate_operator=authenticate,
        ) as world:
            policy.append(world.domain.policy_principal)
            async with connect(world.address, await world.identity("stranger")) as store:
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/x")
                with pytest.raises(UnauthorizedError, match="bad signature"):
                    await store.call(ReadRequest("/app/x", operator=b"forged"))
                # The hook vouches for the policy key, which the guard does not name:
                # still refused (the guard decides for whoever the hook says).
                with pytest.raises(UnauthorizedError):
                    await store.call(ReadRequest("/app/x", operator=b"good"))
            # An operator's tool without a program certificate: only with a credential.
            anonymous = ChannelIdentity.anonymous(world.domain.policy_cert)
            async with connect(world.address, anonymous) as store:
                with pytest.raises(UnauthorizedError, match="operator credential"):
                    await store.read("/app/x")
            # (a refused anonymous channel is closed: the next request on a new one)
            async with connect(world.address, anonymous) as store:
                with pytest.raises(UnauthorizedError, match="does not give"):
                    await store.call(ReadRequest("/app/x", operator=b"good"))
            async with connect(world.address, await world.identity("owner")) as store:
                await store.create("/app/x", b"1")
                await store.write("/app/x", b"2")
                await store.rotate("/app/x", b"3")
                await store.delete("/app/x")
    assert [r.operator for r in seen] == [b"forged", b"good", b"good"]
    refused = [e for e in await audit_entries(world) if e.kind == "secret_refused"]
    assert [e.actor for e in refused].count("anonymous") == 1
    assert changes == [
        (ObjectId("/app/x", 1), "created"),
        (ObjectId("/app/x", 1), "written"),
        (ObjectId("/app/x", 2), "rotated"),
        (ObjectId("/app/x", 2), "deleted"),
    ]


async def test_reserved_names_and_a_server_without_the_name(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    grants = [("owner", op, "/") for op in ALL]
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=grants) as world:
            async with connect(world.address, await world.identity("owner")) as store:
                with pytest.raises(InvalidRequestError):
                    await store.create("/taonet.secret-server/master", bytes(32), type=KEY_TYPE)
                # Never released to a client: reserved (invalid), or refused by the
                # replica transfer hook when the server has one.
                with pytest.raises((InvalidRequestError, UnauthorizedError)):
                    await store.read("/taonet.secret-server/master")
            # A client that expects another server principal is not fooled.
            from taonet import AuthenticationError

            with pytest.raises(AuthenticationError):
                async with connect(
                    world.address,
                    await world.identity("owner"),
                    server=world.domain.policy_principal,
                ):
                    pass
            with pytest.raises(ProtocolError):
                async with connect(("127.0.0.1", 1), await world.identity("owner")):
                    pass


async def test_list_never_names_what_the_caller_may_not_read(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller with Read on a few names only pages through a prefix full of names it
    may not read: no answer (names or next_after) names one of those."""
    import taonet_services.secret_server._service as service

    monkeypatch.setattr(service, "MAX_LIST_SCAN", 10)
    grants = [*OWNER, ("reader", "Read", "/app/a1"), ("reader", "Read", "/app/a2")]
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=grants) as world:
            async with connect(world.address, await world.identity("owner")) as store:
                for name in ("/app/a1", "/app/a2", *(f"/app/h{i:02d}" for i in range(25))):
                    await store.create(name, b"s")
                # The owner (Read on /app) pages through everything, past the scan bound.
                assert len(await store.list("/app")) == 27
            async with connect(world.address, await world.identity("reader")) as store:
                seen: set[str] = set()
                page = await store.list_page("/app", limit=1)
                seen.update(page.names, [page.next_after or "/app/a1"])
                assert list(page.names) == ["/app/a1"]
                page = await store.list_page("/app", after=page.next_after, limit=5)
                seen.update(page.names, [page.next_after or "/app/a2"])
                assert list(page.names) == ["/app/a2"]
                with pytest.raises(InvalidRequestError, match="narrower prefix"):
                    await store.list_page("/app", after=page.next_after, limit=5)
                assert seen <= {"/app/a1", "/app/a2"}


async def test_hooks_for_extensions(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """``change_in`` runs inside the change's transaction (a hook that fails rolls the
    change back, and the server answers ``internal`` and keeps the channel);
    ``also_authorized`` is asked when the guard says no; ``release_master`` answers
    a Read of the master key's name, which is otherwise reserved."""
    from taonet.secrets import Failure, InternalError, NotFoundError
    from taonet_services.secret_server import MASTER_ID

    recorded: list[tuple[ObjectId, str]] = []

    def change_in(cur: Any, oid: ObjectId, kind: str) -> None:
        cur.execute("SELECT COUNT(*) FROM secret_names")  # a cursor of the transaction
        if oid.name == "/app/fails":
            raise RuntimeError("the hook failed")
        recorded.append((oid, kind))

    async def release_master(call: Any, request: Any) -> Any:
        return Failure("not_here", f"asked by {call.principal}")

    with trio.fail_after(60):
        async with secret_world(
            tmp_path,
            make_domain,
            make_host,
            grants=OWNER,
            change_in=change_in,
            also_authorized=lambda p, op, name: op == "Read" and name == "/app/granted",
            release_master=release_master,
        ) as world:
            async with connect(world.address, await world.identity("owner")) as store:
                await store.create("/app/granted", b"g")
                with pytest.raises(InternalError):
                    await store.create("/app/fails", b"f")
                with pytest.raises(NotFoundError):
                    await store.read("/app/fails")  # rolled back with the hook
                assert (await store.read("/app/granted")).value == b"g"  # same channel
            async with connect(world.address, await world.identity("stranger")) as store:
                assert (await store.read("/app/granted")).value == b"g"
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/fails")
                from taonet.secrets import SecretServiceError

                with pytest.raises(SecretServiceError, match="asked by") as info:
                    await store.read(MASTER_ID.name)
                assert info.value.code == "not_here"
    assert recorded == [(ObjectId("/app/granted", 1), "created")]
