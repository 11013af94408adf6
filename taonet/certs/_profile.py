"""X.509 profile for certificates issued by a domain's policy key.

Three kinds of certificate exist, all ECDSA with SHA-256 (SHA-384 for P-384 keys):

* the **policy certificate**: self-signed by the policy key; a CA
  (``basicConstraints CA:TRUE, pathlen:0``; key usages keyCertSign, cRLSign). It is
  the only trust root of a domain.
* a **host certificate** (carried as an attestation's ``root_endorsement``): the policy
  key certifies that a Tao host's attestation key is a host of this domain. Not a CA;
  key usage digitalSignature; extended key usage id-taonet-host.
* program certificates (for Tao channels) arrive with the channel layer and follow the
  same rules.

Every issued certificate has a random 159-bit serial number (the original CloudProxy
always used 0), a validity window, a subject common name with the human-readable
principal, and the principal's binary auth encoding in the extension
``id-taonet-principal`` (OID below, non-critical).

Verification of a host certificate checks, in this order: parse; the unsigned
envelope (canonical DER, outer signature algorithm identical to the signed one and to
the policy key's: ecdsa-with-SHA256 for P-256, -SHA384 for P-384, see
``taonet.certs._der``); the signature by the policy key; issuer name; X.509 version 3;
a serial number from 1 to 2**159 - 1; no critical extension other than
basicConstraints, keyUsage, extendedKeyUsage and subjectAltName; not a CA; key usage
digitalSignature without keyCertSign or cRLSign; extended key usage id-taonet-host;
subject key equal to the key the caller expects; principal extension equal to that
key's principal; then the validity window against the caller's clock. The policy
certificate must be self-issued and self-signed (same envelope rules), a CA, with a
P-256 or P-384 key, and valid at the caller's clock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet.certs._der import (
    ECDSA_WITH_SHA256,
    ECDSA_WITH_SHA384,
    TAG_CONTEXT_0,
    TAG_INTEGER,
    check_envelope,
    read,
)
from taonet.crypto import Signer

__all__ = [
    "OID_TAONET_HOST",
    "OID_TAONET_PRINCIPAL",
    "PolicyAnchor",
    "certificate_principal",
    "issue_host_certificate",
    "load_certificate",
    "make_policy_certificate",
    "public_key_der",
    "verify_host_certificate",
    "verify_policy_certificate",
]

_T = TypeVar("_T")

# 2.25.<uuid> arcs need no registration (ITU-T X.667).
_ARC: Final = "2.25.184001271471987179187705270170102784850"
OID_TAONET_PRINCIPAL: Final = x509.ObjectIdentifier(_ARC + ".1")
OID_TAONET_HOST: Final = x509.ObjectIdentifier(_ARC + ".2")

MAX_CERT_BYTES: Final = 64 * 1024
#: Serial numbers are positive and at most 20 octets in DER (RFC 5280).
SERIAL_LIMIT: Final = 1 << 159
# The one signature algorithm each policy key curve uses (as Go's crypto/x509 picks).
_SIGNATURES: Final[dict[str, tuple[type[hashes.SHA256 | hashes.SHA384], bytes]]] = {
    "secp256r1": (hashes.SHA256, ECDSA_WITH_SHA256),
    "secp384r1": (hashes.SHA384, ECDSA_WITH_SHA384),
}
# Extensions a certificate may mark critical: those verification (or TLS) processes.
_KNOWN_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)


def _hash_for(signer: Signer) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if signer.key_type == "ecdsap384" else hashes.SHA256()


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """digitalSignature, plus keyCertSign and cRLSign for the policy CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _random_serial() -> int:
    # Positive, at most 20 octets in DER, never 0.
    return secrets.randbits(159) | 1


def _utc(ns: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)


def _name(common_name: str, organization: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "-")]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]))
    return x509.Name(attrs)


