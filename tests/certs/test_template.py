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
