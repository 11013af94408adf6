"""Independent compatibility checks of the signature format, without taonet.wire.

The protobuf bytes here are written out by hand (tag byte, varint length,
payload) from the original's .proto definitions:

    message ContextualizedData { required string context = 1; required bytes data = 2; }
    message CryptoHeader { required CryptoVersion version = 1; ...;
                           optional string key_type = 4; ... }
    message SignedData { required CryptoHeader header = 1; required bytes signature = 2; }

and hashing and ECDSA are done with raw ``cryptography``, the way go/tao/keys.go
does: SHA-256 of the serialized ContextualizedData (for P-384 too), ECDSA over
that digest, DER (r, s).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from taonet import AuthenticationError
from taonet.crypto import ATTESTATION_CONTEXT, Signer, Verifier, contextualized_digest

CURVES = [(ec.SECP256R1, "ecdsap256-public"), (ec.SECP384R1, "ecdsap384-public")]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def varint_field(field: int, value: int) -> bytes:
    return varint(field << 3 | 0) + varint(value)


def contextualized(context: str, data: bytes) -> bytes:
    return length_delimited(1, context.encode()) + length_delimited(2, data)


def signed_data(key_type: str, signature: bytes) -> bytes:
    header = varint_field(1, 2) + length_delimited(4, key_type.encode())
    return length_delimited(1, header) + length_delimited(2, signature)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def fields(buf: bytes) -> dict[int, bytes | int]:
    """Top-level fields of a protobuf message (varint and length-delimited only)."""
    out: dict[int, bytes | int] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            out[number], pos = read_varint(buf, pos)
        elif wire_type == 2:
            n, pos = read_varint(buf, pos)
            out[number] = buf[pos : pos + n]
            pos += n
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    assert pos == len(buf)
    return out


def test_hand_encoding_matches_a_known_byte_string() -> None:
    # Written out byte by byte: 0x0a len "ctx" 0x12 len data.
    assert contextualized("ctx", b"\x01\x02") == b"\x0a\x03ctx\x12\x02\x01\x02"
    # A 200-byte field needs a two-byte varint length.
    assert length_delimited(2, b"x" * 200)[:3] == b"\x12\xc8\x01"


@pytest.mark.parametrize(("curve", "key_type"), CURVES, ids=["P-256", "P-384"])
@pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 3])
def test_hand_made_signature_verifies(
    curve: type[ec.EllipticCurve], key_type: str, data: bytes
) -> None:
    key = ec.generate_private_key(curve())
    digest = hashlib.sha256(contextualized(ATTESTATION_CONTEXT, data)).digest()
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    sig = signed_data(key_type, der)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    Verifier.from_der(spki).verify(data, ATTESTATION_CONTEXT, sig)
    with pytest.raises(AuthenticationError):
        Verifier.from_der(spki).verify(data + b"x", ATTESTATION_CONTEXT, sig)


@pytest.mark.parametrize(("curve", "key_type"), CURVES, ids=["P-256", "P-384"])
def test_hand_made_signature_with_raw_r_s(curve: type[ec.EllipticCurve], key_type: str) -> None:
    # Re-encode (r, s) through our own DER to show the format is plain SEQUENCE {r, s}.
    key = ec.generate_private_key(curve())
    data = b"raw r and s"
    digest = hashlib.sha256(contextualized("some context", data)).digest()
    r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    sig = signed_data(key_type, encode_dss_signature(r, s))
    Verifier.from_public_key(key.public_key()).verify(data, "some context", sig)


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_taonet_signature_checks_with_raw_cryptography(curve: str) -> None:
    signer = Signer.generate(curve)
    data = b"\x00binary\xffstatement"
    sig = signer.sign(data, ATTESTATION_CONTEXT)

    top = fields(sig)
    assert set(top) == {1, 2}
    header = fields(top[1])  # type: ignore[arg-type]
    assert header == {1: 2, 4: signer.key_type.encode() + b"-public"}
    assert header[4] == (b"ecdsap256-public" if curve == "P-256" else b"ecdsap384-public")

    covered = contextualized(ATTESTATION_CONTEXT, data)
    digest = hashlib.sha256(covered).digest()
    assert contextualized_digest(data, ATTESTATION_CONTEXT) == digest
    public = serialization.load_der_public_key(signer.public_key_der())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    # Raises InvalidSignature if the bytes are not what the original would check.
    public.verify(top[2], digest, ec.ECDSA(Prehashed(hashes.SHA256())))  # type: ignore[arg-type]
    # For P-256, Prehashed(SHA-256) over the digest is the same as ECDSA-SHA256 over the bytes.
    if curve == "P-256":
        public.verify(top[2], covered, ec.ECDSA(hashes.SHA256()))  # type: ignore[arg-type]


def test_p384_is_not_sha384() -> None:
    # The original hashes with SHA-256 on every curve; a SHA-384 check must not pass.
    from cryptography.exceptions import InvalidSignature

    signer = Signer.generate("P-384")
    sig = fields(signer.sign(b"data", "ctx"))[2]
    public = signer.private_key.public_key()
    with pytest.raises(InvalidSignature):
        public.verify(sig, contextualized("ctx", b"data"), ec.ECDSA(hashes.SHA384()))  # type: ignore[arg-type]
