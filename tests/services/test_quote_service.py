"""The quote service over real Tao channels on 127.0.0.1, a real domain directory and
a real swtpm: a TPM's quote key certified end to end (MakeCredential in the service,
ActivateCredential in the TPM, the certificate verified as a tpm2 host certificate),
and each check attacked with a request that is right in everything but one field."""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import AuthenticationError, CodecError, HostError, certs
from taonet.attestation import tpm2_credential as tc
from taonet.attestation.tpm2 import host_name
from taonet.channel import ChannelIdentity, open_channel
from taonet.domain import Domain
from taonet.quoteservice import (
    MAX_REQUEST,
    OP_CERTIFY_QUOTE_KEY,
    QuoteKeyReply,
    QuoteKeyRequest,
    QuoteServiceError,
    certify_quote_key,
    encode_request,
    open_certificate,
    request_quote_key_certificate,
)
from taonet.wire import NEED_DATA, Envelope, Response, Role, encode_frame
from taonet_services.domain_service import AUDIT_FILE, AuditLog
from taonet_services.quote_service import QuoteService
from tests.channel.test_stream import wait_closed_by_peer
from tests.conftest import PASSWORD, MakeDomain
from tests.tpm2_helpers import make_ca, make_ek_cert, serving_quote_service, trust_swtpm

P256_EK, RSA_EK = 0x01C0000A, 0x01C00002
PCRS = {0: bytes(32), 7: b"\x07" * 32}


class Host:
    """The TPM side: its EK, a quote key (blobs), what it sends."""

    def __init__(self, swtpm: Any, alg: str = "ecc", ek_index: int = P256_EK) -> None:
        from taonet.hosts.tpm2 import _setup

        self.setup, self.tcti, self.ek_index = _setup, swtpm.tcti, ek_index
        self.ek_cert, self.ek_public = _setup.read_ek(self.tcti, index=ek_index)
        self.priv, self.pub = _setup.create_quote_key(self.tcti, alg)  # type: ignore[arg-type]
        self.area = tc.parse_public(tc.tpmt_public_from_tpm2b(self.pub))
        self.key_der = self.area.public_key_der()

    def request(self, **changes: Any) -> QuoteKeyRequest:
        fields: dict[str, Any] = {
            "ek_certificate": self.ek_cert,
            "ek_public": self.ek_public,
            "quote_key_public": self.area.raw,
            "host_name": host_name(self.key_der, PCRS),
        }
        fields.update(changes)
        return QuoteKeyRequest(**fields)

    def activate(self, reply: QuoteKeyReply, ek_index: int | None = None) -> bytes:
        return self.setup.activate_credential(
            self.tcti,
            self.priv,
            self.pub,
            reply.credential_blob,
            reply.encrypted_secret,
            ek_index=ek_index or self.ek_index,
        )


class Service:
    def __init__(self, domain: Domain, service: QuoteService, port: int) -> None:
        self.domain, self.service, self.port = domain, service, port

    async def ask(self, request: QuoteKeyRequest) -> QuoteKeyReply:
        with trio.fail_after(30):
            return await request_quote_key_certificate(
                "127.0.0.1", self.port, self.domain.policy_cert, request
            )

    def audit(self) -> AuditLog:
        return AuditLog.open(self.domain.path / AUDIT_FILE)


@pytest.fixture
async def svc(make_domain: MakeDomain, swtpm: Any) -> AsyncIterator[Service]:
    domain = make_domain(name="quote-test")
    trust_swtpm(domain, swtpm)
    async with serving_quote_service(domain, request_timeout=3.0) as (service, port):
        yield Service(domain, service, port)


@pytest.fixture(scope="module")
def host(swtpm: Any) -> Host:
    return Host(swtpm)


