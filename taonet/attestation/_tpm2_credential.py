"""TPM 2.0 public areas, object names, KDFs and MakeCredential, in pure Python.

What a quote service needs to certify a TPM's quote key without a TSS:

* :func:`parse_public` reads a marshaled ``TPMT_PUBLIC`` (RSA or ECC; bounded, no
  trailing bytes; CodecError on anything else) into a :class:`TpmPublic`: type,
  nameAlg, attributes, authPolicy, symmetric, scheme, the ``cryptography`` public key
  and its PKIX DER, and the object's name (nameAlg || H_nameAlg(TPMT_PUBLIC));
* :func:`kdfa` and :func:`kdfe` (TPM 2.0 part 1, 11.4.10.2 and 11.4.10.3);
* :data:`EK_TEMPLATES` and :func:`match_ek_template`: the TCG EK Credential Profile
  templates L-1 (RSA-2048), L-2 (ECC P-256) and H-3 (ECC P-384, what swtpm 0.7.1 makes).
  An EK certificate does not say which template made its key, and MakeCredential
  depends on it (nameAlg, symmetric key size), so the host sends the EK's public area
  and it must equal a template in everything but the key;
* :func:`check_quote_key`: a restricted signing key the TPM made and cannot export
  (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin, not decrypt),
  nameAlg SHA-256, ECC P-256 with ECDSA-SHA256 or RSA-2048 with RSASSA-SHA256;
* :func:`make_credential`: TPM2_MakeCredential (part 1, section 24) for an EK that
  matched a template: the seed is RSA-OAEP encrypted (label ``IDENTITY``) or derived
  by ephemeral ECDH and KDFe; the credential is AES-CFB encrypted under
  KDFa("STORAGE", name) and MACed under KDFa("INTEGRITY"). Only the TPM holding that
  EK, with the object of that name loaded, recovers it (TPM2_ActivateCredential).

Nothing here talks to a TPM; the tests check each function against swtpm.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Final

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from taonet._errors import AuthenticationError, CodecError
from taonet._tpm2_rsa import rsa_quote_key_problem

try:  # cryptography >= 47 moved CFB to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

__all__ = [
    "EK_TEMPLATES",
    "MAX_TPMT_PUBLIC",
    "EkTemplate",
    "TpmPublic",
    "check_quote_key",
    "kdfa",
    "kdfe",
    "make_credential",
    "match_ek_template",
    "object_name",
    "parse_public",
    "tpmt_public_from_tpm2b",
]

# Algorithm ids (TPM 2.0 part 2, table 9).
ALG_RSA: Final = 0x0001
ALG_SHA256: Final = 0x000B
ALG_SHA384: Final = 0x000C
ALG_SHA512: Final = 0x000D
ALG_NULL: Final = 0x0010
ALG_AES: Final = 0x0006
ALG_CFB: Final = 0x0043
ALG_RSASSA: Final = 0x0014
ALG_RSAES: Final = 0x0015
ALG_ECDSA: Final = 0x0018
ALG_ECDAA: Final = 0x001A
ALG_ECC: Final = 0x0023
ECC_NIST_P256: Final = 0x0003
ECC_NIST_P384: Final = 0x0004

# TPMA_OBJECT bits (part 2, table 31).
FIXED_TPM: Final = 0x00000002
ST_CLEAR: Final = 0x00000004
FIXED_PARENT: Final = 0x00000010
SENSITIVE_DATA_ORIGIN: Final = 0x00000020
USER_WITH_AUTH: Final = 0x00000040
ADMIN_WITH_POLICY: Final = 0x00000080
NO_DA: Final = 0x00000400
ENCRYPTED_DUPLICATION: Final = 0x00000800
RESTRICTED: Final = 0x00010000
DECRYPT: Final = 0x00020000
SIGN_ENCRYPT: Final = 0x00040000

_HASHES: Final = {ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
_CURVES: Final[dict[int, ec.EllipticCurve]] = {
    ECC_NIST_P256: ec.SECP256R1(),
    ECC_NIST_P384: ec.SECP384R1(),
}
# Schemes whose details are one hash algorithm (part 2, TPMU_ASYM_SCHEME); RSAES and
# NULL have none, ECDAA a hash and a count.
_HASH_SCHEMES: Final = frozenset({0x0014, 0x0016, 0x0017, 0x0018, 0x0019, 0x001B, 0x001C, 0x001D})
_KDF_SCHEMES: Final = frozenset({0x0007, 0x0020, 0x0021, 0x0022})

#: Largest TPMT_PUBLIC read (an RSA-4096 key with a SHA-512 policy is about 600 bytes).
MAX_TPMT_PUBLIC: Final = 1024
_MAX_DIGEST: Final = 64
_MAX_RSA_BYTES: Final = 512
_MAX_ECC_BYTES: Final = 66


class _Reader:
    """Bounds-checked big-endian reader; CodecError naming ``what`` on any overrun."""

    __slots__ = ("data", "offset", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.offset, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise CodecError(f"{self.what}: truncated at byte {self.offset}")
        value = self.data[self.offset : self.offset + n]
        self.offset += n
        return value

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def tpm2b(self, limit: int, field: str) -> bytes:
        size = self.u16()
        if size > limit:
            raise CodecError(f"{self.what}: {field} of {size} bytes is over {limit}")
        return self.take(size)

    def end(self) -> None:
        if self.offset != len(self.data):
            raise CodecError(f"{self.what}: {len(self.data) - self.offset} trailing bytes")


def _hash_name(alg: int, what: str) -> str:
    try:
        return _HASHES[alg]
    except KeyError:
        raise CodecError(f"{what}: unsupported hash algorithm {alg:#06x}") from None


@attrs.frozen
class Symmetric:
    """A ``TPMT_SYM_DEF_OBJECT``: algorithm, key bits and mode (all 0 bits/mode for NULL)."""

    algorithm: int
    key_bits: int = 0
    mode: int = 0


@attrs.frozen
class TpmPublic:
    """A parsed ``TPMT_PUBLIC`` of an RSA or ECC key (see :func:`parse_public`)."""

    #: The marshaled TPMT_PUBLIC, exactly as read (what the name hashes).
    raw: bytes = attrs.field(repr=False)
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: Symmetric
    #: Signing or decryption scheme and its hash (None when it has none).
    scheme: int
    scheme_hash: int | None
    #: RSA: modulus bits; ECC: the TPM curve id.
    key_bits: int
    curve: int | None
    #: ECC key derivation scheme (ALG_NULL for RSA).
    kdf: int
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = attrs.field(eq=False, repr=False)

    @property
    def name(self) -> bytes:
        """The object's name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
        return object_name(self.raw)

    @property
    def name_hash(self) -> str:
        """The hashlib name of the nameAlg."""
        return _HASHES[self.name_alg]

    def public_key_der(self) -> bytes:
        """The key as PKIX DER (SubjectPublicKeyInfo)."""
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _symmetric(r: _Reader) -> Symmetric:
    alg = r.u16()
    if alg == ALG_NULL:
        return Symmetric(ALG_NULL)
    return Symmetric(alg, r.u16(), r.u16())