def public_key_der(cert: x509.Certificate) -> bytes:
    """The certificate's subject public key as PKIX DER."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_certificate(der: bytes, *, what: str = "certificate") -> x509.Certificate:
    """Parse a DER certificate; raise CodecError on anything else.

    A serial number of zero or below is refused here, before ``cryptography``
    parses it (which would warn that a later release refuses it).
    """
    if not isinstance(der, bytes) or len(der) > MAX_CERT_BYTES:
        raise CodecError(f"{what}: not a DER certificate of at most {MAX_CERT_BYTES} bytes")
    if not _serial_is_positive(der):
        raise CodecError(f"{what}: serial number is zero or negative")
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise CodecError(f"{what}: malformed DER certificate: {exc}") from None


def _serial_is_positive(der: bytes) -> bool:
    """False only for a certificate whose serial INTEGER reads as zero or negative.

    Anything this cannot find is left to the full parser, which refuses it.
    """
    try:
        _, start, _ = read(der)  # Certificate
        _, pos, _ = read(der, start)  # TBSCertificate
        tag, value_start, value_end = read(der, pos)
        if tag == TAG_CONTEXT_0:  # [0] version, then the serial
            tag, value_start, value_end = read(der, value_end)
    except CodecError:
        return True
    if tag != TAG_INTEGER:
        return True
    return int.from_bytes(der[value_start:value_end], "big", signed=True) > 0


def make_policy_certificate(
    signer: Signer,
    *,
    common_name: str,
    organization: str | None = None,
    now_ns: int,
    validity_days: int = 3650,
) -> bytes:
    """Create the self-signed policy certificate for ``signer`` (DER)."""
    name = _name(common_name, organization)
    pub = signer.private_key.public_key()
    principal = auth.key_principal(signer.public_key_der())
    not_before = _utc(now_ns) - _dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(_utc(now_ns) + _dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_TAONET_PRINCIPAL, auth.encode(principal)),
            critical=False,
        )
    )
    cert = builder.sign(signer.private_key, _hash_for(signer))
    return cert.public_bytes(serialization.Encoding.DER)


def issue_host_certificate(
    policy_signer: Signer,
    policy_cert_der: bytes,
    host_key_der: bytes,
    *,
    now_ns: int,
    validity_days: int = 365,
    signer_type: str = "key",
) -> bytes:
    """The policy key certifies a host attestation key (DER, PKIX) as a domain host.

    Returns the DER certificate to carry as ``root_endorsement``.
    """
    policy_cert = load_certificate(policy_cert_der, what="policy certificate")
    try:
        host_pub = serialization.load_der_public_key(host_key_der)
    except ValueError as exc:
        raise CodecError(f"host key: malformed public key: {exc}") from None
    if not isinstance(host_pub, ec.EllipticCurvePublicKey):
        raise CodecError("host key: not an ECDSA public key")
    principal = auth.principal_for_key(signer_type, host_key_der)
    not_before = _utc(now_ns) - _dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(str(principal), "taonet host"))
        .issuer_name(policy_cert.subject)
        .public_key(host_pub)
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(_utc(now_ns) + _dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([OID_TAONET_HOST]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                policy_signer.private_key.public_key()
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(OID_TAONET_PRINCIPAL, auth.encode(principal)),
            critical=False,
        )
    )
    cert = builder.sign(policy_signer.private_key, _hash_for(policy_signer))
    return cert.public_bytes(serialization.Encoding.DER)


def certificate_principal(cert: x509.Certificate) -> auth.Prin:
    """The principal carried in a certificate's id-taonet-principal extension."""
    try:
        ext = cert.extensions.get_extension_for_oid(OID_TAONET_PRINCIPAL)
    except x509.ExtensionNotFound:
        raise AuthenticationError("certificate has no taonet principal extension") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AuthenticationError("certificate principal extension is malformed")
    try:
        return auth.decode_prin(value.value)
    except CodecError as exc:
        raise AuthenticationError(f"certificate principal extension: {exc}") from None


@contextlib.contextmanager
def refusing_malformed(what: str) -> Iterator[None]:
    """Turn a parser's complaint about a certificate into AuthenticationError.

    ``cryptography`` parses certificate fields lazily, so a malformed extension,
    key or algorithm surfaces as ValueError or UnsupportedAlgorithm on first use.
    """
    try:
        yield
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        x509.DuplicateExtension,
    ) as exc:
        raise AuthenticationError(f"{what} is malformed or unsupported: {exc}") from None


