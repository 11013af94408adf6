"""Certificate revocation lists signed by a domain's policy key.

A domain revokes a certificate it issued (by serial number) by listing it in an
X.509 CRL (RFC 5280, version 2, DER) that the policy key signs:

* issuer: the policy certificate's subject; signature ECDSA with SHA-256 (SHA-384
  for P-384 policy keys), like every certificate of the domain;
* ``thisUpdate`` (when it was made) and ``nextUpdate`` (when a newer one is due;
  always present: a CRL past it is stale and refused, so a verifier never trusts
  an old list forever);
* the extensions cRLNumber (increasing: by default the time of issue in ns) and
  authorityKeyIdentifier, both non-critical;
* one entry per revoked serial with its revocation date, no entry extensions.

:func:`verify_crl` checks, in this order: DER; the bytes the signature does not
cover (one canonical encoding: shortest lengths, nothing after, no unused bits in
the signature BIT STRING, and the outer signature algorithm byte-identical to the
signed one and to the policy key's, see ``taonet.certs._der``); the signature by
the policy key; version 2; issuer name; no critical extension it does not know; a
cRLNumber from 1 to 2**159 - 1; a nextUpdate after thisUpdate; no critical entry
extension; and the update window against the caller's clock (and the policy
certificate's). Any failure is an :class:`~taonet.AuthenticationError`; so is any
malformed input. So no byte outside the signed part can change while the CRL
still verifies. (ECDSA itself is malleable: from a valid signature (r, s) anyone
can compute the other valid one, (r, n - s). Such a copy says exactly what the
signed list says; name a CRL by its cRLNumber, not by a hash of its bytes.)
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from taonet._errors import AuthenticationError
from taonet.certs._der import TAG_INTEGER, elements, read
from taonet.certs._profile import (
    PolicyAnchor,
    _hash_for,
    _utc,
    check_signed_by,
    refusing_malformed,
)
from taonet.crypto import Signer

__all__ = ["MAX_CRL_BYTES", "RevocationList", "make_crl", "read_signed_crl", "verify_crl"]

#: Largest CRL :func:`verify_crl` parses (about 200,000 entries).
MAX_CRL_BYTES: Final = 8 * 1024 * 1024
#: Serials and CRL numbers are positive and at most 20 octets in DER.
_SERIAL_LIMIT: Final = 1 << 159
_NS: Final = 1_000_000_000
# Extensions a CRL may mark critical that this verifier understands (none of them
# change what the list means for taonet; anything else critical is refused).
_KNOWN_CRITICAL: Final = frozenset({ExtensionOID.CRL_NUMBER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER})


def _serial_set(serials: Iterable[int]) -> frozenset[int]:
    return frozenset(serials)


@attrs.frozen
class RevocationList:
    """A verified CRL: the revoked serials and its update window (ns since the epoch)."""

    serials: frozenset[int] = attrs.field(converter=_serial_set)
    this_update_ns: int
    next_update_ns: int
    number: int

    def __contains__(self, serial: object) -> bool:
        return serial in self.serials

    def __len__(self) -> int:
        return len(self.serials)


def _check_number(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 < value < _SERIAL_LIMIT:
        raise ValueError(f"{what} must be from 1 to 2**159 - 1, not {value}")
    return value


def make_crl(
    policy_signer: Signer,
    anchor: PolicyAnchor,
    revoked: Mapping[int, int] | Iterable[int],
    *,
    now_ns: int,
    next_update_days: int = 1,
    crl_number: int | None = None,
) -> bytes:
    """Sign a CRL (DER) listing ``revoked`` with the domain's policy key.

    ``revoked`` maps each serial to the time (ns) it was revoked, or just lists
    serials, which are then dated ``now_ns``. The CRL is valid from ``now_ns`` for
    ``next_update_days``. ``crl_number`` defaults to ``now_ns``, so later lists
    carry larger numbers. AuthenticationError if ``policy_signer`` is not the key
    of ``anchor``; ValueError for a serial outside 1 to 2**159 - 1.
    """
    if policy_signer.public_key_der() != anchor.public_key_der:
        raise AuthenticationError("only the domain's policy key may sign its revocation list")
    if isinstance(next_update_days, bool) or not 1 <= next_update_days <= 36500:
        raise ValueError("next_update_days must be from 1 to 36500")
    if isinstance(revoked, Mapping):
        dated = {_check_number("serial", s): int(t) for s, t in revoked.items()}
    else:
        dated = {_check_number("serial", s): now_ns for s in revoked}
    number = _check_number("crl_number", now_ns if crl_number is None else crl_number)
    now = _utc(now_ns)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(anchor.cert.subject)
        # Dated five minutes back, as certificates are, for verifiers whose clocks lag.
        .last_update(now - _dt.timedelta(minutes=5))
        .next_update(now + _dt.timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(anchor.public_key),
            critical=False,
        )
    )
    for serial in sorted(dated):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(_utc(dated[serial]))
            .build()
        )
    crl = builder.sign(policy_signer.private_key, _hash_for(policy_signer))
    return crl.public_bytes(serialization.Encoding.DER)


def verify_crl(anchor: PolicyAnchor, der: bytes, *, now_ns: int) -> RevocationList:
    """Check a CRL signed by the domain's policy key and return what it lists.

    Raises AuthenticationError saying what failed: malformed DER, another
    signer or issuer, an unknown critical extension, no cRLNumber, not yet valid,
    or out of date (past its nextUpdate).
    """
    if not isinstance(der, bytes) or len(der) > MAX_CRL_BYTES:
        raise AuthenticationError(f"CRL: not DER bytes of at most {MAX_CRL_BYTES} bytes")
    anchor.check_window(now_ns)
    result = anchor.remember(("crl", der), lambda: _verify_crl_once(anchor, der))
    if now_ns < result.this_update_ns:
        raise AuthenticationError(f"the CRL is not valid until {_utc(result.this_update_ns)}")
    if now_ns > result.next_update_ns:
        raise AuthenticationError(
            f"the CRL is out of date (its next update was due at {_utc(result.next_update_ns)});"
            " the domain must issue a fresh one"
        )
    return result


def read_signed_crl(anchor: PolicyAnchor, der: bytes) -> RevocationList:
    """What a CRL the domain signed lists, checked like :func:`verify_crl` but at no time.

    For a domain reading back its own records (an expired ``crl.der`` still says
    which serials it revoked); never for deciding whether a peer may connect.
    """
    if not isinstance(der, bytes) or len(der) > MAX_CRL_BYTES:
        raise AuthenticationError(f"CRL: not DER bytes of at most {MAX_CRL_BYTES} bytes")
    return anchor.remember(("crl", der), lambda: _verify_crl_once(anchor, der))


def _seconds_ns(moment: _dt.datetime) -> int:
    return int(moment.timestamp()) * _NS


def _version(tbs: bytes) -> int:
    """The version field of a TBSCertList (0, meaning v1, when absent)."""
    _, start, end = read(tbs)
    first = elements(tbs[start:end])[:1]
    if not first or first[0][0] != TAG_INTEGER:
        return 0
    _, value_start, value_end = read(first[0][1])
    return int.from_bytes(first[0][1][value_start:value_end], "big", signed=True)


def _verify_crl_once(anchor: PolicyAnchor, der: bytes) -> RevocationList:
    with refusing_malformed("CRL"):
        crl = x509.load_der_x509_crl(der)
        tbs = crl.tbs_certlist_bytes
        check_signed_by(der, tbs, anchor.public_key, what="CRL")
        if _version(tbs) != 1:
            raise AuthenticationError("CRL is not version 2 (v2 is the one with extensions)")
        if crl.issuer != anchor.cert.subject:
            raise AuthenticationError("CRL issuer is not the policy certificate subject")
        number = None
        for ext in crl.extensions:
            if ext.critical and ext.oid not in _KNOWN_CRITICAL:
                raise AuthenticationError(
                    f"CRL has an unknown critical extension {ext.oid.dotted_string}"
                )
            if isinstance(ext.value, x509.CRLNumber):
                number = ext.value.crl_number
        if number is None:
            raise AuthenticationError("CRL has no cRLNumber extension")
        if not 0 < number < _SERIAL_LIMIT:
            raise AuthenticationError(f"CRL number {number} is not from 1 to 2**159 - 1")
        next_update = crl.next_update_utc
        if next_update is None:
            raise AuthenticationError("CRL has no nextUpdate")
        if next_update <= crl.last_update_utc:
            raise AuthenticationError("CRL nextUpdate is not after its thisUpdate")
        serials: set[int] = set()
        for entry in crl:
            if any(ext.critical for ext in entry.extensions):
                raise AuthenticationError(
                    f"CRL entry {entry.serial_number} has a critical extension"
                )
            serials.add(entry.serial_number)
        return RevocationList(
            serials=serials,
            this_update_ns=_seconds_ns(crl.last_update_utc),
            next_update_ns=_seconds_ns(next_update),
            number=number,
        )