def _scheme(r: _Reader) -> tuple[int, int | None]:
    scheme = r.u16()
    if scheme in (ALG_NULL, ALG_RSAES):
        return scheme, None
    if scheme in _HASH_SCHEMES:
        return scheme, r.u16()
    if scheme == ALG_ECDAA:
        hash_alg = r.u16()
        r.u16()  # count
        return scheme, hash_alg
    raise CodecError(f"{r.what}: unsupported scheme {scheme:#06x}")


def parse_public(data: bytes, *, what: str = "TPMT_PUBLIC") -> TpmPublic:
    """Parse a marshaled ``TPMT_PUBLIC`` of an RSA or ECC key.

    Bounded (at most :data:`MAX_TPMT_PUBLIC` bytes, every TPM2B against its maximum),
    no trailing bytes; nameAlg SHA-256, SHA-384 or SHA-512; ECC curves P-256 and P-384
    with a point on the curve of exactly the curve's size. CodecError otherwise.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_TPMT_PUBLIC:
        raise CodecError(f"{what}: {len(data)} bytes is over the {MAX_TPMT_PUBLIC}-byte limit")
    r = _Reader(data, what)
    kind = r.u16()
    name_alg = r.u16()
    _hash_name(name_alg, f"{what} nameAlg")
    attributes = r.u32()
    auth_policy = r.tpm2b(_MAX_DIGEST, "authPolicy")
    symmetric = _symmetric(r)
    scheme, scheme_hash = _scheme(r)
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if kind == ALG_RSA:
        key_bits = r.u16()
        exponent = r.u32() or 65537
        modulus = r.tpm2b(_MAX_RSA_BYTES, "RSA modulus")
        r.end()
        n = int.from_bytes(modulus, "big")
        if key_bits not in (1024, 2048, 3072, 4096) or n.bit_length() != key_bits:
            raise CodecError(f"{what}: RSA modulus is not {key_bits} bits")
        if exponent < 3 or exponent % 2 == 0:
            raise CodecError(f"{what}: bad RSA exponent")
        try:
            key = rsa.RSAPublicNumbers(exponent, n).public_key()
        except ValueError as exc:
            raise CodecError(f"{what}: bad RSA key: {exc}") from None
        return TpmPublic(
            data, kind, name_alg, attributes, auth_policy, symmetric,
            scheme, scheme_hash, key_bits, None, ALG_NULL, key,
        )  # fmt: skip
    if kind == ALG_ECC:
        curve_id = r.u16()
        kdf = r.u16()
        if kdf != ALG_NULL:
            if kdf not in _KDF_SCHEMES:
                raise CodecError(f"{what}: unsupported KDF {kdf:#06x}")
            r.u16()
        x = r.tpm2b(_MAX_ECC_BYTES, "ECC x")
        y = r.tpm2b(_MAX_ECC_BYTES, "ECC y")
        r.end()
        curve = _CURVES.get(curve_id)
        if curve is None:
            raise CodecError(f"{what}: unsupported ECC curve {curve_id:#06x}")
        size = (curve.key_size + 7) // 8
        if len(x) != size or len(y) != size:
            raise CodecError(f"{what}: ECC point is not {size}+{size} bytes")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        except ValueError:
            raise CodecError(f"{what}: ECC point is not on the curve") from None
        return TpmPublic(
            data, kind, name_alg, attributes, auth_policy, symmetric,
            scheme, scheme_hash, curve.key_size, curve_id, kdf, key,
        )  # fmt: skip
    raise CodecError(f"{what}: type {kind:#06x} is not an RSA or ECC key")


def tpmt_public_from_tpm2b(data: bytes, *, what: str = "TPM2B_PUBLIC") -> bytes:
    """The TPMT_PUBLIC inside a marshaled ``TPM2B_PUBLIC`` (size-prefixed, nothing after)."""
    r = _Reader(bytes(data), what)
    inner = r.tpm2b(MAX_TPMT_PUBLIC, "publicArea")
    r.end()
    return inner


def object_name(tpmt_public: bytes) -> bytes:
    """An object's name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC). CodecError for a
    nameAlg other than SHA-256/384/512 or fewer than 4 bytes."""
    if len(tpmt_public) < 4:
        raise CodecError("TPMT_PUBLIC: truncated")
    alg = struct.unpack_from(">H", tpmt_public, 2)[0]
    return tpmt_public[2:4] + hashlib.new(_hash_name(alg, "nameAlg"), tpmt_public).digest()


def _label(label: bytes) -> bytes:
    return label if label.endswith(b"\0") else label + b"\0"


def kdfa(
    hash_name: str, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa (part 1, 11.4.10.2): SP 800-108 counter mode with HMAC-``hash_name``.

    ``label`` gets its terminating NUL if it has none."""
    out, counter = b"", 1
    tail = _label(label) + context_u + context_v + struct.pack(">I", bits)
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", counter) + tail, hash_name).digest()
        counter += 1
    return out[: (bits + 7) // 8]


def kdfe(
    hash_name: str, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int
) -> bytes:
    """KDFe (part 1, 11.4.10.3): the SP 800-56A concatenation KDF over ``hash_name``."""
    out, counter = b"", 1
    tail = _label(label) + party_u + party_v
    while len(out) * 8 < bits:
        out += hashlib.new(hash_name, struct.pack(">I", counter) + z + tail).digest()
        counter += 1
    return out[: (bits + 7) // 8]


def _policy_secret(auth_name: bytes, hash_name: str) -> bytes:
    """PolicySecret(auth_name) from an empty digest, empty policyRef."""
    h = hashlib.new(hash_name)
    inner = hashlib.new(
        hash_name, bytes(h.digest_size) + struct.pack(">I", 0x151) + auth_name
    ).digest()
    return hashlib.new(hash_name, inner).digest()


def _policy_or(branches: list[bytes], hash_name: str) -> bytes:
    size = hashlib.new(hash_name).digest_size
    return hashlib.new(
        hash_name, bytes(size) + struct.pack(">I", 0x171) + b"".join(branches)
    ).digest()


_RH_ENDORSEMENT: Final = struct.pack(">I", 0x4000000B)
#: TCG EK Credential Profile 2.0: PolicyA = PolicySecret(TPM_RH_ENDORSEMENT); PolicyC
#: (the PolicyAuthorizeNV branch of the high-range templates) for SHA-384, as published.
POLICY_A_SHA256: Final = _policy_secret(_RH_ENDORSEMENT, "sha256")
POLICY_A_SHA384: Final = _policy_secret(_RH_ENDORSEMENT, "sha384")
POLICY_C_SHA384: Final = bytes.fromhex(
    "d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cf"
    "fd217ad5b4947c2d73e63005eed2dc2b3593d165"
)
_EK_LOW_ATTRS: Final = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT
)


@attrs.frozen
class EkTemplate:
    """A TCG EK template: everything of the EK's public area but the key itself."""

    name: str
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes = attrs.field(repr=lambda b: b.hex()[:16] + "...")
    symmetric: Symmetric
    key_bits: int
    curve: int | None


#: The templates an EK may have been made from (TCG EK Credential Profile 2.0, B.3):
#: L-1 and L-2 are the low-range RSA-2048 and ECC P-256 EKs; H-3 is the high-range
#: ECC P-384 EK (userWithAuth, PolicyOR(A, C) over SHA-384), which swtpm 0.7.1 makes.
EK_TEMPLATES: Final = (
    EkTemplate(
        "L-1", ALG_RSA, ALG_SHA256, _EK_LOW_ATTRS, POLICY_A_SHA256,
        Symmetric(ALG_AES, 128, ALG_CFB), 2048, None,
    ),
    EkTemplate(
        "L-2", ALG_ECC, ALG_SHA256, _EK_LOW_ATTRS, POLICY_A_SHA256,
        Symmetric(ALG_AES, 128, ALG_CFB), 256, ECC_NIST_P256,
    ),
    EkTemplate(
        "H-3", ALG_ECC, ALG_SHA384, _EK_LOW_ATTRS | USER_WITH_AUTH,
        _policy_or([POLICY_A_SHA384, POLICY_C_SHA384], "sha384"),
        Symmetric(ALG_AES, 256, ALG_CFB), 384, ECC_NIST_P384,
    ),
)  # fmt: skip


def match_ek_template(ek: TpmPublic) -> EkTemplate:
    """The template ``ek`` was made from; AuthenticationError naming what differs when
    it matches none (type, nameAlg, attributes, authPolicy, symmetric, size or curve,
    and a NULL scheme and KDF, as every EK template has)."""
    differences: list[str] = []
    for template in EK_TEMPLATES:
        if (template.type, template.key_bits, template.curve) != (ek.type, ek.key_bits, ek.curve):
            continue
        wrong = [
            field
            for field, ok in (
                ("nameAlg", ek.name_alg == template.name_alg),
                ("attributes", ek.attributes == template.attributes),
                ("authPolicy", hmac.compare_digest(ek.auth_policy, template.auth_policy)),
                ("symmetric", ek.symmetric == template.symmetric),
                ("scheme", ek.scheme == ALG_NULL and ek.kdf == ALG_NULL),
            )
            if not ok
        ]
        if not wrong:
            return template
        differences.append(f"{template.name}: {', '.join(wrong)} differ")
    if not differences:
        raise AuthenticationError(
            "the EK public area is of no known EK template's key type and size "
            "(RSA-2048, ECC P-256 or ECC P-384)"
        )
    raise AuthenticationError(
        f"the EK public area matches no TCG EK template ({'; '.join(differences)})"
    )


#: What a quote key must be: made in the TPM, never leaves it, signs only what the TPM
#: made (restricted), and decrypts nothing.
QUOTE_KEY_REQUIRED: Final = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN_ENCRYPT
)


