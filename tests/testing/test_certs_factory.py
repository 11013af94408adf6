"""taonet.testing.CertificateFactory: what it starts from is taonet's profile, and every
fault it makes is really there and really signed by the policy key."""

from __future__ import annotations

import datetime

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

import taonet.testing
from taonet import auth, certs
from taonet.certs._der import (
    ECDSA_WITH_SHA256,
    ECDSA_WITH_SHA384,
    TAG_CONTEXT_0,
    TAG_INTEGER,
    elements,
    read,
    split,
)
from taonet.crypto import Signer
from taonet.testing import CertificateFactory, replace_oid
from tests.conftest import PASSWORD

NOW = 1_800_000_000 * 10**9
FACTORY = CertificateFactory.generate(now_ns=NOW)
KEY = Signer.generate().public_key_der()
PROGRAM = auth.key_principal(KEY)
SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
# Same encoded length as subjectAltName (2.5.29.17).
PLACEHOLDER = x509.ObjectIdentifier("2.5.29.99")


def test_public_namespace() -> None:
    # The certificate tools; taonet.testing holds others too (the Tao suite).
    mine = {"CertFields", "CertificateFactory", "CrlFields", "replace_oid"}
    assert mine <= set(taonet.testing.__all__)
    for name in taonet.testing.__all__:
        assert getattr(taonet.testing, name) is not None


def signed_part_signature_is_valid(der: bytes, digest: hashes.HashAlgorithm) -> bool:
    envelope = split(der)
    key = FACTORY.signer.private_key.public_key()
    try:
        key.verify(envelope.signature, envelope.tbs, ec.ECDSA(digest))
    except Exception:
        return False
    return True


def tbs_fields(der: bytes) -> list[tuple[int, bytes]]:
    tbs = split(der).tbs
    _, start, end = read(tbs)
    return elements(tbs[start:end])


# -- unchanged fields are taonet's own ----------------------------------------------


def test_program_fields_sign_to_what_the_domain_issues() -> None:
    issued = certs.issue_program_certificate(
        FACTORY.signer, FACTORY.anchor, KEY, PROGRAM, now_ns=NOW
    )
    fields = FACTORY.program_fields(KEY, PROGRAM, now_ns=NOW)
    der = FACTORY.sign(attrs.evolve(fields, serial=issued.serial))  # serials are random
    assert split(der).tbs == split(issued.der).tbs
    assert certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW).principal == PROGRAM


def test_host_fields_sign_to_what_the_domain_issues() -> None:
    issued = certs.issue_host_certificate(FACTORY.signer, FACTORY.policy_cert, KEY, now_ns=NOW)
    serial = x509.load_der_x509_certificate(issued).serial_number
    der = FACTORY.sign(attrs.evolve(FACTORY.host_fields(KEY, now_ns=NOW), serial=serial))
    assert split(der).tbs == split(issued).tbs
    FACTORY.anchor.verify_host_certificate(der, host_key_der=KEY, now_ns=NOW)


def test_policy_fields_sign_to_a_policy_certificate() -> None:
    made = certs.make_policy_certificate(FACTORY.signer, common_name="p", now_ns=NOW)
    serial = x509.load_der_x509_certificate(made).serial_number
    fields = FACTORY.policy_fields(now_ns=NOW, common_name="p")
    der = FACTORY.sign(attrs.evolve(fields, serial=serial))
    assert split(der).tbs == split(made).tbs
    assert certs.PolicyAnchor(der, now_ns=NOW).public_key_der == FACTORY.signer.public_key_der()


def test_crl_fields_sign_to_what_make_crl_makes() -> None:
    made = certs.make_crl(FACTORY.signer, FACTORY.anchor, [3, 4], now_ns=NOW, crl_number=7)
    der = FACTORY.sign_crl(FACTORY.crl_fields([3, 4], now_ns=NOW, crl_number=7))
    assert split(der).tbs == split(made).tbs
    assert certs.verify_crl(FACTORY.anchor, der, now_ns=NOW).serials == {3, 4}


def test_p384_factory_signs_with_sha384() -> None:
    factory = CertificateFactory.generate(now_ns=NOW, curve="P-384")
    der = factory.program_certificate(KEY, PROGRAM, now_ns=NOW)
    assert split(der).inner_algorithm == ECDSA_WITH_SHA384
    certs.verify_program_certificate(factory.anchor, der, now_ns=NOW)