@pytest.mark.parametrize(("alg", "ek"), [("ecc", P256_EK), ("rsa", RSA_EK), ("ecc", 0x01C00016)])
async def test_quote_key_certified_end_to_end(svc: Service, swtpm: Any, alg: str, ek: int) -> None:
    """ECC and RSA quote keys, P-256, RSA and P-384 EKs: the TPM opens the reply and
    the certificate is a tpm2 host certificate of the domain for the quote key."""
    tpm_host = Host(swtpm, alg, ek)
    reply = await svc.ask(tpm_host.request())
    secret = await trio.to_thread.run_sync(tpm_host.activate, reply)
    cert_der = open_certificate(reply, secret, tpm_host.area.name)
    anchor = certs.PolicyAnchor(svc.domain.policy_cert, now_ns=time.time_ns())
    anchor.verify_host_certificate(
        cert_der, host_key_der=tpm_host.key_der, signer_type="tpm2", now_ns=time.time_ns()
    )
    serial = x509.load_der_x509_certificate(cert_der).serial_number
    with svc.audit() as audit:
        event = audit.issued(serial)
        assert event is not None
        assert event.principal is not None
        assert event.principal.startswith("tpm2(")
    # The wrapped certificate does not open under another key name.
    with pytest.raises(AuthenticationError, match="does not open"):
        open_certificate(reply, secret, b"\x00\x0b" + bytes(32))


async def test_certify_quote_key_whole_exchange(svc: Service, host: Host) -> None:
    """What a TPM host runs: request, ActivateCredential, open, verify."""

    async def activate(reply: QuoteKeyReply) -> bytes:
        return await trio.to_thread.run_sync(host.activate, reply)

    with trio.fail_after(30):
        cert_der = await certify_quote_key(
            "127.0.0.1", svc.port, svc.domain.policy_cert, host.request(), activate
        )
    assert certs.public_key_der(x509.load_der_x509_certificate(cert_der)) == host.key_der

    # A TPM that "recovers" another key (a host lying about its activation) gets nothing.
    async def wrong(reply: QuoteKeyReply) -> bytes:
        return bytes(32)

    with trio.fail_after(30), pytest.raises(AuthenticationError, match="does not open"):
        await certify_quote_key(
            "127.0.0.1", svc.port, svc.domain.policy_cert, host.request(), wrong
        )


async def test_two_certifications_get_distinct_serials(svc: Service, host: Host) -> None:
    a = open_certificate(*await _certified(svc, host))
    b = open_certificate(*await _certified(svc, host))
    assert x509.load_der_x509_certificate(a).serial_number != (
        x509.load_der_x509_certificate(b).serial_number
    )


async def _certified(svc: Service, host: Host) -> tuple[QuoteKeyReply, bytes, bytes]:
    reply = await svc.ask(host.request())
    return reply, await trio.to_thread.run_sync(host.activate, reply), host.area.name


async def test_reply_for_one_ek_does_not_open_on_another(
    svc: Service, swtpm: Any, host: Host
) -> None:
    """A host that sends the RSA EK's certificate and public area gets a blob for that
    EK: ActivateCredential on the P-256 EK refuses it."""
    ek_cert, ek_public = host.setup.read_ek(host.tcti, index=RSA_EK)
    reply = await svc.ask(host.request(ek_certificate=ek_cert, ek_public=ek_public))
    with pytest.raises(HostError):
        await trio.to_thread.run_sync(host.activate, reply, P256_EK)


# ----------------------------------------------------------------- refusals


async def assert_refused(svc: Service, request: QuoteKeyRequest, match: str) -> None:
    with pytest.raises(QuoteServiceError, match=match) as caught:
        await svc.ask(request)
    assert caught.value.code in ("refused", "bad_request")
    with svc.audit() as audit:
        last = audit.events()[-1]
    assert last.kind == "refused"
    assert last.reason is not None
    assert match in last.reason


