"""ECDSA signers and verifiers that make and check CloudProxy-compatible signatures.

The signature format is the original Go Tao's (``Signer.Sign`` / ``Verifier.Verify``
in go/tao/keys.go), byte for byte:

1. Wrap the data as the protobuf ``ContextualizedData{context = 1, data = 2}``
   and serialize it.
2. Take SHA-256 of that serialization. SHA-256 is used for every curve,
   including P-384 (the original always hashes with SHA-256 and hands the
   32-byte digest to ECDSA as is).
3. Sign the digest with ECDSA; the signature is the DER ``SEQUENCE {r, s}``.
4. Return the serialized ``SignedData{header = 1, signature = 2}``. The header
   is a ``CryptoHeader`` with ``version = CRYPTO_VERSION_2`` and ``key_type``
   the signer's type plus ``"-public"`` (``"ecdsap256-public"``,
   ``"ecdsap384-public"``), which is the verifier's key type. The header is
   not covered by the signature; a verifier refuses a header whose key type
   is not its own, or whose version is not CRYPTO_VERSION_2 (the original's
   verifier ignores the version; every signature it makes carries 2).

Since nothing of the SignedData but the ECDSA value is covered, a verifier also
refuses any SignedData that is not in the one encoding the original and taonet
write (known fields only, each once, in field-number order, shortest varints):
otherwise anyone could append or repeat fields and get different bytes that
still verify. The SignedData that signers write (a header of exactly the version
and the verifier's key type) is recognised by its exact bytes, without building
a message; any other is parsed, re-serialized and compared.

Verification never returns False: every failure raises
:class:`~taonet.AuthenticationError` saying what failed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from taonet._errors import AuthenticationError, CodecError, ConfigError
from taonet.wire import message_class, parse, serialize

__all__ = [
    "ACL_GUARD_CONTEXT",
    "ATTESTATION_CONTEXT",
    "DATALOG_RULES_CONTEXT",
    "DIRECTIVE_CONTEXT",
    "Signer",
    "Verifier",
    "contextualized_digest",
]

#: Context for attestations (``Attestation.signature``).
ATTESTATION_CONTEXT: Final = "Tao Attestation Signing Context V1"
#: Context for signed ACL sets.
ACL_GUARD_CONTEXT: Final = "tao.ACLGuard Version 1"
#: Context for signed datalog rules.
DATALOG_RULES_CONTEXT: Final = "Datalog Rules Signing Context V1"
#: Context for secret disclosure directives.
DIRECTIVE_CONTEXT: Final = "Policy Secret Disclosure Directive Signature"

#: The CryptoVersion enum value the original writes in every header.
CRYPTO_VERSION_2: Final = 2

# curve name -> (cryptography curve class, signer key type)
_CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], str]]] = {
    "P-256": (ec.SECP256R1, "ecdsap256"),
    "P-384": (ec.SECP384R1, "ecdsap384"),
}
_KEY_TYPES: Final = {"secp256r1": "ecdsap256", "secp384r1": "ecdsap384"}
_ECDSA_PREHASHED: Final = ec.ECDSA(Prehashed(hashes.SHA256()))


def _key_type_of(curve: ec.EllipticCurve) -> str | None:
    return _KEY_TYPES.get(curve.name)


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def contextualized_digest(data: bytes, context: str) -> bytes:
    """SHA-256 of the serialized ``ContextualizedData{context, data}``: what ECDSA signs.

    The two-field proto2 message is written directly (field 1 as 0x0a + length +
    UTF-8, field 2 as 0x12 + length + bytes: exactly what protobuf serializes), so
    signing and verifying build no message object and copy ``data`` into no buffer.
    """
    digest = hashlib.sha256(_context_prefix(context) + _uvarint(len(data)))
    digest.update(data)
    return digest.digest()


@functools.lru_cache(maxsize=64)
def _context_prefix(context: str) -> bytes:
    # Field 1 and the tag of field 2, per context: a few constants in practice.
    ctx = context.encode("utf-8")
    return b"\x0a" + _uvarint(len(ctx)) + ctx + b"\x12"


class Verifier:
    """An ECDSA public key (P-256 or P-384) that checks Tao signatures."""

    __slots__ = ("_der", "_key", "_key_type", "_signed_prefix")

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        """Wrap ``key``; prefer :meth:`from_der` or :meth:`from_public_key`."""
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise TypeError(f"expected an EC public key, got {type(key).__name__}")
        key_type = _key_type_of(key.curve)
        if key_type is None:
            raise CodecError(f"unsupported curve {key.curve.name}: expected P-256 or P-384")
        self._key: Final = key
        self._key_type: Final = key_type + "-public"
        self._der: Final = _spki_der(key)
        self._signed_prefix: Final = _signed_data_prefix(self._key_type)

    @classmethod
    def from_public_key(cls, key: Any) -> Verifier:
        """Wrap a ``cryptography`` EC public key; CodecError if it is not P-256/P-384 ECDSA."""
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CodecError(f"not an EC public key: {type(key).__name__}")
        return cls(key)

    @classmethod
    def from_der(cls, spki: bytes) -> Verifier:
        """Parse a PKIX SubjectPublicKeyInfo (DER); CodecError on anything else.

        Refuses non-EC keys, curves other than P-256 and P-384, and encodings
        that are not canonical (e.g. compressed points), so that the bytes a
        principal name hashes are exactly the bytes this verifier stands for.
        """
        if not isinstance(spki, bytes | bytearray | memoryview):
            raise CodecError(f"public key: expected bytes, got {type(spki).__name__}")
        return _verifier_from_der(bytes(spki))

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The ``cryptography`` public key."""
        return self._key

    @property
    def key_type(self) -> str:
        """The original's key type: ``"ecdsap256-public"`` or ``"ecdsap384-public"``."""
        return self._key_type

    def public_key_der(self) -> bytes:
        """The PKIX SubjectPublicKeyInfo DER of the key."""
        return self._der

    def verify(self, data: bytes, context: str, signature: bytes) -> None:
        """Check that ``signature`` (a serialized SignedData) signs ``data`` under ``context``.

        Raises AuthenticationError on a malformed SignedData or one not in its
        canonical encoding (see the module doc), a header whose key type is not
        this key's or whose version is not CRYPTO_VERSION_2, or a signature that
        does not verify (wrong key, other context or altered data). Returns None
        on success.
        """
        ecdsa = self._ecdsa_value(signature)
        digest = contextualized_digest(data, context)
        try:
            self._key.verify(ecdsa, digest, _ECDSA_PREHASHED)
        except InvalidSignature:
            raise AuthenticationError(
                f"bad signature for context {context!r} by this {self._key_type} key: "
                "wrong key, wrong context or altered data"
            ) from None

    def _ecdsa_value(self, signature: bytes) -> bytes:
        """The DER ECDSA value of a canonical SignedData for this key's type, or raise."""
        # The SignedData signers write is the prefix (header, then the signature's tag)
        # and a one-byte length (every P-256 and P-384 value is under 128 bytes):
        # exactly the bytes that the checks below accept for that header.
        prefix = self._signed_prefix
        n = len(prefix)
        if (
            type(signature) is bytes
            and len(signature) > n
            and signature[n] < 0x80
            and signature[n] == len(signature) - n - 1
            and signature.startswith(prefix)
        ):
            return signature[n + 1 :]
        try:
            signed = parse("SignedData", signature, what="signature")
        except CodecError as exc:
            raise AuthenticationError(f"malformed signature: {exc}") from None
        signed.DiscardUnknownFields()
        if serialize(signed) != bytes(signature):
            raise AuthenticationError(
                "signature is not in canonical form: its SignedData has unknown, repeated "
                "or reordered fields or a longer encoding than the one signers write"
            )
        header = signed.header
        if header.version != CRYPTO_VERSION_2:
            raise AuthenticationError(
                f"signature header has crypto version {header.version}, "
                f"expected {CRYPTO_VERSION_2} (CRYPTO_VERSION_2)"
            )
        if not header.HasField("key_type"):
            raise AuthenticationError(
                f"signature header has no key type (expected {self._key_type!r})"
            )
        if header.key_type != self._key_type:
            raise AuthenticationError(
                f"signature made with a {header.key_type!r} key, expected {self._key_type!r}"
            )
        return bytes(signed.signature)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return self._der == other._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        fp = hashlib.sha256(self._der).hexdigest()[:16]
        return f"Verifier({self._key_type}, sha256:{fp})"