def test_wraps_a_domain(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    factory = CertificateFactory(domain.unlock(PASSWORD), domain.policy_cert, now_ns=NOW)
    der = factory.program_certificate(KEY, PROGRAM, now_ns=NOW)
    assert certs.verify_program_certificate(domain.policy_anchor, der, now_ns=NOW).der == der
    with pytest.raises(ValueError, match="not the key of this policy certificate"):
        CertificateFactory(Signer.generate(), domain.policy_cert, now_ns=NOW)


# -- each fault is there, under a valid signature ----------------------------------


def program(**changes: object) -> bytes:
    return FACTORY.program_certificate(KEY, PROGRAM, now_ns=NOW, **changes)


def test_version_edits() -> None:
    v1 = program(version=1)
    assert x509.load_der_x509_certificate(v1).version is x509.Version.v1
    assert tbs_fields(v1)[0][0] == TAG_INTEGER  # no [0] version field at all
    v2 = program(version=2)
    assert tbs_fields(v2)[0] == (TAG_CONTEXT_0, bytes.fromhex("a003020101"))
    for der in (v1, v2):
        assert signed_part_signature_is_valid(der, hashes.SHA256())


@pytest.mark.parametrize("serial", [0, -1, -(1 << 70), 1 << 159, 1 << 200])
def test_serial_edits(serial: int) -> None:
    der = program(serial=serial)
    tag, integer = tbs_fields(der)[1]
    _, start, end = read(integer)
    assert (tag, int.from_bytes(integer[start:end], "big", signed=True)) == (TAG_INTEGER, serial)
    assert signed_part_signature_is_valid(der, hashes.SHA256())


def test_crl_edits() -> None:
    fields = FACTORY.crl_fields([3], now_ns=NOW)
    no_next = FACTORY.sign_crl(attrs.evolve(fields, next_update=None))
    assert x509.load_der_x509_crl(no_next).next_update_utc is None
    early = fields.this_update - datetime.timedelta(days=1)  # before thisUpdate
    inverted = FACTORY.sign_crl(attrs.evolve(fields, next_update=early))
    assert x509.load_der_x509_crl(inverted).next_update_utc == early
    v1 = FACTORY.sign_crl(attrs.evolve(fields, version=1))
    assert tbs_fields(v1)[0][0] != TAG_INTEGER
    for der in (no_next, inverted, v1):
        assert signed_part_signature_is_valid(der, hashes.SHA256())
    with pytest.raises(ValueError, match="version 1 or 2"):
        FACTORY.sign_crl(attrs.evolve(fields, version=3))


@pytest.mark.parametrize("unused", [1, 3, 7])
def test_unused_bits(unused: int) -> None:
    der = program(unused_bits=unused)
    envelope = split(der)
    assert envelope.unused_bits == unused
    assert envelope.signature[-1] & ((1 << unused) - 1) == 0  # well-formed padding
    assert signed_part_signature_is_valid(der, hashes.SHA256())
    with pytest.raises(ValueError, match="unused_bits"):
        program(unused_bits=8)


def test_outer_algorithm() -> None:
    der = program(hash=hashes.SHA384(), outer_algorithm=ECDSA_WITH_SHA256)
    envelope = split(der)
    assert (envelope.inner_algorithm, envelope.outer_algorithm) == (
        ECDSA_WITH_SHA384,
        ECDSA_WITH_SHA256,
    )
    # Signed with the digest the outer label names, as a trusting verifier would check.
    assert signed_part_signature_is_valid(der, hashes.SHA256())


def test_replace_oid_repeats_an_extension() -> None:
    fields = FACTORY.program_fields(KEY, PROGRAM, now_ns=NOW)
    value = fields.extension(SAN).value
    assert isinstance(value, x509.SubjectAlternativeName)
    other = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(certs.principal_uri("program", PROGRAM))]
    )
    der = FACTORY.sign(
        attrs.evolve(
            fields.with_extension(x509.UnrecognizedExtension(PLACEHOLDER, other.public_bytes())),
            edit_tbs=replace_oid(PLACEHOLDER, SAN),
        )
    )
    with pytest.raises(x509.DuplicateExtension):
        _ = x509.load_der_x509_certificate(der).extensions
    assert signed_part_signature_is_valid(der, hashes.SHA256())
    with pytest.raises(ValueError, match="same encoded length"):
        replace_oid(PLACEHOLDER, x509.ObjectIdentifier("1.2.3"))
    with pytest.raises(ValueError, match="exactly once"):
        FACTORY.sign(attrs.evolve(fields, edit_tbs=replace_oid(PLACEHOLDER, SAN)))


def test_extension_helpers() -> None:
    fields = FACTORY.program_fields(KEY, PROGRAM, now_ns=NOW)
    oids = [e.oid for e in fields.extensions]
    ca = fields.with_extension(x509.BasicConstraints(ca=True, path_length=None))
    assert [e.oid for e in ca.extensions] == oids  # replaced in place
    assert ca.extension(x509.BasicConstraints.oid).critical  # the flag is kept
    assert ca.extension(x509.BasicConstraints.oid).value.ca  # type: ignore[attr-defined]
    gone = fields.without_extension(x509.BasicConstraints.oid)
    with pytest.raises(KeyError):
        gone.extension(x509.BasicConstraints.oid)
    added = gone.with_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    assert added.extensions[-1].oid == x509.BasicConstraints.oid


def test_another_signer_really_signs() -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    der = program(signing_key=rogue)
    envelope = split(der)
    rogue.public_key().verify(envelope.signature, envelope.tbs, ec.ECDSA(hashes.SHA256()))
    assert not signed_part_signature_is_valid(der, hashes.SHA256())


def test_with_names_replaces_only_the_uris() -> None:
    fields = FACTORY.program_fields(KEY, PROGRAM, now_ns=NOW)
    other = certs.principal_uri("host", PROGRAM)
    cert = x509.load_der_x509_certificate(FACTORY.sign(fields.with_names(other, "urn:x:y")))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [certs.CHANNEL_HOSTNAME]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [other, "urn:x:y"]
    host = FACTORY.host_fields(KEY, now_ns=NOW).without_extension(SAN).with_names(other)
    assert [e.oid for e in host.extensions].count(SAN) == 1
