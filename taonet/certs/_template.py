"""The signed part (TBSCertificate) of a program certificate, encoded directly.

``cryptography``'s ``CertificateBuilder`` builds Python objects for every name and
extension and re-encodes them on each certificate: most of what issuing one costs
besides the ECDSA signature. A program certificate has one fixed shape (see
``taonet.certs._program``), so its DER is written here from its parts: the issuer
name and the authority key identifier come from the policy anchor, the four other
extensions' bytes never change, and only the serial, the validity window, the
subject's names, the key and its identifier differ.

The output is byte for byte what ``CertificateBuilder`` writes for the same fields
(``tests/certs/test_template.py`` compares the two over generated inputs), so
verifiers, OpenSSL and Go see no difference. Pure: no I/O.
"""

from __future__ import annotations

import datetime as _dt
import functools
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from taonet.certs._der import TAG_INTEGER, TAG_SEQUENCE, encode

__all__ = ["program_tbs", "signed_certificate"]

_TAG_BOOLEAN: Final = 0x01
_TAG_OCTET_STRING: Final = 0x04
_TAG_OID: Final = 0x06
_TAG_UTF8_STRING: Final = 0x0C
_TAG_UTC_TIME: Final = 0x17
_TAG_GENERALIZED_TIME: Final = 0x18
_TAG_SET: Final = 0x31
_TAG_CONTEXT_3: Final = 0xA3  # [3] EXPLICIT, constructed: the extensions
#: ``[0] EXPLICIT INTEGER 2``: X.509 v3.
_VERSION_3: Final = bytes.fromhex("a003020102")
_CRITICAL: Final = encode(_TAG_BOOLEAN, b"\xff")


def _oid(dotted: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in dotted.dotted_string.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return encode(_TAG_OID, bytes(body))


def _extension(oid: x509.ObjectIdentifier | bytes, value: bytes, *, critical: bool) -> bytes:
    """One Extension; ``oid`` as an object or already encoded."""
    flag = _CRITICAL if critical else b""
    encoded = oid if isinstance(oid, bytes) else _oid(oid)
    return encode(TAG_SEQUENCE, encoded + flag + encode(_TAG_OCTET_STRING, value))


#: basicConstraints CA:FALSE (critical), keyUsage digitalSignature (critical) and
#: extendedKeyUsage serverAuth, clientAuth: the same in every program certificate.
_FIXED_HEAD: Final = (
    _extension(
        ExtensionOID.BASIC_CONSTRAINTS,
        x509.BasicConstraints(ca=False, path_length=None).public_bytes(),
        critical=True,
    )
    + _extension(
        ExtensionOID.KEY_USAGE,
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ).public_bytes(),
        critical=True,
    )
    + _extension(
        ExtensionOID.EXTENDED_KEY_USAGE,
        x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        ).public_bytes(),
        critical=False,
    )
)
_SAN: Final = _oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
_SKI: Final = _oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
_DNS_NAME: Final = 0x82  # GeneralName [2] IA5String
_URI: Final = 0x86  # GeneralName [6] IA5String


def _time(when: _dt.datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, whole seconds."""
    if when.year < 2050:
        return encode(_TAG_UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode())
    return encode(_TAG_GENERALIZED_TIME, f"{when.year:04d}{when:%m%d%H%M%S}Z".encode())


_ORGANIZATION: Final = _oid(NameOID.ORGANIZATION_NAME)
_COMMON_NAME: Final = _oid(NameOID.COMMON_NAME)


def _rdn(oid: bytes, value: str) -> bytes:
    attribute = encode(TAG_SEQUENCE, oid + encode(_TAG_UTF8_STRING, value.encode()))
    return encode(_TAG_SET, attribute)


def _name(common_name: str, organization: str) -> bytes:
    """``taonet.certs._profile._name``: O (when not empty) then CN, UTF8String each."""
    rdns = _rdn(_ORGANIZATION, organization[:64]) if organization else b""
    return encode(TAG_SEQUENCE, rdns + _rdn(_COMMON_NAME, common_name[:64] or "-"))


@functools.lru_cache(maxsize=16)
def _issuer_parts(policy_cert_der: bytes) -> tuple[bytes, bytes]:
    """The issuer Name and the authorityKeyIdentifier extension for a policy certificate.

    Keyed by the policy certificate's exact bytes (the anchor checked them).
    """
    cert = x509.load_der_x509_certificate(policy_cert_der)
    policy_key = cert.public_key()
    assert isinstance(policy_key, ec.EllipticCurvePublicKey)  # the anchor checked it
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(policy_key).public_bytes()
    return cert.subject.public_bytes(), _extension(
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER, aki, critical=False
    )


def program_tbs(
    *,
    policy_cert_der: bytes,
    algorithm: bytes,
    key: ec.EllipticCurvePublicKey,
    serial: int,
    not_before: _dt.datetime,
    not_after: _dt.datetime,
    common_name: str,
    organization: str,
    hostname: str,
    uri: str,
) -> bytes:
    """The TBSCertificate of a program certificate with these fields (module docstring).

    ``algorithm`` is the signature's AlgorithmIdentifier DER; ``serial`` positive;
    ``hostname`` and ``uri`` ASCII (IA5String); the times in UTC.
    """
    issuer, aki = _issuer_parts(policy_cert_der)
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key).public_bytes()
    san = encode(
        TAG_SEQUENCE,
        encode(_DNS_NAME, hostname.encode("ascii")) + encode(_URI, uri.encode("ascii")),
    )
    extensions = (
        _FIXED_HEAD
        + _extension(_SAN, san, critical=False)
        + _extension(_SKI, ski, critical=False)
        + aki
    )
    serial_bytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return encode(
        TAG_SEQUENCE,
        _VERSION_3
        + encode(TAG_INTEGER, serial_bytes)
        + algorithm
        + issuer
        + encode(TAG_SEQUENCE, _time(not_before) + _time(not_after))
        + _name(common_name, organization)
        + spki
        + encode(_TAG_CONTEXT_3, encode(TAG_SEQUENCE, extensions)),
    )


def signed_certificate(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """``SEQUENCE { tbs, algorithm, BIT STRING signature }`` (no unused bits)."""
    return encode(TAG_SEQUENCE, tbs + algorithm + encode(0x03, b"\x00" + signature))