class Signer:
    """An ECDSA private key (P-256 or P-384) that makes Tao signatures."""

    __slots__ = ("_key", "_key_type", "_verifier")

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Wrap ``key``; see also :meth:`generate` and :meth:`from_pkcs8_der`."""
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"expected an EC private key, got {type(key).__name__}")
        key_type = _key_type_of(key.curve)
        if key_type is None:
            raise CodecError(f"unsupported curve {key.curve.name}: expected P-256 or P-384")
        self._key: Final = key
        self._key_type: Final = key_type
        self._verifier: Final = Verifier(key.public_key())

    @classmethod
    def generate(cls, curve: str = "P-256") -> Signer:
        """A fresh key on ``curve`` (``"P-256"`` or ``"P-384"``); ConfigError for others."""
        try:
            curve_cls, _ = _CURVES[curve]
        except (KeyError, TypeError):
            raise ConfigError(f"unsupported curve {curve!r}: expected 'P-256' or 'P-384'") from None
        return cls(ec.generate_private_key(curve_cls()))

    @classmethod
    def from_private_key(cls, key: Any) -> Signer:
        """Wrap a ``cryptography`` EC private key; CodecError if it is not P-256/P-384."""
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CodecError(f"not an EC private key: {type(key).__name__}")
        return cls(key)

    @classmethod
    def from_pkcs8_der(cls, data: bytes) -> Signer:
        """Load an unencrypted PKCS#8 DER private key; CodecError on anything else."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(f"private key: expected bytes, got {type(data).__name__}")
        try:
            key = serialization.load_der_private_key(bytes(data), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # The message of the underlying error could echo key material: omit it.
            raise CodecError("private key: not a valid unencrypted PKCS#8 DER key") from None
        return cls.from_private_key(key)

    def to_pkcs8_der(self) -> bytes:
        """The private key as unencrypted PKCS#8 DER (secret: store it sealed)."""
        return self._key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The ``cryptography`` private key (for X.509 and TLS)."""
        return self._key

    @property
    def key_type(self) -> str:
        """``"ecdsap256"`` or ``"ecdsap384"``, as the original names signing keys."""
        return self._key_type

    def public_key_der(self) -> bytes:
        """The PKIX SubjectPublicKeyInfo DER of the public key."""
        return self._verifier.public_key_der()

    def verifier(self) -> Verifier:
        """The matching verifier."""
        return self._verifier

    def sign(self, data: bytes, context: str) -> bytes:
        """Sign ``data`` under ``context``; returns a serialized SignedData (see module doc)."""
        if not isinstance(context, str):
            raise TypeError(f"context must be str, got {type(context).__name__}")
        digest = contextualized_digest(data, context)
        der_sig = self._key.sign(digest, _ECDSA_PREHASHED)
        if len(der_sig) < 0x80:  # always, for P-256 and P-384: a one-byte length
            return self._verifier._signed_prefix + bytes((len(der_sig),)) + der_sig
        header = message_class("CryptoHeader")(  # pragma: no cover - longer curves
            version=CRYPTO_VERSION_2, key_type=self._verifier.key_type
        )
        signed = message_class("SignedData")(header=header, signature=der_sig)
        return serialize(signed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signer):
            return NotImplemented
        return hmac.compare_digest(self.to_pkcs8_der(), other.to_pkcs8_der())

    def __hash__(self) -> int:
        return hash(self._verifier)

    def __repr__(self) -> str:
        fp = hashlib.sha256(self.public_key_der()).hexdigest()[:16]
        return f"Signer({self._key_type}, public sha256:{fp})"


@functools.lru_cache(maxsize=4)
def _signed_data_prefix(key_type: str) -> bytes:
    # serialize(SignedData{header: {version: 2, key_type}, signature: b""}) ends with
    # the signature's tag and its length 0: drop the length. One entry per key type
    # (two exist); written by protobuf itself, so the bytes are its own.
    header = message_class("CryptoHeader")(version=CRYPTO_VERSION_2, key_type=key_type)
    empty = serialize(message_class("SignedData")(header=header, signature=b""))
    assert empty.endswith(b"\x12\x00")
    return empty[:-1]


@functools.lru_cache(maxsize=1024)
def _verifier_from_der(raw: bytes) -> Verifier:
    # Cached by the exact bytes: validating many attestations from the same hosts
    # parses each key once. Verifiers are immutable; failures are not cached.
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CodecError(f"public key: not a valid PKIX DER public key: {exc}") from None
    verifier = Verifier.from_public_key(key)
    if verifier._der != raw:
        raise CodecError("public key: not in canonical DER form (uncompressed point)")
    return verifier
