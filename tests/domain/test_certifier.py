"""Program certificates and the domain service's core: attestation in, certificate out."""

from __future__ import annotations

import time

import attrs
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from taonet import AuthenticationError, AuthorizationError, auth, certs
from taonet.attestation import Attestation, attest
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain, ProgramCertifier
from taonet.hosts import SoftHost, SoftTao
from tests.conftest import PASSWORD

DAY = 24 * 3600 * 10**9
PROGRAM_HASH = b"\x42" * 32


@attrs.define
class World:
    domain: Domain
    host: SoftHost
    tao: SoftTao
    name: auth.Prin
    certifier: ProgramCertifier


@pytest.fixture
def world(make_domain, make_host) -> World:  # type: ignore[no-untyped-def]
    domain = make_domain(name="certifier-test", program_validity_days=30)
    signer = domain.unlock(PASSWORD)
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(PROGRAM_HASH)), signer)
    host = make_host(domain)
    name = domain.program_name(PROGRAM_HASH, host=host.name)
    assert isinstance(name, auth.Prin)
    return World(domain, host, host.tao_for(name), name, ProgramCertifier(domain, signer))


async def request(world: World, key: Signer | None = None, **kw: object) -> tuple[bytes, bytes]:
    key = key or Signer.generate()
    delegate = auth.key_principal(key.public_key_der())
    att = await world.tao.attest(auth.Speaksfor(delegate, world.name), **kw)  # type: ignore[arg-type]
    return att.to_bytes(), key.public_key_der()


async def test_a_valid_request_gets_a_certificate(world: World) -> None:
    att, key = await request(world)
    issued = world.certifier.certify(att, key)
    assert issued.principal == world.name
    assert issued.public_key_der == key
    now = time.time_ns()
    assert issued.not_before <= now <= issued.not_after
    assert issued.not_after <= now + 30 * DAY + 10**9
    checked = certs.verify_program_certificate(world.domain.policy_anchor, issued.der, now_ns=now)
    assert checked == issued
    cert = x509.load_der_x509_certificate(issued.der)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = alt_names.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [certs.principal_uri("program", world.name)]


async def test_serials_are_unique_and_random(world: World) -> None:
    serials = set()
    for _ in range(10):
        att, key = await request(world)
        serials.add(world.certifier.certify(att, key).serial)
    assert len(serials) == 10
    assert 0 not in serials


async def test_certificate_never_outlives_the_attestation(world: World) -> None:
    end = time.time_ns() + DAY
    att, key = await request(world, expiration=end)
    assert world.certifier.certify(att, key).not_after <= end


async def test_replayed_attestation_with_another_key_is_refused(world: World) -> None:
    att, _ = await request(world)
    thief = Signer.generate().public_key_der()
    with pytest.raises(AuthenticationError, match="not to the presented key"):
        world.certifier.certify(att, thief)


async def test_program_the_guard_does_not_know_is_refused(world: World) -> None:
    other = world.domain.program_name(b"\x13" * 32, host=world.host.name)
    assert isinstance(other, auth.Prin)
    tao = world.host.tao_for(other)
    key = Signer.generate()
    att = await tao.attest(auth.Speaksfor(auth.key_principal(key.public_key_der()), other))
    with pytest.raises(AuthorizationError, match="does not authorize"):
        world.certifier.certify(att.to_bytes(), key.public_key_der())


async def test_delegation_for_someone_else_is_refused(world: World) -> None:
    key = Signer.generate()
    delegate = auth.key_principal(key.public_key_der())
    sub = world.name.extend(auth.PrinExt("Worker", ()))
    att = await world.tao.attest(auth.Speaksfor(delegate, sub))  # speaker != delegator
    with pytest.raises(AuthenticationError, match="not for its speaker"):
        world.certifier.certify(att.to_bytes(), key.public_key_der())


async def test_attestation_of_something_else_is_refused(world: World) -> None:
    att = await world.tao.attest(auth.Pred("Ready", ()))
    with pytest.raises(AuthenticationError, match="not 'key"):
        world.certifier.certify(att.to_bytes(), Signer.generate().public_key_der())


async def test_uncertified_host_is_refused(world: World, make_host) -> None:  # type: ignore[no-untyped-def]
    rogue = make_host()
    name = rogue.name.extend(world.name.ext)
    key = Signer.generate()
    att = await rogue.tao_for(name).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
    )
    with pytest.raises(AuthenticationError, match="no root endorsement"):
        world.certifier.certify(att.to_bytes(), key.public_key_der())


async def test_forged_and_expired_attestations_are_refused(world: World) -> None:
    att, key = await request(world, expiration=time.time_ns() + 10**9)
    forged = bytearray(att)
    forged[-80] ^= 1
    with pytest.raises(AuthenticationError):
        world.certifier.certify(bytes(forged), key)
    later = ProgramCertifier(
        world.domain, world.domain.unlock(PASSWORD), clock=lambda: time.time_ns() + 2 * 10**9
    )
    with pytest.raises(AuthenticationError, match="expired"):
        later.certify(att, key)


def test_garbage_requests_are_refused(world: World) -> None:
    with pytest.raises(AuthenticationError):
        world.certifier.certify(b"\x00garbage", Signer.generate().public_key_der())


