"""The domain service over real Tao channels on 127.0.0.1."""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from taonet import AuthorizationError, CodecError, ConfigError, auth, certs
from taonet.attestation import Attestation
from taonet.channel import ChannelIdentity, open_channel
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain
from taonet.hosts import SoftHost
from taonet.provision import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_INVALID_ATTESTATION,
    OP_CERTIFY,
    DomainServiceError,
    fetch_crl,
    request_certificate,
)
from taonet.wire import (
    NEED_DATA,
    Envelope,
    Response,
    Role,
    encode_frame,
    message_class,
    serialize,
)
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from taonet_services.domain_service._audit import IssuedCertificate
from taonet_services.domain_service._service import _IssuedBatcher
from tests.channel.test_stream import wait_closed_by_peer
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.services.flood import exchange

GOOD = b"\x61" * 32
BAD = b"\x62" * 32


class Service:
    def __init__(self, domain: Domain, host: SoftHost, service: DomainService, port: int) -> None:
        self.domain, self.host, self.service, self.port = domain, host, service, port

    def name(self, program_hash: bytes) -> auth.Prin:
        name = self.domain.program_name(program_hash, host=self.host.name)
        assert isinstance(name, auth.Prin)
        return name

    async def request(self, program_hash: bytes = GOOD) -> tuple[bytes, Signer]:
        name = self.name(program_hash)
        key = Signer.generate()
        att = await self.host.tao_for(name).attest(
            auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
        )
        return att.to_bytes(), key

    async def certify(self, att: bytes, key: Signer) -> certs.ProgramCertificate:
        """Ask the service to certify ``key`` as the program ``att`` says it speaks for."""
        return await request_certificate(
            "127.0.0.1",
            self.port,
            self.domain.policy_cert,
            Attestation.from_bytes(att),
            key.public_key_der(),
        )

    def audit(self) -> AuditLog:
        return AuditLog.open(self.domain.path / AUDIT_FILE)


