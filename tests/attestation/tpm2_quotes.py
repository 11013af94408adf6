"""Build TPM 2.0 quotes the way a TPM does, signed with ``cryptography`` keys.

Each field of a TPMS_ATTEST can be set on its own, so a test makes a quote that is
correctly signed but wrong in exactly one field; the signature helpers make the
TPMT_SIGNATURE encodings (ECDSA, RSASSA, and raw RSA over a hand-made block).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
SHA1, SHA256, SHA384 = 0x0004, 0x000B, 0x000C
RSASSA, RSAPSS, ECDSA = 0x0014, 0x0016, 0x0018
#: DigestInfo prefixes (RFC 8017, 9.2 note 1).
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")
DIGEST_INFO_SHA1 = bytes.fromhex("3021300906052b0e03021a05000414")

ECC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_ECC_KEY = ec.generate_private_key(ec.SECP256R1())

PCRS = {0: b"\x00" * 32, 1: b"\x11" * 32, 7: b"\x77" * 32, 16: b"\x16" * 32}


def der(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """PKIX DER of a private key's public key."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def bank(pcrs: list[int] | tuple[int, ...], alg: int = SHA256, size: int = 3) -> bytes:
    """One TPMS_PCR_SELECTION."""
    bitmap = 0
    for p in pcrs:
        bitmap |= 1 << p
    return struct.pack(">HB", alg, size) + bitmap.to_bytes(size, "little")


@attrs.frozen
class QuoteFields:
    """Every field of a TPMS_ATTEST quote; defaults make a good one."""

    extra_data: bytes
    pcrs: Mapping[int, bytes] = attrs.field(factory=lambda: dict(PCRS))
    magic: int = TPM_GENERATED_VALUE
    type: int = TPM_ST_ATTEST_QUOTE
    qualified_signer: bytes = b"\x00\x0b" + bytes(range(32))
    clock: int = 123456789
    reset_count: int = 0x1234
    restart_count: int = 0x5678
    safe: int = 1
    firmware_version: int = 0x2019102300163636
    #: Marshaled TPMS_PCR_SELECTIONs; None selects ``pcrs`` in one SHA-256 bank.
    banks: tuple[bytes, ...] | None = None
    #: The pcrDigest; None is SHA-256 of ``pcrs``' values in ascending order.
    pcr_digest: bytes | None = None

    def to_bytes(self) -> bytes:
        banks = self.banks if self.banks is not None else (bank(sorted(self.pcrs)),)
        digest = self.pcr_digest
        if digest is None:
            digest = hashlib.sha256(b"".join(self.pcrs[p] for p in sorted(self.pcrs))).digest()
        return (
            struct.pack(">IH", self.magic, self.type)
            + tpm2b(self.qualified_signer)
            + tpm2b(self.extra_data)
            + struct.pack(
                ">QIIBQ",
                self.clock,
                self.reset_count,
                self.restart_count,
                self.safe,
                self.firmware_version,
            )
            + struct.pack(">I", len(banks))
            + b"".join(banks)
            + tpm2b(digest)
        )


def ecdsa_signature(
    key: ec.EllipticCurvePrivateKey, data: bytes, *, hash_alg: int = SHA256, alg: int = ECDSA
) -> bytes:
    """TPMT_SIGNATURE: ECDSA-SHA256 over ``data``, r and s as 32-byte TPM2Bs."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return (
        struct.pack(">HH", alg, hash_alg)
        + tpm2b(r.to_bytes(32, "big"))
        + tpm2b(s.to_bytes(32, "big"))
    )


def rsassa_signature(
    key: rsa.RSAPrivateKey, data: bytes, *, hash_alg: int = SHA256, alg: int = RSASSA
) -> bytes:
    """TPMT_SIGNATURE: RSASSA-PKCS1-v1_5 SHA-256 over ``data``."""
    return rsa_tpmt(key.sign(data, padding.PKCS1v15(), hashes.SHA256()), hash_alg=hash_alg, alg=alg)


def rsa_tpmt(signature: bytes, *, hash_alg: int = SHA256, alg: int = RSASSA) -> bytes:
    return struct.pack(">HH", alg, hash_alg) + tpm2b(signature)


def raw_rsa(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """The private key's raw operation on a hand-made block (m^d mod n)."""
    numbers = key.private_numbers()
    size = (key.key_size + 7) // 8
    assert len(block) == size
    m = int.from_bytes(block, "big")
    return pow(m, numbers.d, numbers.public_numbers.n).to_bytes(size, "big")


def pkcs1_block(payload: bytes, size: int, *, pad_byte: int = 0xFF, block_type: int = 1) -> bytes:
    """EMSA-PKCS1-v1_5: 00 || BT || PS || 00 || payload, PS of ``pad_byte``."""
    ps = bytes([pad_byte]) * (size - len(payload) - 3)
    return b"\x00" + bytes([block_type]) + ps + b"\x00" + payload


def pss_block(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """A real EMSA-PSS encoding of SHA-256(data) (recovered by the public operation)."""
    sig = key.sign(
        data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256()
    )
    pub = key.public_key().public_numbers()
    size = (key.key_size + 7) // 8
    return pow(int.from_bytes(sig, "big"), pub.e, pub.n).to_bytes(size, "big")
