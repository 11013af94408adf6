"""Program certificates: the policy key vouches for a program's TLS key and name.

The domain service issues one to a program after validating its attestation
("P says key(K) speaksfor P"). A Tao channel presents it, with the policy
certificate as the only trust root, and the peer reads the program's principal
name back out of it.

Profile (in addition to the rules in ``taonet.certs._profile``):

* subject ``O=<domain name>, CN=taonet program <first 16 hex of sha256(name)>``;
  issuer: the policy certificate's subject;
* ``basicConstraints CA:FALSE`` (critical), key usage digitalSignature (critical),
  extended key usage serverAuth and clientAuth (a program may take either side);
* subject alternative names, non-critical:

  - ``DNS:taonet-program.invalid`` (:data:`CHANNEL_HOSTNAME`): host names mean
    nothing on a Tao channel, where peers are known by principal, but one fixed
    name lets TLS keep its hostname check on;
  - ``URI:taonet:program:<name>``, the program's principal
    (:func:`~taonet.certs.principal_uri`): its canonical text, percent-encoded,
    e.g. ``taonet:program:key(%5B9f86...%5D).Program(%5Ba1b2...%5D)``; the one
    place the certificate names the program, readable in ``openssl x509 -text``
    and by Go's crypto/x509;

* subject and authority key identifiers; a random 159-bit serial; validity from
  five minutes before issue (clock skew) for the domain's configured days
  (30 by default).

Only standard X.509 fields: OpenSSL and Go's crypto/x509 parse these certificates
and verify them against the policy certificate for TLS server and client use
(``tests/certs/test_interop.py``). taonet's first profile put the name in private
extensions under a ``2.25`` arc Go cannot parse; such certificates are refused with
a message saying so (:func:`~taonet.provision.load_or_provision` then provisions
anew).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Final

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet.certs._profile import (
    _SIGNATURES,
    PolicyAnchor,
    _check_window,
    _random_serial,
    _utc,
    _window_ns,
    certificate_principal,
    check_end_entity,
    check_signed_by,
    load_certificate,
    principal_uri,
    public_key_der,
    refuse_retired_profile,
    refusing_malformed,
)
from taonet.certs._template import program_tbs, signed_certificate
from taonet.crypto import Signer

__all__ = [
    "CHANNEL_HOSTNAME",
    "ProgramCertificate",
    "issue_program_certificate",
    "verify_program_certificate",
]

#: The one DNS name every program certificate carries (RFC 6761 reserves .invalid).
CHANNEL_HOSTNAME: Final = "taonet-program.invalid"
_CLOCK_SKEW: Final = _dt.timedelta(minutes=5)
_CURVES: Final = frozenset({"secp256r1", "secp384r1"})
_USAGES: Final = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    None: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


@attrs.frozen
class ProgramCertificate:
    """A verified (or freshly issued) program certificate and what it says."""

    der: bytes = attrs.field(repr=False)
    principal: auth.Prin
    serial: int
    #: Validity window in ns since the epoch.
    not_before: int
    not_after: int
    #: The certified key, PKIX DER.
    public_key_der: bytes = attrs.field(repr=False)


def _describe(cert: x509.Certificate, principal: auth.Prin, der: bytes) -> ProgramCertificate:
    not_before, not_after = _window_ns(cert)
    return ProgramCertificate(
        der=der,
        principal=principal,
        serial=cert.serial_number,
        not_before=not_before,
        not_after=not_after,
        public_key_der=public_key_der(cert),
    )


def issue_program_certificate(
    policy_signer: Signer,
    anchor: PolicyAnchor,
    program_key_der: bytes,
    principal: auth.Prin,
    *,
    now_ns: int,
    validity_days: int = 30,
    not_after_ns: int | None = None,
    domain_name: str = "taonet",
) -> ProgramCertificate:
    """Sign a program certificate for ``program_key_der`` naming ``principal``.

    Valid for ``validity_days``, but never past ``not_after_ns`` when given (the
    end of the attestation it was issued for). The caller (the domain service) has
    validated the program's attestation and asked its guard; this only builds and
    signs.
    """
    if policy_signer.public_key_der() != anchor.public_key_der:
        raise AuthenticationError("only the domain's policy key may issue its certificates")
    try:
        key = serialization.load_der_public_key(program_key_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # UnsupportedAlgorithm: an unknown algorithm OID or named curve.
        raise CodecError(f"program key: malformed public key: {str(exc)[:200]}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CodecError("program key: not an ECDSA public key")
    if not 1 <= validity_days <= 36500:
        raise ValueError("validity_days must be from 1 to 36500")
    uri = principal_uri("program", principal)
    digest = hashlib.sha256(auth.encode(principal)).hexdigest()[:16]
    now = _utc(now_ns)
    not_after = now + _dt.timedelta(days=validity_days)
    if not_after_ns is not None:
        if not_after_ns <= now_ns:
            raise ValueError("not_after_ns must be in the future")
        not_after = min(not_after, _utc(not_after_ns))
    # The DER is written from its parts (taonet.certs._template): byte for byte what
    # cryptography's CertificateBuilder writes, at a fraction of its cost.
    hash_cls, algorithm = _SIGNATURES[anchor.public_key.curve.name]
    not_before = (now - _CLOCK_SKEW).replace(microsecond=0)
    not_after = not_after.replace(microsecond=0)
    serial = _random_serial()
    tbs = program_tbs(
        policy_cert_der=anchor.der,
        algorithm=algorithm,
        key=key,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        common_name=f"taonet program {digest}",
        organization=domain_name,
        hostname=CHANNEL_HOSTNAME,
        uri=uri,
    )
    signature = policy_signer.private_key.sign(tbs, ec.ECDSA(hash_cls()))
    return ProgramCertificate(
        der=signed_certificate(tbs, algorithm, signature),
        principal=principal,
        serial=serial,
        not_before=int(not_before.timestamp()) * 1_000_000_000,
        not_after=int(not_after.timestamp()) * 1_000_000_000,
        public_key_der=key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def verify_program_certificate(
    anchor: PolicyAnchor, der: bytes, *, now_ns: int, usage: str | None = None
) -> ProgramCertificate:
    """Check a program certificate against the domain's policy anchor.

    Checks, in this order: DER; the unsigned envelope and the signature by the
    policy key (``taonet.certs._profile.check_signed_by``); issuer name; no extension
    of the retired profile; extended key usage present; X.509 v3, a serial from 1 to
    2**159 - 1, no unknown critical extension, not a CA, key usage digitalSignature
    without certificate or CRL signing (``taonet.certs._profile.check_end_entity``);
    extended key usage for ``usage`` ("server" or "client" requires that one; None
    requires both); an ECDSA P-256 or P-384 key; exactly one ``taonet:`` URI, of
    role ``program``, in its canonical form; then the validity window (and the
    policy certificate's). Returns what it names.
    """
    if usage not in _USAGES:
        raise ValueError("usage must be 'server', 'client' or None")
    anchor.check_window(now_ns)
    program = anchor.remember(("program", der, usage), lambda: _verify_program(anchor, der, usage))
    _check_window((program.not_before, program.not_after), now_ns, "program certificate")
    return program


def _verify_program(anchor: PolicyAnchor, der: bytes, usage: str | None) -> ProgramCertificate:
    with refusing_malformed("program certificate"):
        return _verify_program_unchecked(anchor, der, usage)


def _verify_program_unchecked(
    anchor: PolicyAnchor, der: bytes, usage: str | None
) -> ProgramCertificate:
    try:
        cert = load_certificate(der, what="program certificate")
    except CodecError as exc:
        raise AuthenticationError(str(exc)) from None
    check_signed_by(der, cert.tbs_certificate_bytes, anchor.public_key, what="program certificate")
    if cert.issuer != anchor.cert.subject:
        raise AuthenticationError("program certificate issuer is not the policy certificate")
    refuse_retired_profile(cert, what="program certificate")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise AuthenticationError(f"not a taonet program certificate: {exc}") from None
    check_end_entity(cert, what="program certificate")
    wanted = _USAGES[usage]
    if any(oid not in eku for oid in wanted):
        raise AuthenticationError(f"program certificate is not for TLS {usage or 'use'}")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise AuthenticationError("program certificate does not certify an ECDSA P-256/P-384 key")
    principal = certificate_principal(cert, "program")
    return _describe(cert, principal, der)
