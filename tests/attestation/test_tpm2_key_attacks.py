"""An outside attacker's findings against the tpm2 quote verifier, each repeated.

F1: a quote key whose SPKI names an algorithm or curve ``cryptography`` does not
support raised UnsupportedAlgorithm out of ``validate`` (no refusal); a pluggable
signer type's own bug did the same. F2: RSA quote keys with any public exponent (a
3071-bit e makes each verify ~20 times dearer). F3: other encodings of the same quote
key named other ``tpm2(hash)`` principals. F5: ``verify_quote``'s PCR map reached its
cache unchecked (``{True: v}`` reused the entry ``{1: v}`` left). Each quote here is
correctly signed by the key it names: only the key (or the map) is the attack.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taonet import AuthenticationError, CodecError, auth, certs
from taonet.attestation import (
    UNROOTED,
    Attestation,
    SignerType,
    _tpm2,
    register_signer_type,
    validate,
)
from taonet.attestation import _tpm2_credential as _tc
from taonet.attestation import tpm2_credential as tc
from taonet.attestation.tpm2 import host_name, tpm2_attestation, verify_quote
from taonet.crypto import Signer
from tests.attestation.test_tpm2_validate import (
    MESSAGE,
    NOW,
    POLICY,
    POLICY_CERT,
    QUOTE_KEY_CERT,
    quoted,
    statement,
)
from tests.attestation.tpm2_quotes import (
    ECC_KEY,
    PCRS,
    RSA_KEY,
    QuoteFields,
    der,
    ecdsa_signature,
    rsassa_signature,
)

#: The built-in "tpm2" signer type (its principal callback refuses what it would not verify).
TPM2 = _tpm2.SIGNER_TYPE

# ------------------------------------------------------------------ DER by hand


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        while p := p >> 7:
            chunk.append(0x80 | (p & 0x7F))
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _spki(algorithm: bytes, key: bytes) -> bytes:
    return _tlv(0x30, _tlv(0x30, algorithm) + _tlv(0x03, b"\x00" + key))


_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_POINT = ECC_KEY.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
)
#: secp224k1: a named curve OpenSSL knows and ``cryptography`` does not support.
SECP224K1_KEY = _spki(_oid(_EC_PUBLIC_KEY) + _oid("1.3.132.0.32"), _POINT)
UNKNOWN_ALG_KEY = _spki(_oid("1.2.3.4"), _POINT)
SM2_CURVE_KEY = _spki(_oid(_EC_PUBLIC_KEY) + _oid("1.2.156.10197.1.301"), _POINT)


def _tpm2_quote(key_der: bytes, sign_with: object = ECC_KEY) -> Attestation:
    """A tpm2 attestation over key_der's name, its quote signed by ``sign_with``."""
    stmt = statement(host_name(key_der, PCRS))  # the name hashes any bytes
    attest = QuoteFields(extra_data=hashlib.sha256(stmt).digest(), pcrs=PCRS).to_bytes()
    if isinstance(sign_with, rsa.RSAPrivateKey):
        sig = rsassa_signature(sign_with, attest)
    else:
        assert isinstance(sign_with, ec.EllipticCurvePrivateKey)
        sig = ecdsa_signature(sign_with, attest)
    return tpm2_attestation(stmt, key_der, attest, sig, root_endorsement=QUOTE_KEY_CERT)


# ------------------------------------------------------------------ F1


