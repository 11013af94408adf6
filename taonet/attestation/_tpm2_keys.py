"""TPM 2.0 quote keys and TPMT_SIGNATUREs for the ``"tpm2"`` signer type (see ``_tpm2``).

A quote key is ECC P-256, or RSA-2048/3072/4096 with public exponent 65537
(``taonet._tpm2_rsa``), in its canonical PKIX DER encoding; its signature is ECDSA
with SHA-256, or RSASSA-PKCS1-v1_5 with SHA-256 (``cryptography`` checks the whole
padding). What depends only on a key's exact bytes is parsed once and kept.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from taonet._errors import AuthenticationError
from taonet._tpm2_rsa import rsa_quote_key_problem
from taonet.attestation._tpm2_names import PCR_BANK_SHA256

__all__ = ["MAX_KEY_BYTES", "MAX_SIGNATURE_BYTES", "Key", "quote_key", "verify_signature"]

#: Longest TPMT_SIGNATURE accepted (RSASSA with a 4096-bit key: 2 + 2 + 2 + 512).
MAX_SIGNATURE_BYTES: Final = 518
#: Longest quote key (PKIX DER) parsed: an RSA-4096 key is about 550 bytes.
MAX_KEY_BYTES: Final = 2048
TPM_ALG_RSASSA: Final = 0x0014
TPM_ALG_ECDSA: Final = 0x0018
_P256_BYTES: Final = 32
_U16: Final = struct.Struct(">H")
_ECDSA_P256_HEAD: Final = struct.pack(">HHH", TPM_ALG_ECDSA, 0x000B, 32)
_SIG_HEADER: Final = struct.Struct(">HHH")  # sigAlg, hashAlg, first TPM2B size
_SHA256: Final = hashes.SHA256()
_DER: Final = serialization.Encoding.DER
_SPKI: Final = serialization.PublicFormat.SubjectPublicKeyInfo
_ECDSA_SHA256: Final = ec.ECDSA(_SHA256)
_PKCS1V15: Final = padding.PKCS1v15()
_ALG_NAMES: Final = {TPM_ALG_RSASSA: "RSASSA", TPM_ALG_ECDSA: "ECDSA", 0x0016: "RSAPSS"}
_CACHED: Final = 1024


#: A quote key, parsed: (the P-256 key, None) or (None, the RSA key).
Key = tuple[ec.EllipticCurvePublicKey | None, rsa.RSAPublicKey | None]


@functools.lru_cache(maxsize=_CACHED)
def quote_key(der: bytes) -> Key:
    # What depends only on a quote key's exact bytes, parsed once.
    # A malformed or refused key raises, and is not remembered.
    if len(der) > MAX_KEY_BYTES:
        raise AuthenticationError(f"TPM quote key: {len(der)} bytes is over {MAX_KEY_BYTES}")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # UnsupportedAlgorithm: an unknown algorithm OID or named curve.
        raise AuthenticationError(f"TPM quote key is malformed: {str(exc)[:200]}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuthenticationError(f"TPM quote key: curve {key.curve.name} is not P-256")
        parsed: Key = (key, None)
    elif isinstance(key, rsa.RSAPublicKey):
        problem = rsa_quote_key_problem(key)
        if problem is not None:
            raise AuthenticationError(f"TPM quote key: {problem}")
        parsed = (None, key)
    else:
        raise AuthenticationError(
            f"TPM quote key: a {type(key).__name__} is not an ECC P-256 or RSA key"
        )
    # One key, one encoding, one principal: tpm2(hash) hashes these exact bytes, so
    # a compressed point, RSA without NULL parameters or the RSASSA-PSS OID would
    # name the same key differently.
    if key.public_bytes(_DER, _SPKI) != der:
        raise AuthenticationError(
            "TPM quote key: not in canonical PKIX DER form (uncompressed point; "
            "rsaEncryption with NULL parameters)"
        )
    return parsed


def _signature_payload(sig: bytes, is_ec: bool) -> bytes:
    """DER ECDSA (r, s) or the raw RSASSA signature from a TPMT_SIGNATURE."""
    n = len(sig)
    if n < _SIG_HEADER.size or n > MAX_SIGNATURE_BYTES:
        raise AuthenticationError(f"TPM signature: {n} bytes is not a TPMT_SIGNATURE")
    alg, hash_alg, size = _SIG_HEADER.unpack_from(sig)
    if alg == TPM_ALG_ECDSA and is_ec:
        end = 6 + size
        if size > _P256_BYTES or end + 2 > n:
            raise AuthenticationError("TPM signature: malformed ECDSA r")
        (s_size,) = _U16.unpack_from(sig, end)
        if s_size > _P256_BYTES or end + 2 + s_size != n:
            raise AuthenticationError("TPM signature: malformed ECDSA s (or trailing bytes)")
        payload = encode_dss_signature(
            int.from_bytes(sig[6:end], "big"), int.from_bytes(sig[end + 2 :], "big")
        )
    elif alg == TPM_ALG_RSASSA and not is_ec:
        if 6 + size != n:
            raise AuthenticationError("TPM signature: malformed RSASSA signature size")
        payload = sig[6:]
    else:
        name = _ALG_NAMES.get(alg, f"{alg:#06x}")
        key = "ECC P-256" if is_ec else "RSA"
        raise AuthenticationError(
            f"TPM signature: algorithm {name} does not fit the {key} quote key "
            f"(expected {'ECDSA' if is_ec else 'RSASSA'})"
        )
    if hash_alg != PCR_BANK_SHA256:
        raise AuthenticationError(f"TPM signature: hash {hash_alg:#06x} is not SHA-256")
    return payload


def verify_signature(key: Key, attest: bytes, sig: bytes) -> None:
    ec_key, rsa_key = key
    try:
        if ec_key is not None:
            if len(sig) == 72 and sig[:6] == _ECDSA_P256_HEAD and sig[38:40] == b"\x00\x20":
                # What a TPM sends: r and s of 32 bytes each.
                payload = encode_dss_signature(
                    int.from_bytes(sig[6:38], "big"), int.from_bytes(sig[40:], "big")
                )
            else:
                payload = _signature_payload(sig, True)
            ec_key.verify(payload, attest, _ECDSA_SHA256)
        elif rsa_key is not None:
            rsa_key.verify(_signature_payload(sig, False), attest, _PKCS1V15, _SHA256)
    except InvalidSignature:
        raise AuthenticationError(
            "TPM quote: the signature does not verify under the quote key"
        ) from None
