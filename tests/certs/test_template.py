"""Program certificates written from their parts (``taonet.certs._template``).

The template must write exactly what ``cryptography``'s ``CertificateBuilder`` wrote
for the same fields, for any domain name, validity, serial and curve; and what it
issues must still pass every check a verifier makes.
"""

from __future__ import annotations

import datetime as _dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, auth, certs
from taonet.certs._der import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384
from taonet.certs._profile import _key_usage, _name
from taonet.certs._template import program_tbs
from taonet.crypto import Signer
from taonet.testing import CertificateFactory

NOW = 1_800_000_000 * 10**9
FACTORIES = {
    curve: CertificateFactory.generate(now_ns=NOW, curve=curve) for curve in ("P-256", "P-384")
}
PROGRAM_KEYS = {curve: Signer.generate(curve) for curve in ("P-256", "P-384")}
PRINCIPAL = auth.parse_prin("key([0a0b]).Program([5a5a])")
URI = certs.principal_uri("program", PRINCIPAL)


def _builder_tbs(
    factory: CertificateFactory,
    key: ec.EllipticCurvePublicKey,
    *,
    serial: int,
    not_before: _dt.datetime,
    not_after: _dt.datetime,
    common_name: str,
    organization: str,
) -> bytes:
    """What issue_program_certificate built before the template (CertificateBuilder)."""
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(factory.anchor.cert.subject)
        .public_key(key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(certs.CHANNEL_HOSTNAME), x509.UniformResourceIdentifier(URI)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(factory.anchor.public_key),
            critical=False,
        )
        .sign(factory.signer.private_key, factory.hash)
    )
    return cert.tbs_certificate_bytes


@given(
    policy_curve=st.sampled_from(["P-256", "P-384"]),
    key_curve=st.sampled_from(["P-256", "P-384"]),
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    # From 1970 to past 2050 (where UTCTime gives way to GeneralizedTime).
    start=st.integers(min_value=0, max_value=3_000_000_000),
    days=st.integers(min_value=1, max_value=36500),
    organization=st.text(max_size=80),
    common_name=st.text(max_size=80),
)
def test_the_template_writes_what_the_builder_wrote(
    policy_curve: str,
    key_curve: str,
    serial: int,
    start: int,
    days: int,
    organization: str,
    common_name: str,
) -> None:
    factory = FACTORIES[policy_curve]
    key = PROGRAM_KEYS[key_curve].private_key.public_key()
    not_before = _dt.datetime.fromtimestamp(start, _dt.UTC)
    not_after = not_before + _dt.timedelta(days=days)
    try:
        expected = _builder_tbs(
            factory,
            key,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            common_name=common_name,
            organization=organization,
        )
    except ValueError:  # a name cryptography refuses (e.g. a surrogate): none to compare
        return
    algorithm = ECDSA_WITH_SHA384 if policy_curve == "P-384" else ECDSA_WITH_SHA256
    assert (
        program_tbs(
            policy_cert_der=factory.policy_cert,
            algorithm=algorithm,
            key=key,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            common_name=common_name,
            organization=organization,
            hostname=certs.CHANNEL_HOSTNAME,
            uri=URI,
        )
        == expected
    )


@pytest.mark.parametrize("policy_curve", ["P-256", "P-384"])
@pytest.mark.parametrize("days", [1, 30, 36500])
def test_an_issued_certificate_passes_every_check(policy_curve: str, days: int) -> None:
    factory = FACTORIES[policy_curve]
    key_der = PROGRAM_KEYS["P-256"].public_key_der()
    issued = certs.issue_program_certificate(
        factory.signer,
        factory.anchor,
        key_der,
        PRINCIPAL,
        now_ns=NOW + 123_456_789,
        validity_days=days,
        domain_name="a domain",
    )
    verified = certs.verify_program_certificate(factory.anchor, issued.der, now_ns=NOW)
    assert verified == issued
    cert = x509.load_der_x509_certificate(issued.der)
    assert cert.public_bytes(serialization.Encoding.DER) == issued.der
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == factory.hash.name


def test_a_certificate_issued_by_another_policy_key_is_refused() -> None:
    # The attacker's policy key, with a certificate of the same subject as ours.
    ours = FACTORIES["P-256"]
    theirs = CertificateFactory.generate(now_ns=NOW)
    issued = certs.issue_program_certificate(
        theirs.signer, theirs.anchor, PROGRAM_KEYS["P-256"].public_key_der(), PRINCIPAL, now_ns=NOW
    )
    with pytest.raises(AuthenticationError, match="not signed by this domain's policy key"):
        certs.verify_program_certificate(ours.anchor, issued.der, now_ns=NOW)


# -- the names remembered by their exact text (taonet.certs._profile) ------------------