def check_quote_key(key: TpmPublic) -> None:
    """AuthenticationError unless ``key`` is a quote key taonet certifies (module docstring)."""
    missing = QUOTE_KEY_REQUIRED & ~key.attributes
    if missing:
        names = [
            label
            for bit, label in (
                (FIXED_TPM, "fixedTPM"),
                (FIXED_PARENT, "fixedParent"),
                (SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
                (RESTRICTED, "restricted"),
                (SIGN_ENCRYPT, "sign"),
            )
            if missing & bit
        ]
        raise AuthenticationError(f"the quote key lacks attribute(s) {', '.join(names)}")
    if key.attributes & DECRYPT:
        raise AuthenticationError("the quote key may decrypt (a quote key only signs)")
    if key.name_alg != ALG_SHA256:
        raise AuthenticationError(f"the quote key's nameAlg is {key.name_alg:#06x}, not SHA-256")
    if key.type == ALG_ECC:
        if key.curve != ECC_NIST_P256 or (key.scheme, key.scheme_hash) != (ALG_ECDSA, ALG_SHA256):
            raise AuthenticationError("an ECC quote key must be P-256 with ECDSA-SHA256")
    elif key.key_bits != 2048 or (key.scheme, key.scheme_hash) != (ALG_RSASSA, ALG_SHA256):
        raise AuthenticationError("an RSA quote key must be RSA-2048 with RSASSA-SHA256")
    else:
        # The verifiers' rule (taonet._tpm2_rsa): what is certified must verify.
        assert isinstance(key.public_key, rsa.RSAPublicKey)
        problem = rsa_quote_key_problem(key.public_key)
        if problem is not None:
            raise AuthenticationError(f"the quote key: {problem}")
    if key.symmetric.algorithm != ALG_NULL:
        raise AuthenticationError("a quote key (a signing key) has no symmetric algorithm")


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def make_credential(ek: TpmPublic, credential: bytes, name: bytes) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential of ``credential`` for the EK ``ek``, bound to the object ``name``.

    ``ek`` must match an EK template (:func:`match_ek_template`, called here: its
    nameAlg and symmetric key size decide the derivation). ``credential`` is at most
    the nameAlg's digest size. Returns ``(credential_blob, encrypted_secret)``: the
    contents of TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, without their size fields.
    """
    template = match_ek_template(ek)
    hash_name = _HASHES[template.name_alg]
    size = hashlib.new(hash_name).digest_size
    if len(credential) > size:
        raise ValueError(f"a credential is at most {size} bytes for this EK")
    key = ek.public_key
    if isinstance(key, rsa.RSAPublicKey):
        seed = os.urandom(size)
        algorithm = hashes.SHA256() if hash_name == "sha256" else hashes.SHA384()
        encrypted_secret = key.encrypt(
            seed, padding.OAEP(padding.MGF1(algorithm), algorithm, b"IDENTITY\0")
        )
    else:
        ephemeral = ec.generate_private_key(key.curve)
        z = ephemeral.exchange(ec.ECDH(), key)
        n = (key.curve.key_size + 7) // 8
        point = ephemeral.public_key().public_numbers()
        ex, ey = point.x.to_bytes(n, "big"), point.y.to_bytes(n, "big")
        ek_x = key.public_numbers().x.to_bytes(n, "big")
        seed = kdfe(hash_name, z, b"IDENTITY", ex, ek_x, size * 8)
        encrypted_secret = _tpm2b(ex) + _tpm2b(ey)
    symmetric_key = kdfa(hash_name, seed, b"STORAGE", name, b"", template.symmetric.key_bits)
    encryptor = Cipher(algorithms.AES(symmetric_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(credential)) + encryptor.finalize()
    hmac_key = kdfa(hash_name, seed, b"INTEGRITY", b"", b"", size * 8)
    integrity = hmac.new(hmac_key, enc_identity + name, hash_name).digest()
    return _tpm2b(integrity) + enc_identity, encrypted_secret