def check_signed_by(
    der: bytes, tbs: bytes, issuer_key: ec.EllipticCurvePublicKey, *, what: str
) -> None:
    """Check that ``der`` (whose parsed signed part is ``tbs``) is signed by ``issuer_key``.

    First the bytes the signature does not cover: one canonical encoding, with the
    outer algorithm identical to the signed one and to the issuer key's (see
    ``taonet.certs._der``); then the ECDSA signature over ``tbs``.
    """
    hash_cls, algorithm = _SIGNATURES[issuer_key.curve.name]
    envelope = check_envelope(der, algorithm, what=what)
    if envelope.tbs != tbs:
        raise AuthenticationError(f"{what} is not canonical DER: the signed part differs")
    try:
        issuer_key.verify(envelope.signature, tbs, ec.ECDSA(hash_cls()))
    except InvalidSignature:
        raise AuthenticationError(f"{what} is not signed by this domain's policy key") from None


def check_end_entity(cert: x509.Certificate, *, what: str) -> None:
    """The checks every host and program certificate passes after its signature.

    X.509 version 3, a serial from 1 to 2**159 - 1, no critical extension this
    module does not process, basicConstraints present and not a CA, keyUsage
    present with digitalSignature and without keyCertSign or cRLSign.
    """
    if cert.version is not x509.Version.v3:
        raise AuthenticationError(f"{what} is X.509 {cert.version.name}, expected v3")
    if not 0 < cert.serial_number < SERIAL_LIMIT:
        raise AuthenticationError(
            f"{what} serial number {cert.serial_number} is not from 1 to 2**159 - 1"
        )
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise AuthenticationError(
                f"{what} has an unknown critical extension {ext.oid.dotted_string}"
            )
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise AuthenticationError(f"not a taonet {what}: {exc}") from None
    if basic.ca:
        raise AuthenticationError(f"a CA certificate is not a {what}")
    if not usage.digital_signature:
        raise AuthenticationError(f"{what} key usage does not include digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise AuthenticationError(f"{what} key usage allows signing certificates or CRLs")


def _window_ns(cert: x509.Certificate) -> tuple[int, int]:
    """A certificate's validity window in ns since the epoch (certificates count seconds)."""
    return (
        int(cert.not_valid_before_utc.timestamp()) * 1_000_000_000,
        int(cert.not_valid_after_utc.timestamp()) * 1_000_000_000,
    )


def _check_window(window: tuple[int, int], now_ns: int, what: str) -> None:
    not_before, not_after = window
    if now_ns < not_before:
        raise AuthenticationError(f"{what} is not valid until {_utc(not_before)}")
    if now_ns > not_after:
        raise AuthenticationError(f"{what} expired at {_utc(not_after)}")


def _policy_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SIGNATURES:
        raise AuthenticationError("policy certificate does not hold an ECDSA P-256 or P-384 key")
    return key


def _check_policy_profile(cert: x509.Certificate) -> None:
    if cert.issuer != cert.subject:
        raise AuthenticationError("policy certificate is not self-issued (issuer is not subject)")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise AuthenticationError("policy certificate has no basicConstraints") from None
    if not basic.ca:
        raise AuthenticationError("policy certificate is not a CA certificate")


def verify_policy_certificate(policy_cert_der: bytes, *, now_ns: int) -> x509.Certificate:
    """Check the self-signed policy certificate and return it parsed."""
    return PolicyAnchor(policy_cert_der, now_ns=now_ns).cert


def verify_host_certificate(
    cert_der: bytes,
    policy_cert_der: bytes,
    *,
    host_key_der: bytes,
    signer_type: str = "key",
    now_ns: int,
) -> x509.Certificate:
    """Check that ``cert_der`` is a host certificate from this policy key for ``host_key_der``.

    Raises AuthenticationError saying what failed. To check many, build a
    :class:`PolicyAnchor` once and use its method of the same name.
    """
    return PolicyAnchor(policy_cert_der, now_ns=now_ns).verify_host_certificate(
        cert_der, host_key_der=host_key_der, signer_type=signer_type, now_ns=now_ns
    )


class PolicyAnchor:
    """A domain's policy certificate, checked once, to verify many certificates against.

    Construction checks the self-signature and validity window. Host certificates
    that pass every check are remembered by their exact bytes (a bounded cache), so
    checking the same certificate again costs a dictionary look-up and the
    validity-window comparison, which is always redone against the caller's clock.
    """

    _CACHE_SIZE: Final = 1024

    def __init__(self, policy_cert_der: bytes, *, now_ns: int) -> None:
        try:
            cert = load_certificate(policy_cert_der, what="policy certificate")
        except CodecError as exc:
            raise AuthenticationError(str(exc)) from None
        self.der: Final = policy_cert_der
        self.cert: Final = cert
        with refusing_malformed("policy certificate"):
            self.public_key: Final = _policy_public_key(cert)
            self.public_key_der: Final = public_key_der(cert)
            check_signed_by(
                policy_cert_der,
                cert.tbs_certificate_bytes,
                self.public_key,
                what="policy certificate",
            )
            _check_policy_profile(cert)
            self._window = _window_ns(cert)
        self.check_window(now_ns)
        self._verified: OrderedDict[tuple[object, ...], Any] = OrderedDict()

    def check_window(self, now_ns: int) -> None:
        """Raise AuthenticationError unless the policy certificate is valid at ``now_ns``."""
        _check_window(self._window, now_ns, "policy certificate")

    def verify_host_certificate(
        self,
        cert_der: bytes,
        *,
        host_key_der: bytes,
        signer_type: str = "key",
        now_ns: int,
    ) -> x509.Certificate:
        """Check a host certificate from this policy key for ``host_key_der``."""
        self.check_window(now_ns)
        cert, window = self.remember(
            ("host", cert_der, host_key_der, signer_type),
            lambda: self._verify_host_windowed(cert_der, host_key_der, signer_type),
        )
        _check_window(window, now_ns, "host certificate")
        return cert

    def remember(self, key: tuple[object, ...], compute: Callable[[], _T]) -> _T:
        """``compute()``, remembered under ``key`` (bounded, least recently added out).

        For results of checks that depend only on the bytes in ``key``; failures
        (exceptions) are not remembered. Time-dependent checks stay with the caller.
        """
        try:
            value: _T = self._verified[key]
        except KeyError:
            value = compute()
            self._verified[key] = value
            if len(self._verified) > self._CACHE_SIZE:
                self._verified.popitem(last=False)
        return value

    def _verify_host_windowed(
        self, cert_der: bytes, host_key_der: bytes, signer_type: str
    ) -> tuple[x509.Certificate, tuple[int, int]]:
        with refusing_malformed("host certificate"):
            cert = self._verify_host_once(cert_der, host_key_der, signer_type)
            return cert, _window_ns(cert)

    def _verify_host_once(
        self, cert_der: bytes, host_key_der: bytes, signer_type: str
    ) -> x509.Certificate:
        try:
            cert = load_certificate(cert_der, what="host certificate")
        except CodecError as exc:
            raise AuthenticationError(str(exc)) from None
        check_signed_by(
            cert_der, cert.tbs_certificate_bytes, self.public_key, what="host certificate"
        )
        if cert.issuer != self.cert.subject:
            raise AuthenticationError(
                "host certificate issuer is not the policy certificate subject"
            )
        check_end_entity(cert, what="host certificate")
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or OID_TAONET_HOST not in eku:
            raise AuthenticationError("certificate is not a taonet host certificate")
        if public_key_der(cert) != host_key_der:
            raise AuthenticationError(
                "host certificate certifies a different key than the signer's"
            )
        expected = auth.principal_for_key(signer_type, host_key_der)
        if certificate_principal(cert) != expected:
            raise AuthenticationError(f"host certificate names another principal than {expected}")
        return cert
