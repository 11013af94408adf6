"""Checking a TPM's endorsement key: its certificate against manufacturer CAs, its
public area against that certificate and the TCG templates. Pure; clock passed in.

:func:`check_ek_certificate` walks up from the EK certificate through the CA
certificates the domain lists (roots and intermediates: swtpm's local CA, like real
manufacturers, signs EK certificates with an intermediate) to a self-signed one of
the list. At each step the issuer is a listed certificate whose subject is the
child's issuer name *and* whose key verifies the child's signature
(``verify_directly_issued_by``): a CA that merely has the same name, with another
key, is never taken. Each issuer must be a CA (basicConstraints CA:TRUE, within its
path length) whose key usage, if present, includes keyCertSign; every certificate
in the chain must be within its validity window at ``now_ns`` and carry no critical
extension other than basicConstraints, keyUsage, extendedKeyUsage and
subjectAltName (name constraints are not processed, so a CA that sets them is
refused rather than trusted beyond them). The EK certificate
must not be a CA; its key usage, when present, must allow what an EK does with its
key per the TCG EK Credential Profile (keyEncipherment for an RSA EK, which decrypts
MakeCredential's seed; keyAgreement for an ECC EK, which does ECDH) so that a
signing end-entity certificate a listed CA issued for something else is not taken for
an EK; and its extended key usage, when present (swtpm puts one), must include
tcg-kp-EKCertificate (2.23.133.8.1). Either extension may be missing: the profile
does not require the EKU and real vendors' EK certificates often lack it (and some
lack key usage), so an EK certificate with neither is accepted on its chain alone:
the trust is in the manufacturer CAs the domain lists, which should be CAs that issue
EK certificates only.

:func:`check_ek_public` then ties the public area the host sent to the certificate:
same key, and made from a known TCG EK template (what MakeCredential needs and the
certificate does not say).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from taonet._errors import AuthenticationError, CodecError
from taonet.attestation._tpm2_credential import (
    EkTemplate,
    TpmPublic,
    match_ek_template,
    parse_public,
)

__all__ = [
    "EK_CERTIFICATE_EKU",
    "MAX_CHAIN",
    "MAX_EK_CERTIFICATE",
    "check_ek_certificate",
    "check_ek_public",
    "load_ek_certificate",
]

#: tcg-kp-EKCertificate.
EK_CERTIFICATE_EKU: Final = x509.ObjectIdentifier("2.23.133.8.1")
#: Most certificates from the EK certificate to the root.
MAX_CHAIN: Final = 5
#: The critical extensions a certificate of the chain may carry (what these checks
#: process, and the subject alternative name TCG EK certificates mark critical); any
#: other critical extension (name constraints, policy constraints...) is refused, as
#: RFC 5280 asks of a verifier that does not process it.
_KNOWN_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)
#: Largest EK certificate read (real ones are about 1 kB).
MAX_EK_CERTIFICATE: Final = 8192


def _bounded_name(name: x509.Name) -> str:
    text = name.rfc4514_string()
    return text if len(text) <= 200 else text[:200] + "..."


def load_ek_certificate(der: bytes) -> x509.Certificate:
    """Parse an EK certificate (DER, bounded): CodecError when it does not parse."""
    if len(der) > MAX_EK_CERTIFICATE:
        raise CodecError(f"EK certificate: {len(der)} bytes is over {MAX_EK_CERTIFICATE}")
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
        # Parsed lazily by cryptography: read here, so that a malformed name or
        # extension (ValueError, DuplicateExtension) is a CodecError, not a crash
        # in the middle of the checks.
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.extensions
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise CodecError(f"EK certificate: malformed: {str(exc)[:200]}") from None
    return cert


def _check_critical(cert: x509.Certificate, what: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise AuthenticationError(
                f"{what} has a critical extension this check does not process "
                f"({ext.oid.dotted_string})"
            )


def _check_window(cert: x509.Certificate, now: _dt.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AuthenticationError(
            f"{what} {_bounded_name(cert.subject)} is not valid now (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
        )


def _ca_path_length(cert: x509.Certificate) -> int | None:
    """The CA's path length constraint; AuthenticationError unless it is a CA for
    signing certificates."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise AuthenticationError(
            f"manufacturer certificate {_bounded_name(cert.subject)} is not a CA"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.key_cert_sign:
            raise AuthenticationError(
                f"manufacturer CA {_bounded_name(cert.subject)} may not sign certificates"
            )
    return constraints.path_length