@pytest.fixture
async def svc(make_domain: MakeDomain, make_host: MakeHost) -> AsyncIterator[Service]:
    domain = make_domain(name="svc-test")
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD))
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield Service(domain, host, service, listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()


async def test_issues_certificates_and_audits_them(svc: Service) -> None:
    att, key = await svc.request()
    with trio.fail_after(10):
        program = await svc.certify(att, key)
    assert program.principal == svc.name(GOOD)
    with svc.audit() as audit:
        event = audit.issued(program.serial)
        assert event is not None
        assert event.principal == str(svc.name(GOOD))
    assert svc.service.principal.is_sub_principal_of(svc.domain.policy_principal)


async def test_refusals_are_typed_and_audited(svc: Service) -> None:
    with trio.fail_after(10):
        att, key = await svc.request(BAD)
        with pytest.raises(AuthorizationError, match="unauthorized"):
            await svc.certify(att, key)
        att, _ = await svc.request()
        thief = Signer.generate()
        with pytest.raises(DomainServiceError) as info:
            await svc.certify(att, thief)
        assert info.value.code == ERROR_INVALID_ATTESTATION
        assert "presented key" in info.value.reason
    with svc.audit() as audit:
        codes = [e.reason_code for e in audit.events() if e.kind == "refused"]
    assert codes == ["unauthorized", ERROR_INVALID_ATTESTATION]


async def raw_request(svc: Service, payload: bytes, op: str = OP_CERTIFY) -> str:
    """Send ``payload`` as the body of ``op``; what came back (see ``flood.exchange``)."""
    identity = ChannelIdentity.anonymous(svc.domain.policy_cert)
    stream = await open_channel("127.0.0.1", svc.port, identity)
    async with stream:
        envelope = Envelope(Role.CLIENT, body_limit=1 << 20)
        try:
            return await exchange(stream, envelope, op, payload)
        except (trio.EndOfChannel, trio.BrokenResourceError):
            return "closed"


async def test_garbage_and_oversized_requests(svc: Service) -> None:
    with trio.fail_after(15):
        # A body that does not decode, an unknown method: envelope errors of their kind.
        assert await raw_request(svc, b"\xff\xff\xff garbage") == "CodecError"
        assert await raw_request(svc, b"", op="DomainService.Nope") == "ProtocolError"
        # A well-formed but incomplete request: a typed refusal in the body.
        incomplete = message_class("DomainServiceRequest")(kind="certify").SerializeToString()
        assert await raw_request(svc, incomplete) == ERROR_BAD_REQUEST
        identity = ChannelIdentity.anonymous(svc.domain.policy_cert)
        # A header frame announcing 100 MiB: refused on its length, then dropped.
        stream = await open_channel("127.0.0.1", svc.port, identity)
        await stream.send_all(struct.pack(">I", 100 * 1024 * 1024))
        await wait_closed_by_peer(stream)  # bounded by fail_after
        await stream.aclose()
        # A good header, then a body announcing 100 MiB that never comes: the service
        # refuses on the announced length without waiting for the body.
        stream = await open_channel("127.0.0.1", svc.port, identity)
        async with stream:
            header = serialize(message_class("RPCHeader")(op=OP_CERTIFY, seq=7))
            await stream.send_all(
                encode_frame(header) + struct.pack(">I", 100 * 1024 * 1024) + b"x" * 100
            )
            envelope = Envelope(Role.CLIENT, body_limit=1 << 20)
            envelope.request(OP_CERTIFY, 7, b"")  # await call 7, whose header went out above
            while (event := envelope.next_event()) is NEED_DATA:
                envelope.receive_data(await stream.receive_some())
            assert isinstance(event, Response)
            assert (event.op, event.seq) == (OP_CERTIFY, 7)  # the answer names the call
            assert isinstance(event.error, CodecError)
            assert str(100 * 1024 * 1024) in str(event.error)
        with svc.audit() as audit:
            codes = [e.reason_code for e in audit.events() if e.kind == "refused"]
        assert codes == [ERROR_BAD_REQUEST] * 5
        # The service still serves good clients.
        att, key = await svc.request()
        program = await svc.certify(att, key)
        assert program.principal == svc.name(GOOD)


async def test_crl_lists_revocations(svc: Service) -> None:
    with trio.fail_after(10):
        att, key = await svc.request()
        program = await svc.certify(att, key)
        assert program.serial not in await fetch_crl("127.0.0.1", svc.port, svc.domain.policy_cert)
        with svc.audit() as audit:
            assert audit.revoke(program.serial, reason="key compromise")
        crl = await fetch_crl("127.0.0.1", svc.port, svc.domain.policy_cert)
        assert program.serial in crl
        assert isinstance(crl, certs.RevocationList)


async def test_wrong_password_is_refused(svc: Service, tmp_path: Path) -> None:
    from taonet import ConfigError

    with pytest.raises(ConfigError):
        DomainService.open(svc.domain.path, b"wrong")


async def test_concurrent_issuances_share_one_commit(svc: Service) -> None:
    """Certificates issued while a commit is under way go into the next one, and
    none is answered before its own row is committed: the first commit is held (in
    its thread) until all twelve requests are waiting, then the other eleven share
    the second commit; no certificate of a commit has left when it is written."""
    log = svc.service._audit
    arrived = 0
    all_arrived = threading.Event()
    batches: list[int] = []
    answered: list[int] = []
    record, write = svc.service._issued.record, log.record_issued_many

    async def counting(certificate: IssuedCertificate) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 12:
            all_arrived.set()
        await record(certificate)

    def held(certificates: Sequence[IssuedCertificate]) -> list[int | ConfigError]:
        assert all_arrived.wait(20), "the other requests never came"
        early = {c.serial for c in certificates} & set(answered)
        assert not early, "a certificate left before its row was committed"
        batches.append(len(certificates))
        return write(certificates)

    requests = [await svc.request() for _ in range(12)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(svc.service._issued, "record", counting)
        patch.setattr(log, "record_issued_many", held)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for att, key in requests:

                    async def one(att: bytes = att, key: Signer = key) -> None:
                        answered.append((await svc.certify(att, key)).serial)

                    nursery.start_soon(one)
    assert batches == [1, 11]
    with svc.audit() as audit:
        assert all(audit.issued(serial) is not None for serial in answered)
        assert len(audit.events()) == 12


async def test_a_failed_shared_commit_issues_nothing(svc: Service) -> None:
    """An audit log that cannot be written (the disk full, read-only) fails every
    request of the batch: each hears internal_error, and no certificate leaves."""

    def full(certificates: Sequence[IssuedCertificate]) -> list[int | ConfigError]:
        raise ConfigError("audit log: cannot record: database or disk is full")

    requests = [await svc.request() for _ in range(4)]
    codes: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(svc.service._audit, "record_issued_many", full)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for att, key in requests:

                    async def one(att: bytes = att, key: Signer = key) -> None:
                        with pytest.raises(DomainServiceError) as refused:
                            await svc.certify(att, key)
                        codes.append(refused.value.code)

                    nursery.start_soon(one)
    assert codes == [ERROR_INTERNAL] * 4
    with svc.audit() as audit:
        assert audit.events() == []


async def test_a_request_cancelled_before_its_commit_is_not_recorded(svc: Service) -> None:
    """A request given up (its client gone, the service stopping) while its row waits
    for the commit under way is taken out of the batch: a certificate the service
    never returned is not recorded as issued (and one it returns always is)."""
    batcher = _IssuedBatcher(svc.service._audit)
    release = threading.Event()
    write = svc.service._audit.record_issued_many

    def held(certificates: Sequence[IssuedCertificate]) -> list[int | ConfigError]:
        assert release.wait(20)
        return write(certificates)

    def certificate(serial: int) -> IssuedCertificate:
        return IssuedCertificate(
            serial=serial,
            principal="key(p)",
            key_hash_hex="ab" * 32,
            not_before_ns=1,
            not_after_ns=2,
            peer="127.0.0.1:1",
            attestation_sha256_hex="cd" * 32,
        )

    with pytest.MonkeyPatch.context() as patch, trio.fail_after(30):
        patch.setattr(svc.service._audit, "record_issued_many", held)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.record, certificate(1))
            await trio.testing.wait_all_tasks_blocked()
            assert batcher._writing
            given_up = trio.CancelScope()

            async def cancelled() -> None:
                with given_up:
                    await batcher.record(certificate(2))

            nursery.start_soon(batcher.record, certificate(3))
            nursery.start_soon(cancelled)
            await trio.testing.wait_all_tasks_blocked()
            assert len(batcher._pending) == 2
            given_up.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert [p.certificate.serial for p in batcher._pending] == [3]
            release.set()
    with svc.audit() as audit:
        assert [e.serial for e in audit.events()] == [1, 3]