async def test_garbage_key_is_refused(world: World) -> None:
    att, _ = await request(world)
    with pytest.raises(AuthenticationError, match="unusable"):
        world.certifier.certify(att, b"not a key")


def test_only_the_policy_key_may_certify(world: World, make_domain) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthenticationError):
        ProgramCertifier(world.domain, make_domain().unlock(PASSWORD))


# -- verifying program certificates --------------------------------------------


async def test_certificates_from_elsewhere_are_refused(world: World, make_domain) -> None:  # type: ignore[no-untyped-def]
    now = time.time_ns()
    anchor = world.domain.policy_anchor
    # Another domain's program certificate.
    theirs = make_domain()
    their_cert = certs.issue_program_certificate(
        theirs.unlock(PASSWORD),
        theirs.policy_anchor,
        Signer.generate().public_key_der(),
        world.name,
        now_ns=now,
    )
    with pytest.raises(AuthenticationError, match="not signed by this domain's policy key"):
        certs.verify_program_certificate(anchor, their_cert.der, now_ns=now)
    # A self-signed certificate claiming the name.
    rogue = Signer.generate()
    self_signed = certs.make_policy_certificate(rogue, common_name="taonet policy key", now_ns=now)
    with pytest.raises(AuthenticationError):
        certs.verify_program_certificate(anchor, self_signed, now_ns=now)
    # The policy certificate itself and a host certificate are not program certificates.
    with pytest.raises(AuthenticationError):
        certs.verify_program_certificate(anchor, world.domain.policy_cert, now_ns=now)
    assert world.host.root_endorsement is not None
    with pytest.raises(AuthenticationError, match="not a taonet program certificate"):
        certs.verify_program_certificate(anchor, world.host.root_endorsement, now_ns=now)
    with pytest.raises(AuthenticationError, match="malformed"):
        certs.verify_program_certificate(anchor, b"\x30\x00", now_ns=now)


async def test_expired_program_certificate_is_refused(world: World) -> None:
    att, key = await request(world)
    issued = world.certifier.certify(att, key)
    anchor = world.domain.policy_anchor
    with pytest.raises(AuthenticationError, match="program certificate expired"):
        certs.verify_program_certificate(anchor, issued.der, now_ns=issued.not_after + 10**9)
    with pytest.raises(AuthenticationError, match="not valid until"):
        certs.verify_program_certificate(anchor, issued.der, now_ns=issued.not_before - 10**9)


def test_issuing_checks_its_inputs(world: World) -> None:
    anchor, now = world.domain.policy_anchor, time.time_ns()
    signer = world.domain.unlock(PASSWORD)
    with pytest.raises(AuthenticationError):
        certs.issue_program_certificate(Signer.generate(), anchor, b"", world.name, now_ns=now)
    with pytest.raises(ValueError, match="future"):
        certs.issue_program_certificate(
            signer,
            anchor,
            Signer.generate().public_key_der(),
            world.name,
            now_ns=now,
            not_after_ns=now - 1,
        )
    direct = attest(signer, auth.Const(True), now_ns=now)  # unrelated: the policy key attests
    assert direct.signer_type == "key"


async def test_any_flipped_byte_in_a_request_is_refused_cleanly(world: World) -> None:
    # Every byte: the attestation, its statement, its signature, the stapled host
    # certificate. Only AuthenticationError may come out (never a parser's error).
    att, key = await request(world)
    original = Attestation.from_bytes(att)
    for i in range(len(att)):
        tampered = bytearray(att)
        tampered[i] ^= 0x01
        try:
            issued = world.certifier.certify(bytes(tampered), key)
        except AuthenticationError:
            continue
        # A flip may only survive outside what is signed, changing nothing said: the
        # same signed statement, and a host certificate with the same signed body
        # (e.g. the "unused bits" byte of its signature BIT STRING).
        survivor = Attestation.from_bytes(bytes(tampered))
        assert survivor.serialized_statement == original.serialized_statement, i
        assert survivor.signature == original.signature, i
        assert survivor.root_endorsement is not None
        assert original.root_endorsement is not None
        a = x509.load_der_x509_certificate(survivor.root_endorsement)
        b = x509.load_der_x509_certificate(original.root_endorsement)
        assert (a.tbs_certificate_bytes, a.signature) == (b.tbs_certificate_bytes, b.signature)
        assert issued.principal == world.name


async def test_any_flipped_byte_in_a_program_certificate_is_refused(world: World) -> None:
    att, key = await request(world)
    issued = world.certifier.certify(att, key)
    original = x509.load_der_x509_certificate(issued.der)
    now = time.time_ns()
    for i in range(len(issued.der)):
        tampered = bytearray(issued.der)
        tampered[i] ^= 0x01
        try:
            certs.verify_program_certificate(
                world.domain.policy_anchor, bytes(tampered), now_ns=now
            )
        except AuthenticationError:
            continue
        # The only flips that survive are outside what is signed and change nothing
        # it says (e.g. the "unused bits" byte of the signature's BIT STRING).
        survivor = x509.load_der_x509_certificate(bytes(tampered))
        assert survivor.tbs_certificate_bytes == original.tbs_certificate_bytes, i
        assert survivor.signature == original.signature, i
