"""X.509 profile for certificates issued by a domain's policy key.

Three kinds of certificate exist, all ECDSA with SHA-256 (SHA-384 for P-384 keys):

* the **policy certificate**: self-signed by the policy key; a CA
  (``basicConstraints CA:TRUE, pathlen:0``; key usages keyCertSign, cRLSign). It is
  the only trust root of a domain.
* a **host certificate** (carried as an attestation's ``root_endorsement``): the policy
  key certifies that a Tao host's attestation key is a host of this domain. Not a CA;
  key usage digitalSignature; no extended key usage. The host key is ECDSA, or for a
  ``tpm2`` host (a TPM's quote key) also RSA-2048, -3072 or -4096 with e = 65537.
* a **program certificate** (for Tao channels), see ``taonet.certs._program``.

Every issued certificate has a random 159-bit serial number (the original CloudProxy
always used 0), a validity window, a subject common name, and its role and principal
in one subjectAltName URI (non-critical), made by :func:`principal_uri`::

    taonet:<role>:<the principal's canonical text, percent-encoded>

with role ``policy``, ``host`` or ``program``, e.g.
``taonet:host:key(%5B9f86...%5D)``. Only standard X.509 fields are used, so the
common stacks parse these certificates: OpenSSL and Go's crypto/x509 (which refuses
an object identifier arc of 2**31 or more) are tested. The text form (the one the original
Go ``tao/auth`` prints and parses) keeps the name readable in ``openssl x509 -text``;
the verifier accepts only the one canonical spelling (:func:`principal_uri` of what
it parses), so a name has exactly one encoding. The role says what the policy key
vouched for: a host certificate is never taken for a program's, nor the other way
round.

Certificates of taonet's first profile carried the principal in private extensions
under ``2.25.184001271471987179187705270170102784850``, an arc Go cannot parse. They
are refused with a message that says so; the domain issues new ones (a program's
sealed state is provisioned anew by itself; a host needs a new host certificate).

Verification of a host certificate checks, in this order: parse; the unsigned
envelope (canonical DER, outer signature algorithm identical to the signed one and to
the policy key's: ecdsa-with-SHA256 for P-256, -SHA384 for P-384, see
``taonet.certs._der``); the signature by the policy key; issuer name; no extension
of the retired profile; X.509 version 3; a serial number from 1 to 2**159 - 1; no
critical extension other than basicConstraints, keyUsage, extendedKeyUsage and
subjectAltName; not a CA; key usage digitalSignature without keyCertSign or cRLSign;
no extended key usage; subject key equal to the key the caller expects; exactly one
``taonet:`` URI, of role ``host``, naming that key's principal; then the validity
window against the caller's clock. The policy certificate must be self-issued and
self-signed (same envelope rules), a CA, with a P-256 or P-384 key, and valid at the
caller's clock; its ``taonet:policy:`` URI is for people (taonet derives the policy
principal from the key), so a policy certificate of the first profile still loads.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import secrets
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, TypeVar, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet._tpm2_rsa import rsa_quote_key_problem
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
    "CertificateRole",
    "PolicyAnchor",
    "certificate_principal",
    "issue_host_certificate",
    "load_certificate",
    "make_policy_certificate",
    "principal_uri",
    "public_key_der",
    "verify_host_certificate",
    "verify_policy_certificate",
]

_T = TypeVar("_T")

#: What the policy key vouches for in a certificate: the role in its ``taonet:`` URI.
CertificateRole = Literal["policy", "host", "program"]
_ROLES: Final = frozenset(get_args(CertificateRole))
_SCHEME: Final = "taonet"
_DER: Final = serialization.Encoding.DER
_SPKI_FORMAT: Final = serialization.PublicFormat.SubjectPublicKeyInfo
# Left as they are in the URI (RFC 3986 sub-delims the text form uses a lot); every
# other character but letters, digits and "-._~" is percent-encoded (UTF-8).
_URI_SAFE: Final = "(),"
# The private arc of taonet's first profile (its principal, host and text-name
# extensions): Go's crypto/x509 cannot parse an arc this large.
_RETIRED_ARC: Final = "2.25.184001271471987179187705270170102784850."

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
        .add_extension(_principal_alt_name("policy", principal), critical=False)
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
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CodecError(f"host key: malformed public key: {str(exc)[:200]}") from None
    # A TPM 2.0 quote key may be RSA (the TPM signs with RSASSA) under the verifier's
    # rule (2048/3072/4096 bits, e = 65537); every other host key is ECDSA.
    if isinstance(host_pub, rsa.RSAPublicKey) and signer_type == "tpm2":
        problem = rsa_quote_key_problem(host_pub)
        if problem is not None:
            raise CodecError(f"host key: a tpm2 host's {problem}")
    elif not isinstance(host_pub, ec.EllipticCurvePublicKey):
        raise CodecError("host key: not an ECDSA public key (nor a tpm2 host's RSA key)")
    assert isinstance(host_pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    # The principal hashes the exact bytes: one key, one encoding, one principal (a
    # compressed point or RSA without NULL parameters would name the key otherwise).
    if host_pub.public_bytes(_DER, _SPKI_FORMAT) != bytes(host_key_der):
        raise CodecError("host key: not in canonical PKIX DER form")
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
        .add_extension(_principal_alt_name("host", principal), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                policy_signer.private_key.public_key()
            ),
            critical=False,
        )
    )
    cert = builder.sign(policy_signer.private_key, _hash_for(policy_signer))
    return cert.public_bytes(serialization.Encoding.DER)


def principal_uri(role: CertificateRole, principal: auth.Prin) -> str:
    """The subjectAltName URI of a ``role`` certificate naming ``principal``.

    ``taonet:<role>:<text>``, the text form percent-encoded (RFC 3986). ValueError
    for another role, or for a principal whose text does not read back as itself.
    """
    if role not in _ROLES:
        raise ValueError(f"role must be one of {sorted(_ROLES)}, not {role!r}")
    text = str(principal)
    read_back = _read_back if len(text) <= _REMEMBER_CHARS else _read_back.__wrapped__
    if read_back(text) != principal:
        raise ValueError("this principal's text form does not read back as the same name")
    return _uri(role, text)


# Parsing a name's text and percent-encoding it are pure functions of the exact text:
# remembered for the last names seen (a domain service certifies the same programs
# over and over; a program checks the certificates of the same peers), so issuing or
# checking a certificate does not parse the same name again. Bounded in count and in
# the length of what is remembered; a new text is always parsed in full, and a
# failure is never remembered as a success.
_NAMES_REMEMBERED: Final = 256
_REMEMBER_CHARS: Final = 4096


@functools.lru_cache(maxsize=_NAMES_REMEMBERED)
def _read_back(text: str) -> auth.Prin | None:
    """``text`` parsed as a principal, None if it is not one."""
    try:
        return auth.parse_prin(text)
    except CodecError:
        return None


def _uri(role: str, text: str) -> str:
    if len(text) > _REMEMBER_CHARS:
        return _quoted.__wrapped__(role, text)
    return _quoted(role, text)


@functools.lru_cache(maxsize=_NAMES_REMEMBERED)
def _quoted(role: str, text: str) -> str:
    return f"{_SCHEME}:{role}:{urllib.parse.quote(text, safe=_URI_SAFE)}"


def _principal_alt_name(role: CertificateRole, principal: auth.Prin) -> x509.SubjectAlternativeName:
    """A subjectAltName extension holding :func:`principal_uri` (and nothing else)."""
    return x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(principal_uri(role, principal))]
    )


def certificate_principal(cert: x509.Certificate, role: CertificateRole | None = None) -> auth.Prin:
    """The principal a certificate's ``taonet:`` subjectAltName URI names.

    AuthenticationError unless the certificate holds exactly one such URI (the
    scheme compared without regard to case, as URI schemes are), of ``role`` when
    given, in the one canonical spelling :func:`principal_uri` writes.
    """
    try:
        alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alt_names = None
    uris = (
        [] if alt_names is None else alt_names.get_values_for_type(x509.UniformResourceIdentifier)
    )
    ours = [u for u in uris if u.partition(":")[0].lower() == _SCHEME]
    if not ours:
        refuse_retired_profile(cert)
        raise AuthenticationError("certificate names no taonet principal (no taonet: URI)")
    if len(ours) > 1:
        raise AuthenticationError(f"certificate holds {len(ours)} taonet: URIs, expected one")
    uri = ours[0]
    if len(uri) > _REMEMBER_CHARS:
        return _uri_principal.__wrapped__(uri, role)
    return _uri_principal(uri, role)


@functools.lru_cache(maxsize=_NAMES_REMEMBERED)
def _uri_principal(uri: str, role: CertificateRole | None) -> auth.Prin:
    """The principal ``uri`` names (:func:`certificate_principal`'s checks of the URI).

    Remembered by the exact URI (failures are not: they raise each time).
    """
    _, _, rest = uri.partition(":")
    found, _, encoded = rest.partition(":")
    if found not in _ROLES:
        raise AuthenticationError(f"certificate's taonet: URI has no known role: {_bounded(uri)}")
    if role is not None and found != role:
        raise AuthenticationError(f"certificate is for a taonet {found}, not a {role}")
    try:
        principal = auth.parse_prin(urllib.parse.unquote(encoded, errors="strict"))
    except (CodecError, UnicodeDecodeError) as exc:
        raise AuthenticationError(f"certificate's taonet: URI names no principal: {exc}") from None
    if _uri(found, str(principal)) != uri:
        raise AuthenticationError(
            f"certificate's taonet: URI is not in its canonical form: {_bounded(uri)}"
        )
    return principal


def _bounded(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def refuse_retired_profile(cert: x509.Certificate, *, what: str = "certificate") -> None:
    """AuthenticationError if ``cert`` is of taonet's first profile (the private 2.25 arc).

    Those certificates are refused, whatever else they hold, with a message that
    says why and what to do.
    """
    for ext in cert.extensions:
        oids = [ext.oid]
        if isinstance(ext.value, x509.ExtendedKeyUsage):
            oids += list(ext.value)
        for oid in oids:
            if oid.dotted_string.startswith(_RETIRED_ARC):
                raise AuthenticationError(
                    f"{what} is of taonet's retired profile (object identifier "
                    f"{oid.dotted_string}, which Go's crypto/x509 cannot parse): the domain "
                    "must issue a new one (a program provisions anew; for a host, run "
                    "'taonet host recertify')"
                )


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
        refuse_retired_profile(cert, what="host certificate")
        check_end_entity(cert, what="host certificate")
        try:
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        except x509.ExtensionNotFound:
            pass
        else:
            raise AuthenticationError(
                "host certificate has an extended key usage (a host's key is for "
                "attestations, not TLS)"
            )
        if public_key_der(cert) != host_key_der:
            raise AuthenticationError(
                "host certificate certifies a different key than the signer's"
            )
        expected = auth.principal_for_key(signer_type, host_key_der)
        if certificate_principal(cert, "host") != expected:
            raise AuthenticationError(f"host certificate names another principal than {expected}")
        return cert
