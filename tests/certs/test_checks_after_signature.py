"""Every check after the signature, reached by certificates and CRLs the policy key signed.

Each case changes exactly one field of what taonet issues (``taonet.testing``), has
the policy key sign it, checks that the signature really is the policy key's, and
expects the message of the one check that field must fail. The unchanged
certificate passes, so each refusal is that field's doing.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable

import attrs
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from taonet import AuthenticationError, auth, certs
from taonet.attestation import attest, validate
from taonet.certs._der import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, split
from taonet.crypto import Signer
from taonet.testing import CertFields, CertificateFactory, CrlFields, replace_oid

NOW = 1_800_000_000 * 10**9
DAY = _dt.timedelta(days=1)
FACTORY = CertificateFactory.generate(now_ns=NOW)
P384 = CertificateFactory.generate(now_ns=NOW, curve="P-384")

PROGRAM_KEY = Signer.generate().public_key_der()
PROGRAM = auth.key_principal(PROGRAM_KEY).extend(auth.PrinExt("Program", (auth.Bytes(b"\1" * 32),)))
HOST = Signer.generate()
HOST_KEY = HOST.public_key_der()
# The policy certificate's common name, under an organization it does not have.
OTHER_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "taonet"),
        x509.NameAttribute(NameOID.COMMON_NAME, "taonet test policy"),
    ]
)
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
# Same encoded length as subjectAltName, for a certificate that carries it twice.
PLACEHOLDER_OID = x509.ObjectIdentifier("2.5.29.99")
# taonet's first profile: principal, host usage and text name under a 2.25 arc.
RETIRED_ARC = "2.25.184001271471987179187705270170102784850"
RETIRED_PRINCIPAL = x509.ObjectIdentifier(RETIRED_ARC + ".1")
RETIRED_HOST = x509.ObjectIdentifier(RETIRED_ARC + ".2")
RETIRED_TEXT = x509.ObjectIdentifier(RETIRED_ARC + ".3")


def usage(**on: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(on)
    return x509.KeyUsage(**flags)


def assert_signed_by_policy(der: bytes, factory: CertificateFactory = FACTORY) -> None:
    """The policy key did sign these bytes' signed part: a refusal is not the signature's."""
    envelope = split(der)
    key = factory.signer.private_key.public_key()
    for digest in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        try:
            key.verify(envelope.signature, envelope.tbs, ec.ECDSA(digest))
        except InvalidSignature:
            continue
        return
    raise AssertionError("not signed by the policy key")


Change = Callable[[CertFields], CertFields]


def ext(value: x509.ExtensionType, *, critical: bool | None = None) -> Change:
    return lambda f: f.with_extension(value, critical=critical)


def without(oid: x509.ObjectIdentifier) -> Change:
    return lambda f: f.without_extension(oid)


def evolve(**changes: object) -> Change:
    return lambda f: attrs.evolve(f, **changes)  # type: ignore[arg-type]


def uris(*values: str) -> Change:
    """subjectAltName with exactly these URIs (other names, the channel DNS name, stay)."""
    return lambda f: f.with_names(*values)


def duplicate_alt_names(f: CertFields) -> CertFields:
    """A second subjectAltName extension, naming another program."""
    other = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(certs.principal_uri("program", OTHER_PROGRAM))]
    )
    twice = f.with_extension(x509.UnrecognizedExtension(PLACEHOLDER_OID, other.public_bytes()))
    return attrs.evolve(twice, edit_tbs=replace_oid(PLACEHOLDER_OID, SAN))


def end_entity_cases(what: str) -> list[tuple[str, Change, str]]:
    """Checks host and program certificates share (``check_end_entity`` and the envelope)."""
    return [
        ("version-1", evolve(version=1), f"{what} is X.509 v1, expected v3"),
        ("version-2", evolve(version=2), "1 is not a valid X509 version"),
        ("serial-0", evolve(serial=0), f"{what}: serial number is zero or negative"),
        ("serial-negative", evolve(serial=-7), f"{what}: serial number is zero or negative"),
        (
            "serial-over-20-octets",
            evolve(serial=1 << 159),
            rf"{what} serial number {1 << 159} is not from 1 to 2\*\*159 - 1",
        ),
        (
            "unknown-critical-extension",
            ext(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), critical=True),
            f"{what} has an unknown critical extension 1.3.6.1.4.1.55555.1",
        ),
        (
            "critical-subject-key-identifier",  # known to X.509, not processed by taonet
            ext(
                x509.SubjectKeyIdentifier.from_public_key(
                    ec.generate_private_key(ec.SECP256R1()).public_key()
                ),
                critical=True,
            ),
            f"{what} has an unknown critical extension 2.5.29.14",
        ),
        (
            "ca-flag",
            ext(x509.BasicConstraints(ca=True, path_length=None)),
            f"a CA certificate is not a {what}",
        ),
        (
            "no-basic-constraints",
            without(ExtensionOID.BASIC_CONSTRAINTS),
            f"not a taonet {what}: No .*BasicConstraints",
        ),
        ("no-key-usage", without(ExtensionOID.KEY_USAGE), f"not a taonet {what}: No .*KeyUsage"),
        (
            "key-usage-cert-sign",
            ext(usage(digital_signature=True, key_cert_sign=True)),
            f"{what} key usage allows signing certificates or CRLs",
        ),
        (
            "key-usage-crl-sign",
            ext(usage(digital_signature=True, crl_sign=True)),
            f"{what} key usage allows signing certificates or CRLs",
        ),
        (
            "key-usage-no-digital-signature",
            ext(usage(key_encipherment=True)),
            f"{what} key usage does not include digitalSignature",
        ),
        (
            "signed-sha384-by-p256-key",
            evolve(hash=hashes.SHA384()),
            f"{what} is not signed with ecdsa-with-SHA256, the algorithm of this domain",
        ),
        (
            "signed-sha512",
            evolve(hash=hashes.SHA512()),
            f"{what} is not signed with ecdsa-with-SHA256",
        ),
        (
            # Signed part says SHA-384, outer label SHA-256, signature made with SHA-256:
            # a verifier that trusts the outer label (as the old one did) accepts it.
            "outer-algorithm-differs",
            evolve(hash=hashes.SHA384(), outer_algorithm=ECDSA_WITH_SHA256),
            f"{what} outer signature algorithm differs from the signed one",
        ),
        (
            "signature-bit-string-unused-bits",
            evolve(unused_bits=1),
            f"{what} signature BIT STRING declares 1 unused bits",
        ),
        ("alt-names-twice", duplicate_alt_names, "Duplicate .* extension found"),
        (
            "expired",
            lambda f: attrs.evolve(f, not_before=f.not_before - 60 * DAY, not_after=f.not_before),
            f"{what} expired at",
        ),
        (
            "not-yet-valid",
            lambda f: attrs.evolve(f, not_before=f.not_after - DAY),
            f"{what} is not valid until",
        ),
    ]


# -- program certificates ---------------------------------------------------------

OTHER_PROGRAM = PROGRAM.extend(auth.PrinExt("Other", ()))
PROGRAM_URI = certs.principal_uri("program", PROGRAM)

PROGRAM_CASES = [
    *end_entity_cases("program certificate"),
    (
        "issuer-another-name",
        evolve(issuer=OTHER_NAME),
        "program certificate issuer is not the policy certificate",
    ),
    (
        "eku-code-signing",
        ext(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])),
        "program certificate is not for TLS use",
    ),
    (
        "eku-server-only",
        ext(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
        "program certificate is not for TLS use",
    ),
    (
        "no-eku",
        without(ExtensionOID.EXTENDED_KEY_USAGE),
        "not a taonet program certificate: No .*ExtendedKeyUsage",
    ),
    (
        "ed25519-key",
        evolve(public_key=ed25519.Ed25519PrivateKey.generate().public_key()),
        "program certificate does not certify an ECDSA P-256/P-384 key",
    ),
    (
        "p521-key",
        evolve(public_key=ec.generate_private_key(ec.SECP521R1()).public_key()),
        "program certificate does not certify an ECDSA P-256/P-384 key",
    ),
    ("no-alt-names", without(SAN), "certificate names no taonet principal"),
    ("dns-name-only", uris(), "certificate names no taonet principal"),
    (
        "two-names",  # which one would a peer believe?
        uris(PROGRAM_URI, certs.principal_uri("program", OTHER_PROGRAM)),
        "certificate holds 2 taonet: URIs, expected one",
    ),
    (
        "two-names-scheme-in-capitals",  # URI schemes are case-insensitive (Go lowers them)
        uris(PROGRAM_URI, "TAONET" + certs.principal_uri("program", OTHER_PROGRAM)[6:]),
        "certificate holds 2 taonet: URIs, expected one",
    ),
    (
        "host-role",  # the policy key vouched for a host's key, not a program
        uris(PROGRAM_URI.replace("taonet:program:", "taonet:host:")),
        "certificate is for a taonet host, not a program",
    ),
    (
        "policy-role",
        uris(PROGRAM_URI.replace("taonet:program:", "taonet:policy:")),
        "certificate is for a taonet policy, not a program",
    ),
    (
        "unknown-role",
        uris(PROGRAM_URI.replace("taonet:program:", "taonet:admin:")),
        "certificate's taonet: URI has no known role",
    ),
    (
        "no-role",
        uris("taonet:" + PROGRAM_URI.split(":", 2)[2]),
        "certificate's taonet: URI has no known role",
    ),
    (
        "lower-case-escapes",
        uris(PROGRAM_URI.replace("%5B", "%5b")),
        "certificate's taonet: URI is not in its canonical form",
    ),
    (
        "brackets-unescaped",
        uris("taonet:program:" + str(PROGRAM)),
        "certificate's taonet: URI is not in its canonical form",
    ),
    (
        "parentheses-escaped",
        uris(PROGRAM_URI.replace("(", "%28")),
        "certificate's taonet: URI is not in its canonical form",
    ),
    (
        "not-utf8",
        uris("taonet:program:key(%FF)"),
        "certificate's taonet: URI names no principal: ",
    ),
    (
        "not-a-principal",
        uris("taonet:program:true"),
        "certificate's taonet: URI names no principal: ",
    ),
    ("empty-name", uris("taonet:program:"), "URI names no principal: "),
    (
        "retired-profile-extension",  # any extension of the first profile, next to a good name
        ext(x509.UnrecognizedExtension(RETIRED_TEXT, str(PROGRAM).encode())),
        rf"program certificate is of taonet's retired profile .*{RETIRED_ARC}\.3\b",
    ),
]


def test_the_unchanged_program_certificate_passes() -> None:
    der = FACTORY.program_certificate(PROGRAM_KEY, PROGRAM, now_ns=NOW)
    assert certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW).principal == PROGRAM


@pytest.mark.parametrize(
    ("change", "error"), [c[1:] for c in PROGRAM_CASES], ids=[c[0] for c in PROGRAM_CASES]
)
def test_program_certificate_wrong_in_one_field(change: Change, error: str) -> None:
    der = FACTORY.sign(change(FACTORY.program_fields(PROGRAM_KEY, PROGRAM, now_ns=NOW)))
    assert_signed_by_policy(der)
    with pytest.raises(AuthenticationError, match=error):
        certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW)


@pytest.mark.parametrize(
    ("eku", "use", "error"),
    [
        ([ExtendedKeyUsageOID.SERVER_AUTH], "client", "not for TLS client"),
        ([ExtendedKeyUsageOID.CLIENT_AUTH], "server", "not for TLS server"),
    ],
)
def test_program_certificate_for_the_other_tls_side(
    eku: list[x509.ObjectIdentifier], use: str, error: str
) -> None:
    fields = FACTORY.program_fields(PROGRAM_KEY, PROGRAM, now_ns=NOW)
    der = FACTORY.sign(fields.with_extension(x509.ExtendedKeyUsage(eku)))
    other = "server" if use == "client" else "client"
    certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW, usage=other)
    with pytest.raises(AuthenticationError, match=error):
        certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW, usage=use)


def test_p384_policy_key_signs_only_with_sha384() -> None:
    key = Signer.generate("P-384").public_key_der()
    fields = P384.program_fields(key, PROGRAM, now_ns=NOW)
    assert certs.verify_program_certificate(P384.anchor, P384.sign(fields), now_ns=NOW)
    der = P384.sign(attrs.evolve(fields, hash=hashes.SHA256()))
    assert_signed_by_policy(der, P384)
    with pytest.raises(AuthenticationError, match="not signed with ecdsa-with-SHA384"):
        certs.verify_program_certificate(P384.anchor, der, now_ns=NOW)
    der = P384.sign(attrs.evolve(fields, hash=hashes.SHA256(), outer_algorithm=ECDSA_WITH_SHA384))
    with pytest.raises(AuthenticationError, match="outer signature algorithm differs"):
        certs.verify_program_certificate(P384.anchor, der, now_ns=NOW)


# -- host certificates --------------------------------------------------------------

HOST_CASES = [
    *end_entity_cases("host certificate"),
    (
        "issuer-another-name",
        evolve(issuer=OTHER_NAME),
        "host certificate issuer is not the policy certificate subject",
    ),
    (
        "eku-tls",  # a host's key signs attestations; a TLS peer must not take it
        ext(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
        "host certificate has an extended key usage",
    ),
    (
        "eku-retired-host-usage",  # the first profile's id-taonet-host
        ext(x509.ExtendedKeyUsage([RETIRED_HOST])),
        rf"host certificate is of taonet's retired profile .*{RETIRED_ARC}\.2\b",
    ),
    (
        "another-key",
        evolve(public_key=ec.generate_private_key(ec.SECP256R1()).public_key()),
        "host certificate certifies a different key than the signer's",
    ),
    (
        "principal-of-another-signer-type",
        uris(certs.principal_uri("host", auth.principal_for_key("tpm2", HOST_KEY))),
        "host certificate names another principal than key",
    ),
    (
        "program-role",  # the policy key vouched for a program of that name, not a host
        uris(certs.principal_uri("program", auth.key_principal(HOST_KEY))),
        "certificate is for a taonet program, not a host",
    ),
    ("no-principal", without(SAN), "certificate names no taonet principal"),
    (
        "two-names",
        uris(
            certs.principal_uri("host", auth.key_principal(HOST_KEY)),
            certs.principal_uri("host", auth.principal_for_key("tpm2", HOST_KEY)),
        ),
        "certificate holds 2 taonet: URIs",
    ),
]


def test_the_unchanged_host_certificate_passes() -> None:
    der = FACTORY.host_certificate(HOST_KEY, now_ns=NOW)
    FACTORY.anchor.verify_host_certificate(der, host_key_der=HOST_KEY, now_ns=NOW)


@pytest.mark.parametrize(
    ("change", "error"), [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES]
)
def test_host_certificate_wrong_in_one_field(change: Change, error: str) -> None:
    der = FACTORY.sign(change(FACTORY.host_fields(HOST_KEY, now_ns=NOW)))
    assert_signed_by_policy(der)
    with pytest.raises(AuthenticationError, match=error):
        FACTORY.anchor.verify_host_certificate(der, host_key_der=HOST_KEY, now_ns=NOW)


@pytest.mark.parametrize(
    ("name", "change", "error"),
    [
        c
        for c in HOST_CASES
        if c[0] in ("ca-flag", "key-usage-cert-sign", "unknown-critical-extension")
    ],
)
def test_attestation_rooted_in_a_bad_host_certificate_is_refused(
    name: str, change: Change, error: str
) -> None:
    # The same certificates, stapled as the root endorsement of a real attestation.
    del name
    endorsement = FACTORY.sign(change(FACTORY.host_fields(HOST_KEY, now_ns=NOW)))
    att = attest(HOST, auth.Pred("Ready", ()), now_ns=NOW, root_endorsement=endorsement)
    with pytest.raises(AuthenticationError, match=error):
        validate(att, now_ns=NOW, policy_cert=FACTORY.anchor)
    good = attrs.evolve(att, root_endorsement=FACTORY.host_certificate(HOST_KEY, now_ns=NOW))
    assert validate(good, now_ns=NOW, policy_cert=FACTORY.anchor).signer == auth.key_principal(
        HOST_KEY
    )


# -- the policy certificate -----------------------------------------------------------

POLICY_CASES = [
    (
        "not-a-ca",
        ext(x509.BasicConstraints(ca=False, path_length=None)),
        "policy certificate is not a CA certificate",
    ),
    (
        "no-basic-constraints",
        without(ExtensionOID.BASIC_CONSTRAINTS),
        "policy certificate has no basicConstraints",
    ),
    (
        "not-self-issued",
        evolve(issuer=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])),
        "policy certificate is not self-issued",
    ),
    ("signed-sha512", evolve(hash=hashes.SHA512()), "policy certificate is not signed with"),
    (
        "outer-algorithm-differs",
        evolve(hash=hashes.SHA384(), outer_algorithm=ECDSA_WITH_SHA256),
        "policy certificate outer signature algorithm differs from the signed one",
    ),
    (
        "signature-bit-string-unused-bits",
        evolve(unused_bits=2),
        "policy certificate signature BIT STRING declares 2 unused bits",
    ),
    (
        "expired",
        lambda f: attrs.evolve(f, not_before=f.not_before - 60 * DAY, not_after=f.not_before),
        "policy certificate expired at",
    ),
]


@pytest.mark.parametrize(
    ("change", "error"), [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES]
)
def test_policy_certificate_wrong_in_one_field(change: Change, error: str) -> None:
    fields = FACTORY.policy_fields(now_ns=NOW)
    assert certs.PolicyAnchor(FACTORY.sign(fields), now_ns=NOW).public_key_der == (
        FACTORY.signer.public_key_der()
    )
    der = FACTORY.sign(change(fields))
    assert_signed_by_policy(der)
    with pytest.raises(AuthenticationError, match=error):
        certs.PolicyAnchor(der, now_ns=NOW)


def test_policy_certificate_on_another_curve() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    fields = FACTORY.policy_fields(now_ns=NOW)
    der = FACTORY.sign(attrs.evolve(fields, public_key=key.public_key(), signing_key=key))
    with pytest.raises(AuthenticationError, match="does not hold an ECDSA P-256 or P-384 key"):
        certs.PolicyAnchor(der, now_ns=NOW)


# -- CRLs -----------------------------------------------------------------------------

CrlChange = Callable[[CrlFields], CrlFields]


def crl_ext(value: x509.ExtensionType, *, critical: bool | None = None) -> CrlChange:
    return lambda f: f.with_extension(value, critical=critical)


def crl_evolve(**changes: object) -> CrlChange:
    return lambda f: attrs.evolve(f, **changes)  # type: ignore[arg-type]


def critical_entry(f: CrlFields) -> CrlFields:
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(77)
        .revocation_date(f.this_update)
        .add_extension(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), critical=True)
        .build()
    )
    return attrs.evolve(f, revoked=(*f.revoked, entry))


CRL_CASES: list[tuple[str, CrlChange, str]] = [
    (
        "another-issuer",
        crl_evolve(issuer=OTHER_NAME),
        "CRL issuer is not the policy certificate subject",
    ),
    (
        "unknown-critical-extension",
        crl_ext(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), critical=True),
        "CRL has an unknown critical extension 1.3.6.1.4.1.55555.1",
    ),
    (
        "delta-crl",  # a delta CRL lists only changes: taonet does not read those
        crl_ext(x509.DeltaCRLIndicator(3), critical=True),
        "CRL has an unknown critical extension 2.5.29.27",
    ),
    (
        "no-crl-number",
        lambda f: f.without_extension(ExtensionOID.CRL_NUMBER),
        "CRL has no cRLNumber extension",
    ),
    ("crl-number-0", crl_ext(x509.CRLNumber(0)), "CRL number 0 is not from 1 to 2"),
    (
        "crl-number-over-20-octets",
        crl_ext(x509.CRLNumber(1 << 159)),
        f"CRL number {1 << 159} is not from 1 to 2",
    ),
    ("no-next-update", crl_evolve(next_update=None), "CRL has no nextUpdate"),
    (
        "next-update-before-this-update",
        lambda f: attrs.evolve(f, next_update=f.this_update - _dt.timedelta(seconds=1)),
        "CRL nextUpdate is not after its thisUpdate",
    ),
    ("version-1", crl_evolve(version=1), "CRL is not version 2"),
    (
        "another-algorithm-sha384",
        crl_evolve(hash=hashes.SHA384()),
        "CRL is not signed with ecdsa-with-SHA256, the algorithm of this domain",
    ),
    (
        "another-algorithm-sha512",
        crl_evolve(hash=hashes.SHA512()),
        "CRL is not signed with ecdsa-with-SHA256",
    ),
    (
        "outer-algorithm-differs",
        crl_evolve(hash=hashes.SHA384(), outer_algorithm=ECDSA_WITH_SHA256),
        "Inner and outer signature algorithms do not match",
    ),
    (
        "signature-bit-string-unused-bits",
        crl_evolve(unused_bits=1),
        "CRL signature BIT STRING declares 1 unused bits",
    ),
    ("entry-with-critical-extension", critical_entry, "CRL entry 77 has a critical extension"),
]


def test_the_unchanged_crl_passes() -> None:
    fields = FACTORY.crl_fields([5, 9], now_ns=NOW)
    listed = certs.verify_crl(FACTORY.anchor, FACTORY.sign_crl(fields), now_ns=NOW)
    assert listed.serials == {5, 9}


@pytest.mark.parametrize(
    ("change", "error"), [c[1:] for c in CRL_CASES], ids=[c[0] for c in CRL_CASES]
)
def test_crl_wrong_in_one_field(change: CrlChange, error: str) -> None:
    der = FACTORY.sign_crl(change(FACTORY.crl_fields([5, 9], now_ns=NOW)))
    assert_signed_by_policy(der)
    with pytest.raises(AuthenticationError, match=error):
        certs.verify_crl(FACTORY.anchor, der, now_ns=NOW)