def _check_ek_key_usage(ek_cert: x509.Certificate) -> None:
    """keyEncipherment (RSA) or keyAgreement (ECC) when key usage is present."""
    try:
        usage = ek_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    try:
        key = ek_cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AuthenticationError(f"EK certificate: unusable key: {str(exc)[:200]}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not usage.key_encipherment:
            raise AuthenticationError(
                "the EK certificate's key usage lacks keyEncipherment (an RSA EK's)"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not usage.key_agreement:
            raise AuthenticationError(
                "the EK certificate's key usage lacks keyAgreement (an ECC EK's)"
            )
    else:
        raise AuthenticationError("the EK certificate's key is neither RSA nor ECC")


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def check_ek_certificate(
    ek_cert: x509.Certificate, manufacturer_cas: Sequence[x509.Certificate], *, now_ns: int
) -> list[x509.Certificate]:
    """Check ``ek_cert`` against the trusted ``manufacturer_cas`` (module docstring).

    Returns the chain, EK certificate first, root last. AuthenticationError saying
    what failed otherwise.
    """
    now = _dt.datetime.fromtimestamp(now_ns / 1e9, tz=_dt.UTC)
    try:
        constraints = ek_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if constraints.ca:
            raise AuthenticationError("the EK certificate is a CA certificate")
    try:
        eku = ek_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if EK_CERTIFICATE_EKU not in eku:
            raise AuthenticationError(
                "the EK certificate's extended key usage lacks tcg-kp-EKCertificate (2.23.133.8.1)"
            )
    _check_ek_key_usage(ek_cert)
    _check_window(ek_cert, now, "EK certificate")
    _check_critical(ek_cert, "the EK certificate")
    chain = [ek_cert]
    current = ek_cert
    while True:
        candidates = [ca for ca in manufacturer_cas if ca.subject == current.issuer]
        issuer = next((ca for ca in candidates if _issued_by(current, ca)), None)
        if issuer is None:
            what = "the EK certificate" if current is ek_cert else _bounded_name(current.subject)
            if candidates:
                raise AuthenticationError(
                    f"{what} is not signed by the trusted manufacturer CA named "
                    f"{_bounded_name(current.issuer)} (a CA of that name with another key?)"
                )
            raise AuthenticationError(
                f"{what} was issued by {_bounded_name(current.issuer)}, which is not a "
                "manufacturer CA this domain trusts"
            )
        path_length = _ca_path_length(issuer)
        # CAs between this issuer and the EK certificate.
        below = len(chain) - 1
        if path_length is not None and below > path_length:
            raise AuthenticationError(
                f"manufacturer CA {_bounded_name(issuer.subject)} allows {path_length} CA(s) "
                f"below it, not {below}"
            )
        _check_window(issuer, now, "manufacturer CA")
        _check_critical(issuer, f"manufacturer CA {_bounded_name(issuer.subject)}")
        if issuer.subject == issuer.issuer and _issued_by(issuer, issuer):
            chain.append(issuer)
            return chain
        if issuer in chain or len(chain) >= MAX_CHAIN:
            raise AuthenticationError("the EK certificate chain does not end in a root CA")
        chain.append(issuer)
        current = issuer


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_ek_public(ek_cert: x509.Certificate, ek_public: bytes) -> tuple[TpmPublic, EkTemplate]:
    """Parse the EK's TPMT_PUBLIC and check it: the certificate's key, a TCG template.

    CodecError for bytes that do not parse; AuthenticationError for another key or an
    area that matches no template.
    """
    ek = parse_public(ek_public, what="EK public area")
    try:
        cert_key = _spki(ek_cert)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AuthenticationError(f"EK certificate: unusable key: {exc}") from None
    if ek.public_key_der() != cert_key:
        raise AuthenticationError("the EK public area is not the EK certificate's key")
    return ek, match_ek_template(ek)