def _ek_cert_by(issuer: x509.Certificate, issuer_key: Any, ek_public: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    ek_key = tc.parse_public(ek_public).public_key
    cert = make_ek_cert(ek_key, issuer, issuer_key)
    return cert.public_bytes(serialization.Encoding.DER)


async def test_ek_certificate_from_untrusted_ca_refused(svc: Service, host: Host) -> None:
    """The TPM's real EK, certified by a CA the domain does not list."""
    ca, key = make_ca("Evil TPM Corp")
    forged = _ek_cert_by(ca, key, host.ek_public)
    await assert_refused(svc, host.request(ek_certificate=forged), "not a manufacturer CA")


async def test_ek_certificate_from_same_named_ca_refused(svc: Service, host: Host) -> None:
    """An EK certificate under a CA with the real intermediate's name, another key."""
    real = x509.load_der_x509_certificate(host.ek_cert)
    impostor, key = make_ca(real.issuer)
    forged = _ek_cert_by(impostor, key, host.ek_public)
    await assert_refused(svc, host.request(ek_certificate=forged), "another key")


async def test_ek_public_not_the_certificates_refused(svc: Service, host: Host) -> None:
    _, rsa_public = host.setup.read_ek(host.tcti, index=RSA_EK)
    await assert_refused(svc, host.request(ek_public=rsa_public), "not the EK certificate's key")


async def test_ek_public_with_another_policy_refused(svc: Service, host: Host) -> None:
    """The certificate's key, with an empty authPolicy and userWithAuth (an EK anyone
    could use without the endorsement hierarchy's authorization): no TCG template."""
    raw = host.ek_public
    attributes = struct.unpack_from(">I", raw, 4)[0] | 0x40
    policy_len = struct.unpack_from(">H", raw, 8)[0]
    patched = raw[:4] + struct.pack(">IH", attributes, 0) + raw[10 + policy_len :]
    await assert_refused(svc, host.request(ek_public=patched), "matches no TCG EK template")


@pytest.mark.parametrize(
    ("flip", "match"),
    [(0x00010000, "restricted"), (0x00000002, "fixedTPM"), (0x00020000, "decrypt")],
)
async def test_quote_key_not_a_restricted_tpm_key_refused(
    svc: Service, host: Host, flip: int, match: str
) -> None:
    raw = host.area.raw
    attributes = struct.unpack_from(">I", raw, 4)[0] ^ flip
    patched = raw[:4] + struct.pack(">I", attributes) + raw[8:]
    await assert_refused(svc, host.request(quote_key_public=patched), match)


async def test_host_name_of_another_key_refused(svc: Service, host: Host) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    from cryptography.hazmat.primitives import serialization

    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    await assert_refused(svc, host.request(host_name=host_name(der, PCRS)), "not the quote key's")
    # The right key hash without its PCRs, or with another extension after them.
    bare = host_name(host.key_der, PCRS)
    from taonet import auth

    await assert_refused(
        svc,
        host.request(host_name=auth.Prin(bare.type, bare.key_hash)),
        "not of the form",
    )


async def test_no_manufacturer_ca_no_service(make_domain: MakeDomain) -> None:
    from taonet import ConfigError

    domain = make_domain()
    with pytest.raises(ConfigError, match="no TPM manufacturer CA"):
        QuoteService.open(domain.path, PASSWORD)


# ----------------------------------------------------------------- bounds


async def _raw_channel(svc: Service) -> Any:
    return await open_channel(
        "127.0.0.1", svc.port, ChannelIdentity.anonymous(svc.domain.policy_cert)
    )


async def test_oversized_request_refused_and_service_keeps_serving(
    svc: Service, host: Host
) -> None:
    with trio.fail_after(30):
        stream = await _raw_channel(svc)
        async with stream:
            envelope = Envelope(Role.CLIENT, body_limit=MAX_REQUEST * 2)
            chunks = envelope.request(OP_CERTIFY_QUOTE_KEY, 1, b"\0" * (MAX_REQUEST + 1))
            # Header and the body's length only: refused on the announced length.
            data = b"".join(chunks)
            header_end = 4 + struct.unpack(">I", data[:4])[0]
            await stream.send_all(data[: header_end + 4])
            while (event := envelope.next_event()) is NEED_DATA:
                envelope.receive_data(await stream.receive_some(4096))
            assert isinstance(event, Response)
            assert isinstance(event.error, CodecError)
    await _certified(svc, host)


async def test_truncated_and_garbage_requests_dropped(svc: Service, host: Host) -> None:
    good = encode_request(host.request())
    with trio.fail_after(30):
        # Cut off part way through the body.
        stream = await _raw_channel(svc)
        async with stream:
            chunks = Envelope(Role.CLIENT, body_limit=MAX_REQUEST * 2).request(
                OP_CERTIFY_QUOTE_KEY, 1, good
            )
            await stream.send_all(b"".join(chunks)[:-10])
        # A body that is not a request: answered bad_request.
        with pytest.raises(QuoteServiceError, match="bad_request"):
            await _send_body(svc, good[: len(good) // 2])
        # Garbage instead of a header frame.
        stream = await _raw_channel(svc)
        async with stream:
            await stream.send_all(encode_frame(b"\xff" * 40))
            await wait_closed_by_peer(stream)
    await _certified(svc, host)


async def _send_body(svc: Service, body: bytes) -> None:
    from taonet.quoteservice import decode_reply

    stream = await _raw_channel(svc)
    async with stream:
        envelope = Envelope(Role.CLIENT, body_limit=MAX_REQUEST * 2)
        await stream.send_all(b"".join(envelope.request(OP_CERTIFY_QUOTE_KEY, 1, body)))
        while (event := envelope.next_event()) is NEED_DATA:
            envelope.receive_data(await stream.receive_some(4096))
    assert isinstance(event, Response)
    if event.error is not None:
        raise event.error
    decode_reply(event.body)


async def test_client_that_never_finishes_is_cut_off(
    make_domain: MakeDomain, swtpm: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that sends a byte every few seconds (never idle long enough for the
    channel's idle limit) is cut off at the request deadline; the refusal is audited."""
    domain = make_domain(name="slow")
    trust_swtpm(domain, swtpm)
    async with serving_quote_service(domain, request_timeout=20.0) as (_, port):
        with trio.fail_after(120):
            stream = await open_channel(
                "127.0.0.1", port, ChannelIdentity.anonymous(domain.policy_cert)
            )
            chunks = Envelope(Role.CLIENT, body_limit=MAX_REQUEST * 2).request(
                OP_CERTIFY_QUOTE_KEY, 1, b"x" * 1000
            )
            data = b"".join(chunks)
            started = trio.current_time()

            async def dribble() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for i in range(len(data)):
                        await stream.send_all(data[i : i + 1])
                        await trio.sleep(5)

            async with trio.open_nursery() as client:
                client.start_soon(dribble)
                await wait_closed_by_peer(stream)
                client.cancel_scope.cancel()
            assert 20 <= trio.current_time() - started < 40
            await stream.aclose()
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        assert audit.events()[-1].reason == "no whole request in time"


async def test_refusals_are_rate_limited_and_summarized(
    make_domain: MakeDomain, swtpm: Any, host: Host
) -> None:
    """A flood of bad requests from one address: two audit rows, then hung up on
    unread; the counts land in one summary row when the service stops."""
    from taonet import ProtocolError
    from taonet_services.domain_service import RefusalLimits

    domain = make_domain(name="flood")
    trust_swtpm(domain, swtpm)
    limits = RefusalLimits(client_burst=2, client_rate=1e-6, summary_interval=3600)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    from cryptography.hazmat.primitives import serialization

    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bad = host.request(host_name=host_name(der, PCRS))
    answers: list[str] = []
    async with serving_quote_service(domain, limits=limits) as (_, port):
        for _ in range(6):
            with trio.fail_after(30):
                try:
                    await request_quote_key_certificate("127.0.0.1", port, domain.policy_cert, bad)
                except QuoteServiceError as exc:
                    answers.append(exc.code)
                except ProtocolError:
                    answers.append("hung up")
    assert answers == ["refused"] * 2 + ["hung up"] * 4
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        events = audit.events()
    refused = [e for e in events if e.kind == "refused"]
    assert [e.reason_code for e in refused] == ["refused", "refused", "summarized"]
    assert refused[-1].detail["count"] == 4
    assert refused[-1].detail["codes"] == {"rate_limited": 4}
