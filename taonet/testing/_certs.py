"""Certificates and CRLs correctly signed by a policy key but wrong in one field.

Negative tests that flip bytes of a certificate only ever reach the signature
check. To reach the checks after it, a test needs a certificate the policy key
really signed that is wrong in exactly one way: that is what
:class:`CertificateFactory` makes.

Each kind of object starts from what taonet itself issues (the factory calls
:func:`~taonet.certs.issue_program_certificate`,
:func:`~taonet.certs.issue_host_certificate`,
:func:`~taonet.certs.make_policy_certificate` and :func:`~taonet.certs.make_crl`
and reads their fields back), so the unchanged fields stay in step with the real
profile. A test changes one field of the returned :class:`CertFields` or
:class:`CrlFields` (``attrs.evolve`` or the helper methods) and has the factory
sign the result with the policy key.

Some faults cannot be made with ``cryptography``'s builders: another X.509
version, a serial number of zero or below, a CRL without nextUpdate, an outer
signature algorithm that differs from the signed one, a signature BIT STRING with
unused bits, a repeated extension. The factory makes those by editing the DER of
the signed part (``edit_tbs``, :func:`replace_oid`) and signing the edited bytes
itself, so they too carry a valid signature by the policy key.

For tests only: nothing here belongs in a program.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from taonet import auth, certs
from taonet.certs._der import (
    ECDSA_WITH_SHA256,
    ECDSA_WITH_SHA384,
    TAG_BIT_STRING,
    TAG_CONTEXT_0,
    TAG_INTEGER,
    TAG_SEQUENCE,
    elements,
    encode,
    read,
    split,
)
from taonet.crypto import Signer

__all__ = ["CertFields", "CertificateFactory", "CrlFields", "replace_oid"]

_TIME_TAGS: Final = (0x17, 0x18)  # UTCTime, GeneralizedTime
_BUILDER_SERIAL_LIMIT: Final = 1 << 159  # cryptography's builder refuses larger serials
_OUTER_DIGESTS: Final[dict[bytes, hashes.HashAlgorithm]] = {
    ECDSA_WITH_SHA256: hashes.SHA256(),
    ECDSA_WITH_SHA384: hashes.SHA384(),
}

Extension = x509.Extension[x509.ExtensionType]
#: The digests ``cryptography``'s builders sign with.
Hash = (
    hashes.SHA224
    | hashes.SHA256
    | hashes.SHA384
    | hashes.SHA512
    | hashes.SHA3_224
    | hashes.SHA3_256
    | hashes.SHA3_384
    | hashes.SHA3_512
)


def _hash_for(key: ec.EllipticCurvePrivateKey) -> Hash:
    return hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()


def _replace_oid_extension(
    extensions: tuple[Extension, ...], value: x509.ExtensionType, critical: bool | None
) -> tuple[Extension, ...]:
    out = []
    found = False
    for ext in extensions:
        if ext.oid == value.oid:
            found = True
            out.append(
                x509.Extension(value.oid, ext.critical if critical is None else critical, value)
            )
        else:
            out.append(ext)
    if not found:
        out.append(x509.Extension(value.oid, bool(critical), value))
    return tuple(out)


@attrs.frozen(kw_only=True)
class CertFields:
    """Every field of a certificate to sign, plus the faults only DER editing can make."""

    subject: x509.Name
    issuer: x509.Name
    public_key: CertificatePublicKeyTypes
    #: Any int: zero, negative or over 20 octets are written by editing the DER.
    serial: int
    not_before: _dt.datetime
    not_after: _dt.datetime
    #: In order; two with one OID cannot be built (use :func:`replace_oid`).
    extensions: tuple[Extension, ...]
    #: 1, 2 or 3 (X.509 v1, v2, v3). Not 3 is written by editing the DER.
    version: int = 3
    #: The digest the signature uses (and the signed algorithm names).
    hash: Hash = attrs.field(factory=hashes.SHA256)
    #: Who signs: None for the policy key.
    signing_key: ec.EllipticCurvePrivateKey | None = None
    #: DER AlgorithmIdentifier written after the signed part (None: the signed one).
    #: When it names ECDSA with another digest, the signature uses that digest, so a
    #: verifier that believed the outer label would find the signature valid.
    outer_algorithm: bytes | None = None
    #: The signature BIT STRING's unused-bits count (only 0 is canonical).
    unused_bits: int = 0
    #: An edit of the signed part's DER, made before it is signed.
    edit_tbs: Callable[[bytes], bytes] | None = None

    def with_extension(
        self, value: x509.ExtensionType, *, critical: bool | None = None
    ) -> CertFields:
        """These fields with ``value`` in place of the extension of its OID (or added).

        ``critical`` None keeps the replaced extension's flag (False for a new one).
        """
        return attrs.evolve(
            self, extensions=_replace_oid_extension(self.extensions, value, critical)
        )

    def without_extension(self, oid: x509.ObjectIdentifier) -> CertFields:
        """These fields without the extension ``oid``."""
        return attrs.evolve(self, extensions=tuple(e for e in self.extensions if e.oid != oid))

    def with_names(self, *uris: str) -> CertFields:
        """These fields with ``uris`` in place of the subjectAltName's URIs.

        The other alternative names (a program's channel DNS name) stay; a URI may be
        anything, e.g. :func:`~taonet.certs.principal_uri` of another role or name.
        """
        try:
            current = self.extension(x509.SubjectAlternativeName.oid)
        except KeyError:
            kept: list[x509.GeneralName] = []
        else:
            assert isinstance(current.value, x509.SubjectAlternativeName)
            kept = [n for n in current.value if not isinstance(n, x509.UniformResourceIdentifier)]
        names = [*kept, *(x509.UniformResourceIdentifier(u) for u in uris)]
        return self.with_extension(x509.SubjectAlternativeName(names))

    def extension(self, oid: x509.ObjectIdentifier) -> Extension:
        """The extension ``oid`` (KeyError if there is none)."""
        for ext in self.extensions:
            if ext.oid == oid:
                return ext
        raise KeyError(oid.dotted_string)


@attrs.frozen(kw_only=True)
class CrlFields:
    """Every field of a CRL to sign, plus the faults only DER editing can make."""

    issuer: x509.Name
    this_update: _dt.datetime
    #: None leaves the field out; one not after this_update is written by editing the DER.
    next_update: _dt.datetime | None
    revoked: tuple[x509.RevokedCertificate, ...]
    extensions: tuple[Extension, ...]
    #: 1 or 2 (v1 has no version field). 1 is written by editing the DER.
    version: int = 2
    #: The digest the signature uses (and the signed algorithm names).
    hash: Hash = attrs.field(factory=hashes.SHA256)
    #: Who signs: None for the policy key.
    signing_key: ec.EllipticCurvePrivateKey | None = None
    #: DER AlgorithmIdentifier written after the signed part (None: the signed one).
    #: When it names ECDSA with another digest, the signature uses that digest, so a
    #: verifier that believed the outer label would find the signature valid.
    outer_algorithm: bytes | None = None
    #: The signature BIT STRING's unused-bits count (only 0 is canonical).
    unused_bits: int = 0
    #: An edit of the signed part's DER, made before it is signed.
    edit_tbs: Callable[[bytes], bytes] | None = None

    def with_extension(
        self, value: x509.ExtensionType, *, critical: bool | None = None
    ) -> CrlFields:
        """These fields with ``value`` in place of the extension of its OID (or added)."""
        return attrs.evolve(
            self, extensions=_replace_oid_extension(self.extensions, value, critical)
        )

    def without_extension(self, oid: x509.ObjectIdentifier) -> CrlFields:
        """These fields without the extension ``oid``."""
        return attrs.evolve(self, extensions=tuple(e for e in self.extensions if e.oid != oid))


def replace_oid(old: x509.ObjectIdentifier, new: x509.ObjectIdentifier) -> Callable[[bytes], bytes]:
    """An ``edit_tbs`` that rewrites the one occurrence of OID ``old`` as ``new``.

    Both must encode to the same length (so no length around them changes): add an
    extension under a placeholder OID, then rename it to one already present to
    get a certificate with that extension twice.
    """
    old_der, new_der = _oid_der(old), _oid_der(new)
    if len(old_der) != len(new_der):
        raise ValueError("replace_oid needs two OIDs of the same encoded length")

    def edit(tbs: bytes) -> bytes:
        if tbs.count(old_der) != 1:
            raise ValueError(f"OID {old.dotted_string} is not in the signed part exactly once")
        return tbs.replace(old_der, new_der)

    return edit


def _oid_der(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return encode(0x06, bytes(body))


def _integer(value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)
    return encode(TAG_INTEGER, value.to_bytes(size, "big", signed=True))


def _rebuild(
    tbs: bytes, edit: Callable[[list[tuple[int, bytes]]], list[tuple[int, bytes]]]
) -> bytes:
    """``tbs`` with its list of elements edited, re-encoded with the right length."""
    _, start, end = read(tbs)
    parts = edit(elements(tbs[start:end]))
    return encode(TAG_SEQUENCE, b"".join(element for _, element in parts))


def _set_cert_version(tbs: bytes, version: int) -> bytes:
    def edit(parts: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if parts[0][0] == TAG_CONTEXT_0:
            parts = parts[1:]
        if version == 1:
            return parts
        return [(TAG_CONTEXT_0, encode(TAG_CONTEXT_0, _integer(version - 1))), *parts]

    return _rebuild(tbs, edit)


def _set_cert_serial(tbs: bytes, serial: int) -> bytes:
    def edit(parts: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        i = 1 if parts[0][0] == TAG_CONTEXT_0 else 0
        parts[i] = (TAG_INTEGER, _integer(serial))
        return parts

    return _rebuild(tbs, edit)


def _drop_crl_version(tbs: bytes) -> bytes:
    return _rebuild(tbs, lambda parts: parts[1:] if parts[0][0] == TAG_INTEGER else parts)


def _set_next_update(tbs: bytes, when: _dt.datetime | None) -> bytes:
    """``tbs`` (a TBSCertList) with its nextUpdate left out (None) or set to ``when``."""

    def edit(parts: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        times = [i for i, (tag, _) in enumerate(parts) if tag in _TIME_TAGS]
        if when is None:
            del parts[times[1]]
        else:
            parts[times[1]] = (0x17, _utc_time(when))
        return parts

    return _rebuild(tbs, edit)


def _utc_time(when: _dt.datetime) -> bytes:
    """DER UTCTime (RFC 5280: for the years 1950 to 2049)."""
    when = when.astimezone(_dt.UTC)
    if not 1950 <= when.year <= 2049:
        raise ValueError("UTCTime holds the years 1950 to 2049 only")
    return encode(0x17, when.strftime("%y%m%d%H%M%SZ").encode())


class CertificateFactory:
    """A policy key that signs whatever a test asks, starting from taonet's own profile.

    Wrap a domain's key (``CertificateFactory(domain.unlock(password),
    domain.policy_cert, now_ns=...)``) to make bad certificates for that domain, or
    :meth:`generate` a fresh policy key and certificate.
    """

    def __init__(self, signer: Signer, policy_cert: bytes, *, now_ns: int) -> None:
        self.signer: Final = signer
        self.policy_cert: Final = policy_cert
        self.anchor: Final = certs.PolicyAnchor(policy_cert, now_ns=now_ns)
        if self.anchor.public_key_der != signer.public_key_der():
            raise ValueError("the signer is not the key of this policy certificate")

    @classmethod
    def generate(
        cls, *, now_ns: int, curve: str = "P-256", common_name: str = "taonet test policy"
    ) -> CertificateFactory:
        """A fresh policy key on ``curve`` with its policy certificate."""
        signer = Signer.generate(curve)
        cert = certs.make_policy_certificate(signer, common_name=common_name, now_ns=now_ns)
        return cls(signer, cert, now_ns=now_ns)

    @property
    def hash(self) -> Hash:
        """The digest the policy key's profile signs with (SHA-384 for P-384, else SHA-256)."""
        return _hash_for(self.signer.private_key)

    # -- correct fields, read back from what taonet issues -----------------------

    def _cert_fields(self, der: bytes) -> CertFields:
        cert = x509.load_der_x509_certificate(der)
        return CertFields(
            subject=cert.subject,
            issuer=cert.issuer,
            public_key=cert.public_key(),
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            extensions=tuple(cert.extensions),
            hash=self.hash,
        )

    def policy_fields(self, *, now_ns: int, common_name: str = "taonet test policy") -> CertFields:
        """The fields of a policy certificate for this factory's key (self-issued)."""
        return self._cert_fields(
            certs.make_policy_certificate(self.signer, common_name=common_name, now_ns=now_ns)
        )

    def host_fields(
        self, host_key_der: bytes, *, now_ns: int, signer_type: str = "key"
    ) -> CertFields:
        """The fields of a host certificate for ``host_key_der``, as the domain issues it."""
        return self._cert_fields(
            certs.issue_host_certificate(
                self.signer, self.policy_cert, host_key_der, now_ns=now_ns, signer_type=signer_type
            )
        )

    def program_fields(
        self, program_key_der: bytes, principal: auth.Prin, *, now_ns: int
    ) -> CertFields:
        """The fields of a program certificate, as the domain service issues it."""
        issued = certs.issue_program_certificate(
            self.signer, self.anchor, program_key_der, principal, now_ns=now_ns
        )
        return self._cert_fields(issued.der)

    def crl_fields(
        self,
        revoked: Mapping[int, int] | Iterable[int] = (),
        *,
        now_ns: int,
        crl_number: int | None = None,
    ) -> CrlFields:
        """The fields of a CRL listing ``revoked``, as :func:`~taonet.certs.make_crl` makes it."""
        crl = x509.load_der_x509_crl(
            certs.make_crl(self.signer, self.anchor, revoked, now_ns=now_ns, crl_number=crl_number)
        )
        next_update = crl.next_update_utc
        assert next_update is not None  # make_crl always writes one
        return CrlFields(
            issuer=crl.issuer,
            this_update=crl.last_update_utc,
            next_update=next_update,
            revoked=tuple(crl),
            extensions=tuple(crl.extensions),
            hash=self.hash,
        )

    # -- signing --------------------------------------------------------------

    def sign(self, fields: CertFields) -> bytes:
        """The certificate ``fields`` describe (DER), signed by the policy key (or signing_key)."""
        key = fields.signing_key or self.signer.private_key
        serial_ok = 0 < fields.serial < _BUILDER_SERIAL_LIMIT
        builder = (
            x509.CertificateBuilder()
            .subject_name(fields.subject)
            .issuer_name(fields.issuer)
            .public_key(fields.public_key)
            .serial_number(fields.serial if serial_ok else 1)
            .not_valid_before(fields.not_before)
            .not_valid_after(fields.not_after)
        )
        for ext in fields.extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        der = builder.sign(key, fields.hash).public_bytes(serialization.Encoding.DER)
        tbs = split(der).tbs
        edited = tbs
        if not serial_ok:
            edited = _set_cert_serial(edited, fields.serial)
        if fields.version != 3:
            edited = _set_cert_version(edited, fields.version)
        return _finish(der, edited, fields, key)

    def sign_crl(self, fields: CrlFields) -> bytes:
        """The CRL ``fields`` describe (DER), signed by the policy key or ``signing_key``."""
        key = fields.signing_key or self.signer.private_key
        next_update = fields.next_update
        if next_update is None or next_update <= fields.this_update:
            next_update = fields.this_update + _dt.timedelta(days=1)  # edited below
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(fields.issuer)
            .last_update(fields.this_update)
            .next_update(next_update)
        )
        for ext in fields.extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        for entry in fields.revoked:
            builder = builder.add_revoked_certificate(entry)
        der = builder.sign(key, fields.hash).public_bytes(serialization.Encoding.DER)
        edited = split(der).tbs
        if fields.next_update is None:
            edited = _set_next_update(edited, None)
        elif fields.next_update != next_update:
            edited = _set_next_update(edited, fields.next_update)
        if fields.version == 1:
            edited = _drop_crl_version(edited)
        elif fields.version != 2:
            raise ValueError("a CRL is version 1 or 2")
        return _finish(der, edited, fields, key)

    # -- one call each, for the common case -------------------------------------

    def policy_certificate(self, *, now_ns: int, **changes: Any) -> bytes:
        """A policy certificate for this key with ``changes`` to its fields."""
        return self.sign(attrs.evolve(self.policy_fields(now_ns=now_ns), **changes))

    def host_certificate(
        self, host_key_der: bytes, *, now_ns: int, signer_type: str = "key", **changes: Any
    ) -> bytes:
        """A host certificate for ``host_key_der`` with ``changes`` to its fields."""
        fields = self.host_fields(host_key_der, now_ns=now_ns, signer_type=signer_type)
        return self.sign(attrs.evolve(fields, **changes))

    def program_certificate(
        self, program_key_der: bytes, principal: auth.Prin, *, now_ns: int, **changes: Any
    ) -> bytes:
        """A program certificate with ``changes`` to its fields."""
        fields = self.program_fields(program_key_der, principal, now_ns=now_ns)
        return self.sign(attrs.evolve(fields, **changes))

    def crl(
        self, serials: Mapping[int, int] | Iterable[int] = (), *, now_ns: int, **changes: Any
    ) -> bytes:
        """A CRL listing ``serials`` (as :meth:`crl_fields`) with ``changes`` to its fields."""
        return self.sign_crl(attrs.evolve(self.crl_fields(serials, now_ns=now_ns), **changes))


def _finish(
    built: bytes, tbs: bytes, fields: CertFields | CrlFields, key: ec.EllipticCurvePrivateKey
) -> bytes:
    """``built`` if nothing is to change, else ``tbs`` signed and wrapped as ``fields`` ask."""
    if fields.edit_tbs is not None:
        tbs = fields.edit_tbs(tbs)
    if tbs == split(built).tbs and fields.outer_algorithm is None and fields.unused_bits == 0:
        return built
    if not 0 <= fields.unused_bits <= 7:
        raise ValueError("unused_bits must be from 0 to 7")
    padding = (1 << fields.unused_bits) - 1
    digest = _OUTER_DIGESTS.get(fields.outer_algorithm or b"", fields.hash)
    while True:  # an ECDSA signature is random: roll until its padding bits are zero
        signature = key.sign(tbs, ec.ECDSA(digest))
        if signature[-1] & padding == 0:
            break
    inner = next(e for t, e in elements(tbs[read(tbs)[1] :]) if t == TAG_SEQUENCE)
    outer = fields.outer_algorithm if fields.outer_algorithm is not None else inner
    bits = encode(TAG_BIT_STRING, bytes([fields.unused_bits]) + signature)
    return encode(TAG_SEQUENCE, tbs + outer + bits)
