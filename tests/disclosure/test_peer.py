"""The disclosure peer protocol over real Tao channels on 127.0.0.1.

A domain (its real policy key), a soft host, programs certified by the policy key
(version 1 serves its keys, version 2 fetches them, a stranger tries to), the
domain's CRL signed by the policy key. Each attack is made as an attacker would make
it: a directive presented over the attacker's own channel, a request that asks for
more, a replayed directive after a revocation, a peer that hangs up halfway.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio

from taonet import AuthorizationError, HostError, ProtocolError, auth, certs
from taonet.channel import ChannelIdentity, CRLSource, TaoStream, open_channel, serve_channels
from taonet.crypto import Signer
from taonet.disclosure import DirectiveOp, sign_directive
from taonet.disclosure.peer import (
    FETCH_METHOD,
    DisclosureCode,
    DisclosureRefusedError,
    FetchFailure,
    decode_fetch_request,
    decode_fetch_response,
    encode_fetch_response,
    fetch_and_seal,
    open_sealed,
    request_disclosure,
    serve_disclosure,
)
from taonet.domain import Domain
from taonet.hosts import SoftHost, Tao
from taonet.protected import KEY_TYPE, ObjectId, SecretObject, Status
from taonet.wire import NEED_DATA, Envelope, Response, Role
from taonet.wire import Request as EnvelopeRequest
from tests.conftest import PASSWORD, MakeDomain, MakeHost

HOUR = 3600 * 10**9
KEY = ObjectId("/app/content-key", 1)


def key_object(oid: ObjectId) -> SecretObject:
    return SecretObject(oid, KEY_TYPE, Status.ACTIVE, None, None, os.urandom(32))


@attrs.define
class Program:
    principal: auth.Prin
    identity: ChannelIdentity
    signer: Signer
    tao: Tao

    @property
    def cert(self) -> bytes:
        assert self.identity.certificate is not None
        return self.identity.certificate.der

    @property
    def serial(self) -> int:
        assert self.identity.certificate is not None
        return self.identity.certificate.serial


@attrs.define
class Net:
    """A domain, its CRL, a host, and the programs made on it."""

    domain: Domain
    policy: Signer
    host: SoftHost
    crl: CRLSource
    crl_number: int = 1
    revoked: set[int] = attrs.field(factory=set)

    @property
    def anchor(self) -> certs.PolicyAnchor:
        return self.crl.anchor

    def program(self, code: str) -> Program:
        """A program named by the hash of ``code``, certified by the policy key."""
        name = self.domain.program_name(code.encode().ljust(32, b".")[:32], host=self.host.name)
        assert isinstance(name, auth.Prin)
        key = Signer.generate()
        program = certs.issue_program_certificate(
            self.policy, self.anchor, key.public_key_der(), name, now_ns=time.time_ns()
        )
        identity = ChannelIdentity(self.domain.policy_cert, signer=key, certificate=program.der)
        return Program(name, identity, key, self.host.tao_for(name))

    async def revoke(self, serial: int) -> None:
        """The policy key signs a newer CRL listing ``serial``; the CRL source takes it."""
        self.revoked.add(serial)
        self.crl_number += 1
        der = certs.make_crl(
            self.policy,
            self.anchor,
            self.revoked,
            now_ns=time.time_ns(),
            crl_number=self.crl_number,
        )
        assert await self.crl.update(der)

    def directive(
        self,
        to: Program,
        oid: ObjectId = KEY,
        *,
        by: Program | None = None,
        op: DirectiveOp = DirectiveOp.READ,
        not_after: int | None = None,
        not_before: int | None = None,
        signer: Signer | None = None,
    ) -> bytes:
        """A directive for ``to``: by the policy key, or by the program ``by``."""
        now = time.time_ns()
        return sign_directive(
            signer or (by.signer if by is not None else self.policy),
            op=op,
            delegate=to.principal,
            object_id=oid,
            not_after=now + HOUR if not_after is None else not_after,
            not_before=not_before,
            cert=by.cert if by is not None else None,
        )


@pytest.fixture
async def net(make_domain: MakeDomain, make_host: MakeHost) -> Net:
    domain = make_domain()
    policy = domain.unlock(PASSWORD)
    crl = CRLSource(domain.policy_cert)
    await crl.update(certs.make_crl(policy, crl.anchor, [], now_ns=time.time_ns(), crl_number=1))
    return Net(domain, policy, make_host(domain), crl)


@attrs.define
class Served:
    address: tuple[str, int]
    keys: dict[ObjectId, SecretObject]
    audited: list[dict[str, Any]]
    #: The serving program's principal (what requesters pin with ``server=``).
    server: auth.Prin

    def kinds(self) -> list[str]:
        return [a["kind"] for a in self.audited]


async def serve(
    nursery: trio.Nursery,
    net: Net,
    v1: Program,
    keys: Sequence[ObjectId] = (KEY,),
    **options: Any,
) -> Served:
    """Version 1 serving ``keys`` (random key objects) with an audit hook."""
    objects = {oid: key_object(oid) for oid in keys}
    audited: list[dict[str, Any]] = []

    async def audit(**fields: Any) -> None:
        audited.append(fields)

    listeners = await nursery.start(
        functools.partial(
            serve_disclosure, objects, 0, v1.identity, revocations=net.crl, audit=audit, **options
        )
    )
    port = listeners[0].socket.getsockname()[1]
    return Served(("127.0.0.1", port), objects, audited, v1.principal)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- what works --------------------------------------------------------------------------


async def test_version_2_fetches_and_seals_a_key_the_policy_key_grants(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2 = net.program("simpleclient v1"), net.program("simpleclient v2")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        path = tmp_path / "keys.sealed"
        got = await fetch_and_seal(
            served.address,
            v2.identity,
            net.directive(v2),
            [KEY],
            tao=v2.tao,
            path=path,
            revocations=net.crl,
            server=v1.principal,
        )
        assert got == {KEY: served.keys[KEY]}
        assert path.stat().st_mode & 0o777 == 0o600
        assert await open_sealed(v2.tao, path) == got
        with pytest.raises(HostError):  # sealed for version 2 only
            await open_sealed(v1.tao, path)
    assert served.kinds() == ["disclosure_released"]
    details = served.audited[0]["details"]
    assert details["delegator"] == str(auth.key_principal(net.policy.public_key_der()))
    assert served.audited[0]["actor"] == str(v2.principal)


async def test_the_owner_program_may_sign_for_its_successor(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        got = await request_disclosure(
            served.address,
            v2.identity,
            net.directive(v2, by=v1),
            [KEY],
            revocations=net.crl,
            server=served.server,
        )
    assert got[KEY] == served.keys[KEY]
    assert served.audited[0]["details"]["delegator"] == str(v1.principal)


async def test_100_keys_over_one_channel(net: Net, nursery: trio.Nursery) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/key/{i}", 1 + i % 3) for i in range(100)]
    opened: list[object] = []
    with trio.fail_after(60):
        served = await serve(nursery, net, v1, ids)
        directives = [net.directive(v2, oid, by=v1) for oid in ids]
        with structlog.testing.capture_logs() as logs:
            got = await request_disclosure(
                served.address,
                v2.identity,
                directives,
                ids,
                revocations=net.crl,
                server=served.server,
            )
        opened = [e for e in logs if e["event"] == "channel_established"]
    assert got == served.keys
    assert served.kinds() == ["disclosure_released"]
    assert served.audited[0]["details"]["count"] == "100"
    assert len(opened) <= 2  # one channel: its client and server ends, if they log it


# -- what must be refused ----------------------------------------------------------------


async def refused(
    served: Served, who: Program, directives: bytes | list[bytes], ids: list[ObjectId], net: Net
) -> DisclosureRefusedError:
    released = served.kinds().count("disclosure_released")
    with pytest.raises(DisclosureRefusedError) as caught:
        await request_disclosure(
            served.address,
            who.identity,
            directives,
            ids,
            revocations=net.crl,
            server=served.server,
        )
    assert served.kinds().count("disclosure_released") == released  # nothing more went out
    assert served.kinds()[-1] == "disclosure_refused"
    return caught.value


async def test_someone_elses_directive_is_refused(net: Net, nursery: trio.Nursery) -> None:
    v1, v2, mallory = net.program("v1"), net.program("v2"), net.program("mallory")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        stolen = net.directive(v2)  # v2's directive, copied by mallory
        with structlog.testing.capture_logs() as logs:
            error = await refused(served, mallory, stolen, [KEY], net)
        assert error.code is DisclosureCode.UNAUTHORIZED
        assert str(v2.principal)[:40] in error.reason
        assert "not for this channel" in error.reason
        assert served.kinds() == ["disclosure_refused"]
        assert served.audited[0]["actor"] == str(mallory.principal)
        assert any(e["event"] == "disclosure_refused" for e in logs)
        # The same directive over v2's own channel works: the refusal was the peer's name.
        assert await request_disclosure(
            served.address, v2.identity, stolen, [KEY], revocations=net.crl, server=served.server
        ) == {KEY: served.keys[KEY]}


async def test_asking_for_more_than_granted_releases_nothing(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    other = ObjectId("/app/other-key", 1)
    out = tmp_path / "out"
    out.mkdir()
    with trio.fail_after(30):
        served = await serve(nursery, net, v1, [KEY, other])
        error = await refused(served, v2, net.directive(v2), [KEY, other], net)
        assert error.code is DisclosureCode.UNAUTHORIZED
        assert str(other) in error.reason
        # The same through fetch_and_seal: no file, no temp file.
        with pytest.raises(DisclosureRefusedError):
            await fetch_and_seal(
                served.address,
                v2.identity,
                net.directive(v2),
                [KEY, other],
                tao=v2.tao,
                path=out / "keys.sealed",
                revocations=net.crl,
                server=served.server,
            )
    assert leftovers(out) == []
    assert served.kinds() == ["disclosure_refused", "disclosure_refused"]


@pytest.mark.parametrize(
    ("case", "asked"),
    [
        ("another epoch", ObjectId(KEY.name, 2)),
        ("another object", ObjectId("/app/other-key", 1)),
    ],
)
async def test_a_directive_for_another_object_or_epoch_is_refused(
    net: Net, nursery: trio.Nursery, case: str, asked: ObjectId
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1, [KEY, asked])
        error = await refused(served, v2, net.directive(v2, KEY), [asked], net)
    assert error.code is DisclosureCode.UNAUTHORIZED, case


async def test_expired_and_not_yet_valid_directives_are_refused(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    now = time.time_ns()
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        expired = net.directive(v2, not_before=now - 2 * HOUR, not_after=now - HOUR)
        error = await refused(served, v2, expired, [KEY], net)
        assert "expire" in error.reason.lower()
        later = net.directive(v2, not_before=now + HOUR, not_after=now + 2 * HOUR)
        error = await refused(served, v2, later, [KEY], net)
        assert "valid" in error.reason.lower()
        # The server's clock decides: an hour on, today's directive has expired too.
        clocked = await serve(nursery, net, v1, clock=lambda: time.time_ns() + 2 * HOUR)
        await refused(clocked, v2, net.directive(v2), [KEY], net)


async def test_a_directive_from_a_program_that_does_not_own_the_key_is_refused(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2, other = net.program("v1"), net.program("v2"), net.program("other program")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        error = await refused(served, v2, net.directive(v2, by=other), [KEY], net)
        assert "does not own" in error.reason
        # An owns hook that says the other program owns it lets the same bytes through.
        trusting = await serve(
            nursery, net, v1, owns=lambda who, oid: who == other.principal and oid == KEY
        )
        got = await request_disclosure(
            trusting.address,
            v2.identity,
            net.directive(v2, by=other),
            [KEY],
            revocations=net.crl,
            server=v1.principal,
        )
        assert KEY in got


async def test_a_directive_from_another_domain_is_refused(
    net: Net, nursery: trio.Nursery, make_domain: MakeDomain
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    other = make_domain()
    elsewhere = other.unlock(PASSWORD)  # another domain's policy key
    # v1's own name, certified by the other domain for a key its attacker holds.
    key = Signer.generate()
    foreign = certs.issue_program_certificate(
        elsewhere, other.policy_anchor, key.public_key_der(), v1.principal, now_ns=time.time_ns()
    )
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        await refused(served, v2, net.directive(v2, signer=elsewhere), [KEY], net)
        by_foreign = sign_directive(
            key,
            op=DirectiveOp.READ,
            delegate=v2.principal,
            object_id=KEY,
            not_after=time.time_ns() + HOUR,
            cert=foreign.der,
        )
        error = await refused(served, v2, by_foreign, [KEY], net)
        assert "directive refused" in error.reason
        # v1's own certificate and key sign the same statement: released.
        assert KEY in await request_disclosure(
            served.address,
            v2.identity,
            net.directive(v2, by=v1),
            [KEY],
            revocations=net.crl,
            server=v1.principal,
        )


async def test_a_write_directive_does_not_release(net: Net, nursery: trio.Nursery) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        error = await refused(served, v2, net.directive(v2, op=DirectiveOp.WRITE), [KEY], net)
    assert "not Read" in error.reason


async def test_a_missing_key_releases_nothing(net: Net, nursery: trio.Nursery) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    absent = ObjectId("/app/absent", 1)
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        error = await refused(
            served, v2, [net.directive(v2), net.directive(v2, absent)], [KEY, absent], net
        )
    assert error.code is DisclosureCode.NOT_FOUND


async def test_a_revoked_program_and_its_directives_are_refused(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2, v3 = net.program("v1"), net.program("v2"), net.program("v3")
    owner = net.program("former owner")
    with trio.fail_after(30):
        served = await serve(
            nursery, net, v1, owns=lambda who, oid: who in (v1.principal, owner.principal)
        )
        by_owner = net.directive(v3, by=owner)
        assert KEY in await request_disclosure(
            served.address, v3.identity, by_owner, [KEY], revocations=net.crl, server=v1.principal
        )
        for_v2 = net.directive(v2)
        assert KEY in await request_disclosure(
            served.address, v2.identity, for_v2, [KEY], revocations=net.crl, server=v1.principal
        )
        await net.revoke(v2.serial)
        await net.revoke(owner.serial)
        released = served.kinds().count("disclosure_released")
        # v2 replays its directive (checking no CRL itself): its channel is refused.
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises((AuthorizationError, ProtocolError)),
        ):
            await request_disclosure(
                served.address, v2.identity, for_v2, [KEY], server=v1.principal
            )
        assert not any(e["event"] == "disclosure_released" for e in logs)
        # v3 replays the directive the now revoked owner signed: refused.
        error = await refused(served, v3, by_owner, [KEY], net)
        assert "revoked" in error.reason
        assert served.kinds().count("disclosure_released") == released


# -- a peer that hangs up halfway ----------------------------------------------------------


async def half_answer_server(
    nursery: trio.Nursery, v1: Program, keys: dict[ObjectId, SecretObject], net: Net
) -> tuple[str, int]:
    """A peer that reads a request and sends half of a real answer, then hangs up."""

    async def handler(stream: TaoStream) -> None:
        envelope = Envelope(Role.SERVER, body_limit=1 << 24)
        while (event := envelope.next_event()) is NEED_DATA:
            envelope.receive_data(await stream.receive_some(65536))
        assert isinstance(event, EnvelopeRequest)
        assert event.op == FETCH_METHOD
        request = decode_fetch_request(event.body)
        answer = b"".join(
            envelope.response(
                event.op, event.seq, encode_fetch_response([keys[i] for i in request.ids])
            )
        )
        await stream.send_all(answer[: len(answer) // 2])
        await stream.aclose()

    listeners = await nursery.start(
        functools.partial(serve_channels, handler, 0, v1.identity, revocations=net.crl)
    )
    return ("127.0.0.1", listeners[0].socket.getsockname()[1])


async def test_a_peer_that_hangs_up_halfway_leaves_nothing_written(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/key/{i}", 1) for i in range(20)]
    keys = {oid: key_object(oid) for oid in ids}
    out = tmp_path / "out"
    out.mkdir()
    with trio.fail_after(30):
        address = await half_answer_server(nursery, v1, keys, net)
        with pytest.raises(ProtocolError):
            await fetch_and_seal(
                address,
                v2.identity,
                [net.directive(v2, oid) for oid in ids],
                ids,
                tao=v2.tao,
                path=out / "keys.sealed",
                revocations=net.crl,
                server=v1.principal,
            )
        assert leftovers(out) == []
        # An earlier good file stays as it was.
        served = await serve(nursery, net, v1)
        await fetch_and_seal(
            served.address,
            v2.identity,
            net.directive(v2),
            [KEY],
            tao=v2.tao,
            path=out / "keys.sealed",
            revocations=net.crl,
            server=v1.principal,
        )
        before = (out / "keys.sealed").read_bytes()
        with pytest.raises(ProtocolError):
            await fetch_and_seal(
                address,
                v2.identity,
                [net.directive(v2, oid) for oid in ids],
                ids,
                tao=v2.tao,
                path=out / "keys.sealed",
                revocations=net.crl,
                server=v1.principal,
            )
        assert leftovers(out) == ["keys.sealed"]
        assert (out / "keys.sealed").read_bytes() == before


# -- bad bytes ----------------------------------------------------------------------------


async def raw_call(net: Net, address: tuple[str, int], method: str, body: bytes) -> Response:
    """One envelope request by hand over a real channel (what a broken client sends)."""
    who = net.program("a broken client")
    stream = await open_channel(*address, who.identity, revocations=net.crl)
    try:
        envelope = Envelope(Role.CLIENT, body_limit=1 << 24, default_error=ProtocolError)
        await stream.send_all(b"".join(envelope.request(method, 1, body)))
        while (event := envelope.next_event()) is NEED_DATA:
            envelope.receive_data(await stream.receive_some(65536))
        assert isinstance(event, Response)
        return event
    finally:
        await stream.aclose()


async def test_bad_requests_are_answered_and_the_server_keeps_serving(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        address, keys = served.address, served.keys
        garbage = await raw_call(net, address, FETCH_METHOD, os.urandom(64) + b"\xff")
        assert garbage.error is None
        answer = decode_fetch_response(garbage.body)
        assert isinstance(answer, FetchFailure)
        assert answer.code is DisclosureCode.INVALID
        unknown = await raw_call(net, address, "Disclosure.Steal", b"")
        assert isinstance(unknown.error, ProtocolError)
        got = await request_disclosure(
            address, v2.identity, net.directive(v2), [KEY], revocations=net.crl, server=v1.principal
        )
        assert got == keys


class AsyncKeys:
    """A key source that answers asynchronously (as one backed by a store would)."""

    def __init__(self, objects: dict[ObjectId, SecretObject]) -> None:
        self.objects = objects
        self.asked: list[ObjectId] = []

    async def get(self, oid: ObjectId) -> SecretObject | None:
        await trio.lowlevel.checkpoint()
        self.asked.append(oid)
        return self.objects.get(oid)


async def test_an_async_key_source_is_asked_only_once_everything_is_granted(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    other = ObjectId("/app/other-key", 1)
    keys = AsyncKeys({KEY: key_object(KEY), other: key_object(other)})
    with trio.fail_after(30):
        listeners = await nursery.start(
            functools.partial(serve_disclosure, keys, 0, v1.identity, revocations=net.crl)
        )
        address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        with pytest.raises(DisclosureRefusedError):
            await request_disclosure(
                address,
                v2.identity,
                net.directive(v2),
                [KEY, other],
                revocations=net.crl,
                server=v1.principal,
            )
        assert keys.asked == []  # refused before any key was looked up
        got = await request_disclosure(
            address, v2.identity, net.directive(v2), [KEY], revocations=net.crl, server=v1.principal
        )
    assert got == {KEY: keys.objects[KEY]}
    assert keys.asked == [KEY]