@pytest.mark.parametrize(
    "key_der", [SECP224K1_KEY, UNKNOWN_ALG_KEY, SM2_CURVE_KEY], ids=["secp224k1", "oid", "sm2"]
)
def test_a_quote_key_cryptography_cannot_load_is_refused_not_a_crash(key_der: bytes) -> None:
    att = _tpm2_quote(key_der)
    for policy in (POLICY_CERT, UNROOTED):
        with pytest.raises(AuthenticationError, match="TPM quote key is malformed"):
            validate(att.to_bytes(), now_ns=NOW, policy_cert=policy)
    # The same through the public quote API and when naming the signer.
    with pytest.raises(AuthenticationError, match="malformed"):
        verify_quote(
            key_der,
            att.tpm2_quote_structure or b"",
            att.signature,
            extra_data=hashlib.sha256(att.serialized_statement).digest(),
            pcrs=PCRS,
        )
    with pytest.raises(AuthenticationError, match="malformed"):
        TPM2.principal(key_der)
    # Nor will the policy key certify such a key, for a host or a program.
    signer = Signer.generate()
    with pytest.raises(CodecError, match="malformed public key"):
        certs.issue_host_certificate(POLICY, POLICY_CERT, key_der, now_ns=NOW, signer_type="tpm2")
    with pytest.raises(CodecError, match="malformed public key"):
        certs.issue_program_certificate(
            POLICY,
            certs.PolicyAnchor(POLICY_CERT, now_ns=NOW),
            key_der,
            auth.key_principal(signer.public_key_der()),
            now_ns=NOW,
        )


def _buggy_verify(att: Attestation) -> None:
    raise KeyError("a signer type's own bug")


def _buggy_principal(der_: bytes) -> auth.Prin:
    raise RuntimeError("not reached")


register_signer_type("testbuggy", SignerType(verify=_buggy_verify, principal=_buggy_principal))


def test_a_signer_types_bug_is_a_refusal_naming_the_signer_type() -> None:
    stmt = statement()
    att = Attestation(
        serialized_statement=stmt,
        signer_type="testbuggy",
        signer_key=b"k",
        signature=b"s",
    )
    with pytest.raises(AuthenticationError, match="signer type 'testbuggy' failed on it: KeyError"):
        validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
    # Under a tpm2 quote (as a delegation) too: the level is named.
    outer = quoted(statement(), delegation=att)
    with pytest.raises(AuthenticationError, match=r"delegation \(level 1\): signer type"):
        validate(outer.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)


# ------------------------------------------------------------------ F2


def _rsa_with_e(bits: int, e: int) -> rsa.RSAPrivateKey:
    """An RSA key of ``bits`` with public exponent ``e`` (a TPM never makes one)."""
    while True:
        base = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
        p, q = base.p, base.q
        lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        if math.gcd(e, lam) == 1:
            break
    d = pow(e, -1, lam)
    return rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    ).private_key()


@pytest.fixture(scope="module")
def big_e_key() -> rsa.RSAPrivateKey:
    """RSA-3072 with a 3071-bit public exponent: the attacker's CPU burner."""
    e = secrets.randbits(3071) | 1 | 1 << 3070
    while not all(e % small for small in (3, 5, 7, 11, 13, 17, 19, 23)):
        e += 2
    return _rsa_with_e(3072, e)


def test_rsa_quote_keys_with_another_exponent_are_refused(big_e_key: rsa.RSAPrivateKey) -> None:
    for key, match in (
        (big_e_key, "exponent of 3071 bits is not 65537"),
        (_rsa_with_e(2048, 17), "exponent of 5 bits is not 65537"),
    ):
        key_der = der(key)
        att = _tpm2_quote(key_der, sign_with=key)
        # Correctly signed: before the fix it validated (UNROOTED), at ~6 ms a time.
        with pytest.raises(AuthenticationError, match=match):
            validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
        with pytest.raises(CodecError, match=match):
            certs.issue_host_certificate(
                POLICY, POLICY_CERT, key_der, now_ns=NOW, signer_type="tpm2"
            )


def test_rsa_quote_key_sizes_are_2048_3072_or_4096() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2560)
    att = _tpm2_quote(der(key), sign_with=key)
    with pytest.raises(AuthenticationError, match="RSA-2560 is not RSA-2048, RSA-3072 or RSA-4096"):
        validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
    # The TPM's own RSA-2048 / 65537 still works, rooted in the policy.
    good = der(RSA_KEY)
    cert = certs.issue_host_certificate(POLICY, POLICY_CERT, good, now_ns=NOW, signer_type="tpm2")
    stmt = statement(host_name(good, PCRS).extend(auth.PrinExt("Program", ())))
    att = quoted(stmt, key=RSA_KEY, key_der=good, root_endorsement=cert)
    assert validate(att.to_bytes(), now_ns=NOW, policy_cert=POLICY_CERT).message == MESSAGE


