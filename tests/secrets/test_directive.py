"""The secret server releases a key on a disclosure directive, and only as it grants.

A real domain service, secret server and programs on 127.0.0.1 (``world``). The
reader has no right on ``/app`` by the guard: only a directive lets it read, on its
own channel, the one epoch named, from the policy key or a program that holds Own.
Each attack is presented as an attacker would: someone else's directive over its own
channel, another epoch, no epoch, an expired one, one from a program without Own, one
replayed after its signer was revoked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import CodecError, TaoError, auth
from taonet.channel import ChannelIdentity
from taonet.crypto import Signer
from taonet.disclosure import DirectiveOp, decode_directive, sign_directive
from taonet.protected import ObjectId
from taonet.secrets import (
    GrantRequest,
    Op,
    ReadRequest,
    UnauthorizedError,
    connect,
    decode_request,
    encode_request,
    request_body_limit,
)
from taonet.secrets._protocol import MAX_DIRECTIVE_FIELD
from taonet.secrets._schema import message_class, serialize
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.disclosure.test_peer_review import high_s
from tests.secrets.test_grant import tail
from tests.secrets.test_operator_server import audit_entries, operator
from tests.secrets.world import World, secret_world
from tests.services.test_crl_watch import until
from tests.services.test_revocation_hardening import revoke

HOUR = 3600 * 10**9
OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
GRANTS = [*OWNER, ("writer", "Write", "/app")]
KEY = "/app/content-key"


def directive(
    signer: Signer,
    to: ChannelIdentity,
    oid: ObjectId,
    *,
    cert: bytes | None = None,
    not_before: int | None = None,
    not_after: int | None = None,
) -> bytes:
    assert to.principal is not None
    return sign_directive(
        signer,
        op=DirectiveOp.READ,
        delegate=to.principal,
        object_id=oid,
        not_before=not_before,
        not_after=time.time_ns() + HOUR if not_after is None else not_after,
        cert=cert,
    )


def by_program(identity: ChannelIdentity, to: ChannelIdentity, oid: ObjectId) -> bytes:
    assert identity.signer is not None
    assert identity.certificate is not None
    return directive(identity.signer, to, oid, cert=identity.certificate.der)


async def released(world: World) -> list[dict[str, str]]:
    entries = await audit_entries(world.domain.path / "secrets.db")
    return [dict(e.details) for e in entries if e.kind == "secret_released"]


async def refusals(world: World) -> list[tuple[str, str]]:
    entries = await audit_entries(world.domain.path / "secrets.db")
    return [(e.actor, e.details["reason"]) for e in entries if e.kind == "secret_refused"]


async def test_a_policy_directive_releases_one_epoch_to_its_program(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            policy = world.domain.unlock(PASSWORD)
            owner, reader = await world.identity("owner"), await world.identity("reader")
            async with connect(world.address, owner) as store:
                first = await store.create(KEY)
                value = (await store.read(KEY, first.epoch)).value
            granted = directive(policy, reader, first)
            async with connect(world.address, reader) as store:
                with pytest.raises(UnauthorizedError):  # the guard gives it nothing
                    await store.read(KEY, 1)
                got = await store.read(KEY, 1, directive=granted)
                assert got.value == value
                assert got.id == first
                # The same directive in other bytes (ECDSA's (r, n-s)): one name on record.
                assert (await store.read(KEY, 1, directive=high_s(granted))).value == value
                # A directive needs the epoch: a read of "the latest" is refused.
                with pytest.raises(UnauthorizedError, match="must name the epoch"):
                    await store.read(KEY, directive=granted)
                # Another object under the same directive: refused.
                async with connect(world.address, owner) as owning:
                    await owning.create("/app/other", b"x")
                with pytest.raises(UnauthorizedError, match="not Read on /app/other#1"):
                    await store.read("/app/other", 1, directive=granted)
                # After a rotation, epoch 2 is another object: refused.
                async with connect(world.address, owner) as owning:
                    second = await owning.rotate(KEY)
                with pytest.raises(UnauthorizedError):
                    await store.read(KEY, second.epoch, directive=granted)
            releases = await released(world)
            refused = await refusals(world)
    by_directive = [r for r in releases if "directive" in r]
    assert len(by_directive) == 2
    assert [r["directive"] for r in by_directive] == [decode_directive(granted).digest] * 2
    assert by_directive[0]["delegator"] == str(auth.key_principal(policy.public_key_der()))
    assert [actor for actor, _ in refused] == [str(reader.principal)] * 4


async def test_someone_elses_directive_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            policy = world.domain.unlock(PASSWORD)
            owner, reader = await world.identity("owner"), await world.identity("reader")
            stranger = await world.identity("stranger")
            async with connect(world.address, owner) as store:
                oid = await store.create(KEY)
            stolen = directive(policy, reader, oid)  # the reader's, copied by the stranger
            async with connect(world.address, stranger) as store:
                with pytest.raises(UnauthorizedError, match=r"not Read on .* to the caller"):
                    await store.read(KEY, oid.epoch, directive=stolen)
            releases = await released(world)
            refused = await refusals(world)
    assert not [r for r in releases if "directive" in r]
    assert [actor for actor, _ in refused] == [str(stranger.principal)]


async def test_expired_and_early_directives_are_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    now = time.time_ns()
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            policy = world.domain.unlock(PASSWORD)
            owner, reader = await world.identity("owner"), await world.identity("reader")
            async with connect(world.address, owner) as store:
                oid = await store.create(KEY)
            expired = directive(policy, reader, oid, not_before=now - 2 * HOUR, not_after=now - 1)
            early = directive(policy, reader, oid, not_before=now + HOUR, not_after=now + 2 * HOUR)
            async with connect(world.address, reader) as store:
                for bad in (expired, early):
                    with pytest.raises(UnauthorizedError, match="directive refused"):
                        await store.read(KEY, oid.epoch, directive=bad)
            assert not [r for r in await released(world) if "directive" in r]


async def test_a_program_directive_needs_own_on_the_name(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner, reader = await world.identity("owner"), await world.identity("reader")
            writer = await world.identity("writer")
            async with connect(world.address, owner) as store:
                oid = await store.create(KEY)
            async with connect(world.address, reader) as store:
                # The writer may Write /app but does not own it: its directive gives nothing.
                with pytest.raises(UnauthorizedError, match="does not hold Own"):
                    await store.read(KEY, oid.epoch, directive=by_program(writer, reader, oid))
                # The owner's does.
                got = await store.read(KEY, oid.epoch, directive=by_program(owner, reader, oid))
                assert got.id == oid
            releases = [r for r in await released(world) if "directive" in r]
    assert [r["delegator"] for r in releases] == [str(owner.principal)]


async def test_a_directive_replayed_after_its_signer_was_revoked_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner, reader = await world.identity("owner"), await world.identity("reader")
            assert world.running is not None
            assert owner.certificate is not None
            async with connect(world.address, owner) as store:
                oid = await store.create(KEY)
            signed = by_program(owner, reader, oid)
            async with connect(world.address, reader) as store:
                assert (await store.read(KEY, oid.epoch, directive=signed)).id == oid
            serial = owner.certificate.serial
            revoke(world.domain, serial)
            crl = world.running.server.revocations
            assert crl is not None
            await until(lambda: crl.is_revoked(serial))
            # The revoked owner's own channel is refused...
            with pytest.raises(TaoError):
                async with connect(world.address, owner) as store:
                    await store.read(KEY, oid.epoch)
            # ...and the directive it signed before, replayed by the reader, too.
            async with connect(world.address, reader) as store:
                with pytest.raises(UnauthorizedError, match="revoked"):
                    await store.read(KEY, oid.epoch, directive=signed)
            assert len([r for r in await released(world) if "directive" in r]) == 1


# -- the wire ----------------------------------------------------------------------------


def test_a_read_carries_its_directive_in_field_21() -> None:
    request = ReadRequest(KEY, 3, directive=b"directive bytes")
    method, body = encode_request(request)
    assert b"\xaa\x01\x0fdirective bytes" in body  # field 21, length-delimited
    assert decode_request(method, body) == request
    plain = decode_request(*encode_request(ReadRequest(KEY, 3)))
    assert isinstance(plain, ReadRequest)
    assert plain.directive is None
    assert request_body_limit(method) < 32 * 1024  # a Read stays a small request


def test_a_directive_on_another_operation_or_too_large_does_not_decode() -> None:
    msg: Any = message_class("Request")(op=Op.DELETE.number, name=KEY.encode(), directive=b"d")
    with pytest.raises(CodecError, match="only a Read"):
        decode_request(Op.DELETE.method, serialize(msg))
    big: Any = message_class("Request")(
        op=Op.READ.number, name=KEY.encode(), directive=b"d" * (MAX_DIRECTIVE_FIELD + 1)
    )
    with pytest.raises(CodecError):
        decode_request(Op.READ.method, serialize(big))
    with pytest.raises(ValueError, match="directive"):
        ReadRequest(KEY, 1, directive=b"d" * (MAX_DIRECTIVE_FIELD + 1))


async def test_own_granted_by_the_operator_lets_a_program_sign_and_an_operator_cannot_use_one(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner, reader = await world.identity("owner"), await world.identity("reader")
            writer = await world.identity("writer")
            async with connect(world.address, owner) as store:
                oid = await store.create(KEY)
            signed = by_program(writer, reader, oid)
            async with connect(world.address, reader) as store:
                with pytest.raises(UnauthorizedError, match="does not hold Own"):
                    await store.read(KEY, oid.epoch, directive=signed)
                async with operator(world) as op:
                    await op.call(GrantRequest(tail(world, "writer"), ("Own",), "/app"))
                    # The policy key's operator carries the reader's directive: refused,
                    # a directive is for the channel's peer.
                    with pytest.raises(UnauthorizedError, match="not for an operator"):
                        await op.once(op.sign(ReadRequest(KEY, oid.epoch, directive=signed)))
                # The same bytes now: the writer holds Own by a grant.
                assert (await store.read(KEY, oid.epoch, directive=signed)).id == oid
            releases = [r for r in await released(world) if "directive" in r]
    assert [r["delegator"] for r in releases] == [str(writer.principal)]