def _with_uri(factory: CertificateFactory, uri: str) -> bytes:
    key_der = PROGRAM_KEYS["P-256"].public_key_der()
    fields = factory.program_fields(key_der, PRINCIPAL, now_ns=NOW)
    return factory.sign(fields.with_names(uri))


def test_a_remembered_name_is_not_lent_to_other_bytes() -> None:
    factory = FACTORIES["P-256"]
    good = _with_uri(factory, URI)
    assert certs.verify_program_certificate(factory.anchor, good, now_ns=NOW).principal == PRINCIPAL
    # The same principal, spelled differently (lower-case percent escapes, a needless
    # escape, the scheme in capitals) after the canonical one was remembered: each
    # is new bytes, checked in full, and refused as before.
    for variant in (
        URI.replace("%5B", "%5b"),
        URI.replace("Program", "%50rogram"),
        "TAONET" + URI.removeprefix("taonet"),
    ):
        assert variant != URI
        with pytest.raises(AuthenticationError, match="canonical form"):
            certs.verify_program_certificate(
                factory.anchor, _with_uri(factory, variant), now_ns=NOW
            )
    # Another program's name is its own, never the remembered one.
    other = auth.parse_prin("key([0a0b]).Program([5a5b])")
    cert = _with_uri(factory, certs.principal_uri("program", other))
    assert certs.verify_program_certificate(factory.anchor, cert, now_ns=NOW).principal == other


def test_a_remembered_name_keeps_its_role() -> None:
    # A program's URI, remembered, does not pass for a host's (nor the reverse).
    host_uri = URI.replace("taonet:program:", "taonet:host:")
    factory = FACTORIES["P-256"]
    certs.verify_program_certificate(factory.anchor, _with_uri(factory, URI), now_ns=NOW)
    with pytest.raises(AuthenticationError, match="is for a taonet host, not a program"):
        certs.verify_program_certificate(factory.anchor, _with_uri(factory, host_uri), now_ns=NOW)
    cert = x509.load_der_x509_certificate(_with_uri(factory, URI))
    with pytest.raises(AuthenticationError, match="is for a taonet program, not a host"):
        certs.certificate_principal(cert, "host")


def test_a_name_that_failed_fails_again() -> None:
    factory = FACTORIES["P-256"]
    bad = "taonet:program:key(%5B0a0b%5D).Program("  # cut short: no principal
    for _ in range(2):  # failures are not remembered as anything
        with pytest.raises(AuthenticationError, match="names no principal"):
            certs.verify_program_certificate(factory.anchor, _with_uri(factory, bad), now_ns=NOW)


def test_a_long_name_is_checked_but_not_remembered() -> None:
    from taonet.certs import _profile

    remembered = (_profile._uri_principal, _profile._read_back, _profile._quoted)
    long = PRINCIPAL.extend(auth.PrinExt("Program", (auth.Str("x" * 5000),)))
    factory = FACTORIES["P-256"]
    cert = _with_uri(factory, certs.principal_uri("program", long))
    for cache in remembered:
        cache.cache_clear()
    certs.principal_uri("program", long)
    verified = certs.verify_program_certificate(factory.anchor, cert, now_ns=NOW)
    assert verified.principal == long
    assert [cache.cache_info().currsize for cache in remembered] == [0, 0, 0]
    certs.principal_uri("program", PRINCIPAL)  # a short one is
    assert _profile._read_back.cache_info().currsize == 1


def test_each_policy_key_issues_under_its_own_name_and_key_identifier() -> None:
    # The issuer's parts are remembered per policy certificate (its exact bytes): after
    # a rotation to a new policy key, and back, each certificate names its own issuer.
    old, new = FACTORIES["P-256"], CertificateFactory.generate(now_ns=NOW, common_name="rotated")
    key_der = PROGRAM_KEYS["P-256"].public_key_der()
    for factory, other in ((old, new), (new, old), (old, new)):
        issued = certs.issue_program_certificate(
            factory.signer, factory.anchor, key_der, PRINCIPAL, now_ns=NOW
        )
        cert = x509.load_der_x509_certificate(issued.der)
        assert cert.issuer == factory.anchor.cert.subject
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        expected = x509.AuthorityKeyIdentifier.from_issuer_public_key(factory.anchor.public_key)
        assert aki == expected
        certs.verify_program_certificate(factory.anchor, issued.der, now_ns=NOW)
        with pytest.raises(AuthenticationError):
            certs.verify_program_certificate(other.anchor, issued.der, now_ns=NOW)
    # Only the policy key of the anchor may issue under it.
    with pytest.raises(AuthenticationError, match="only the domain's policy key"):
        certs.issue_program_certificate(new.signer, old.anchor, key_der, PRINCIPAL, now_ns=NOW)