def _rsa_tpmt_public(exponent: int) -> bytes:
    """A restricted RSASSA-SHA256 RSA-2048 signing key's TPMT_PUBLIC (a quote key's)."""
    attributes = _tc.QUOTE_KEY_REQUIRED | _tc.USER_WITH_AUTH
    modulus = RSA_KEY.public_key().public_numbers().n.to_bytes(256, "big")
    return (
        struct.pack(">HHI", 0x0001, 0x000B, attributes)
        + struct.pack(">H", 0)  # authPolicy
        + struct.pack(">H", 0x0010)  # symmetric: TPM_ALG_NULL
        + struct.pack(">HH", 0x0014, 0x000B)  # RSASSA, SHA-256
        + struct.pack(">HI", 2048, exponent)
        + struct.pack(">H", len(modulus))
        + modulus
    )


def test_the_quote_service_does_not_certify_an_rsa_quote_key_with_another_exponent() -> None:
    tc.check_quote_key(tc.parse_public(_rsa_tpmt_public(0)))  # 0: the default, 65537
    tc.check_quote_key(tc.parse_public(_rsa_tpmt_public(65537)))
    for e in (3, 2**31 + 1):
        with pytest.raises(AuthenticationError, match="is not 65537"):
            tc.check_quote_key(tc.parse_public(_rsa_tpmt_public(e)))


# ------------------------------------------------------------------ F3


def _compressed(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return _spki(_oid(_EC_PUBLIC_KEY) + _oid("1.2.840.10045.3.1.7"), point)


def _rsa_pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )


ALIASES: dict[str, tuple[bytes, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]] = {
    "compressed P-256 point": (_compressed(ECC_KEY), ECC_KEY),
    "RSA without NULL params": (_spki(_oid("1.2.840.113549.1.1.1"), _rsa_pkcs1(RSA_KEY)), RSA_KEY),
    "RSASSA-PSS OID": (_spki(_oid("1.2.840.113549.1.1.10"), _rsa_pkcs1(RSA_KEY)), RSA_KEY),
}


@pytest.mark.parametrize("alias", list(ALIASES))
def test_another_encoding_of_a_quote_key_is_refused(alias: str) -> None:
    key_der, key = ALIASES[alias]
    assert key_der != der(key)
    # The same key as cryptography sees it: only the bytes (so the principal) differ.
    assert serialization.load_der_public_key(key_der).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == der(key)
    att = _tpm2_quote(key_der, sign_with=key)
    with pytest.raises(AuthenticationError, match="not in canonical PKIX DER form"):
        validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
    with pytest.raises(AuthenticationError, match="canonical"):
        TPM2.principal(key_der)
    with pytest.raises(CodecError, match="canonical"):
        certs.issue_host_certificate(POLICY, POLICY_CERT, key_der, now_ns=NOW, signer_type="tpm2")


# ------------------------------------------------------------------ F5


def _verify(pcrs: object) -> tuple[int, ...]:
    extra = b"\x42" * 32
    attest = QuoteFields(extra_data=extra, pcrs={1: PCRS[1]}).to_bytes()
    quote = verify_quote(
        der(ECC_KEY),
        attest,
        ecdsa_signature(ECC_KEY, attest),
        extra_data=extra,
        pcrs=pcrs,  # type: ignore[arg-type]
    )
    return quote.pcr_select


def test_verify_quote_checks_the_pcr_map_before_its_cache() -> None:
    assert _verify({1: PCRS[1]}) == (1,)  # now {1: value} is cached
    for bad in ({True: PCRS[1]}, {1.0: PCRS[1]}, {1: 32}, {1: PCRS[1][:31]}, {24: PCRS[1]}, {}):
        with pytest.raises(ValueError, match="PCR"):
            _verify(bad)
    # bytes-like values are normalised (a bytearray was unhashable: TypeError).
    assert _verify({1: bytearray(PCRS[1])}) == (1,)
    assert _verify({1: memoryview(PCRS[1])}) == (1,)
