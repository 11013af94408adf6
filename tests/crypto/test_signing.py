"""Signer and Verifier: round trips, and every way a signature must fail to verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError, ConfigError
from taonet.crypto import (
    ACL_GUARD_CONTEXT,
    ATTESTATION_CONTEXT,
    DATALOG_RULES_CONTEXT,
    DIRECTIVE_CONTEXT,
    Signer,
    Verifier,
    contextualized_digest,
)
from taonet.wire import message_class, parse, serialize

VECTORS = Path(__file__).parent.parent / "vectors" / "crypto_signatures.json"

P256 = Signer.generate("P-256")
P384 = Signer.generate("P-384")
OTHER = Signer.generate("P-256")
DATA = b"the statement being signed"
SIG256 = P256.sign(DATA, ATTESTATION_CONTEXT)
SIG384 = P384.sign(DATA, ATTESTATION_CONTEXT)


def test_context_constants() -> None:
    assert ATTESTATION_CONTEXT == "Tao Attestation Signing Context V1"
    assert ACL_GUARD_CONTEXT == "tao.ACLGuard Version 1"
    assert DATALOG_RULES_CONTEXT == "Datalog Rules Signing Context V1"
    assert DIRECTIVE_CONTEXT == "Policy Secret Disclosure Directive Signature"


@pytest.mark.parametrize(
    ("signer", "key_type"), [(P256, "ecdsap256"), (P384, "ecdsap384")], ids=["P-256", "P-384"]
)
def test_sign_and_verify(signer: Signer, key_type: str) -> None:
    assert signer.key_type == key_type
    assert signer.verifier().key_type == key_type + "-public"
    sig = signer.sign(DATA, DATALOG_RULES_CONTEXT)
    signer.verifier().verify(DATA, DATALOG_RULES_CONTEXT, sig)
    # A verifier rebuilt from the DER works the same.
    Verifier.from_der(signer.public_key_der()).verify(DATA, DATALOG_RULES_CONTEXT, sig)


def test_header_is_what_the_original_writes() -> None:
    signed = parse("SignedData", SIG256)
    assert signed.header.version == 2  # CRYPTO_VERSION_2
    assert signed.header.key_type == "ecdsap256-public"
    assert parse("SignedData", SIG384).header.key_type == "ecdsap384-public"


@given(data=st.binary(max_size=300), context=st.text(max_size=60))
def test_round_trip_any_data_and_context(data: bytes, context: str) -> None:
    P256.verifier().verify(data, context, P256.sign(data, context))


def test_empty_data_and_context() -> None:
    P384.verifier().verify(b"", "", P384.sign(b"", ""))


def test_other_key_fails() -> None:
    with pytest.raises(AuthenticationError, match=r"bad signature for context .* ecdsap256-public"):
        OTHER.verifier().verify(DATA, ATTESTATION_CONTEXT, SIG256)


@pytest.mark.parametrize(
    "context", [ACL_GUARD_CONTEXT, DIRECTIVE_CONTEXT, "", ATTESTATION_CONTEXT + " "]
)
def test_other_context_fails(context: str) -> None:
    with pytest.raises(AuthenticationError, match="context"):
        P256.verifier().verify(DATA, context, SIG256)


@given(st.data())
def test_flipped_byte_in_data_fails(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(DATA) - 1))
    mask = data.draw(st.integers(1, 255))
    altered = bytearray(DATA)
    altered[i] ^= mask
    with pytest.raises(AuthenticationError):
        P256.verifier().verify(bytes(altered), ATTESTATION_CONTEXT, SIG256)


@pytest.mark.parametrize(
    ("signer", "sig"), [(P256, SIG256), (P384, SIG384)], ids=["P-256", "P-384"]
)
@given(st.data())
def test_flipped_byte_in_signature_fails(signer: Signer, sig: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(sig) - 1))
    mask = data.draw(st.integers(1, 255))
    altered = bytearray(sig)
    altered[i] ^= mask
    with pytest.raises(AuthenticationError):
        signer.verifier().verify(DATA, ATTESTATION_CONTEXT, bytes(altered))


def test_every_single_bit_flip_in_signature_fails() -> None:
    for i in range(len(SIG256)):
        for bit in range(8):
            altered = bytearray(SIG256)
            altered[i] ^= 1 << bit
            with pytest.raises(AuthenticationError):
                P256.verifier().verify(DATA, ATTESTATION_CONTEXT, bytes(altered))


def test_truncated_signature_fails() -> None:
    for n in range(len(SIG256)):
        with pytest.raises(AuthenticationError):
            P256.verifier().verify(DATA, ATTESTATION_CONTEXT, SIG256[:n])


def test_malformed_signature_message() -> None:
    with pytest.raises(AuthenticationError, match="malformed signature"):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, b"\xff\xff\xff")


@given(st.binary(max_size=200))
def test_garbage_signature_fails(garbage: bytes) -> None:
    with pytest.raises(AuthenticationError):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, garbage)


def _resign_header(sig: bytes, **header: object) -> bytes:
    signed = parse("SignedData", sig)
    new = message_class("SignedData")(
        header=message_class("CryptoHeader")(**header), signature=signed.signature
    )
    return serialize(new)


def test_header_key_type_mismatch_fails() -> None:
    # A P-384 signature offered to a P-256 key.
    with pytest.raises(
        AuthenticationError, match="'ecdsap384-public' key, expected 'ecdsap256-public'"
    ):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, SIG384)
    # A correct signature whose header names another key type.
    for key_type in ["ecdsap384-public", "ecdsap256", "rsa2048-public", ""]:
        forged = _resign_header(SIG256, version=2, key_type=key_type)
        with pytest.raises(AuthenticationError, match="expected 'ecdsap256-public'"):
            P256.verifier().verify(DATA, ATTESTATION_CONTEXT, forged)


def test_header_with_other_version_fails() -> None:
    forged = _resign_header(SIG256, version=1, key_type="ecdsap256-public")
    with pytest.raises(AuthenticationError, match="crypto version 1, expected 2"):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, forged)


def test_header_without_key_type_fails() -> None:
    forged = _resign_header(SIG256, version=2)
    with pytest.raises(AuthenticationError, match="no key type"):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, forged)


def test_header_extra_fields_are_accepted() -> None:
    # The original copies the signer's name, epoch, purpose and status into the header.
    sig = _resign_header(
        SIG256,
        version=2,
        key_name="Anonymous_signer",
        key_epoch=1,
        key_type="ecdsap256-public",
        key_purpose="signing",
        key_status="active",
    )
    P256.verifier().verify(DATA, ATTESTATION_CONTEXT, sig)


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


_PARTS = parse("SignedData", SIG256)
_HEADER = serialize(_PARTS.header)
_ECDSA = bytes(_PARTS.signature)


@pytest.mark.parametrize(
    "variant",
    [
        SIG256 + b"\x18\x05",  # an unknown varint field 3 after the rest
        SIG256 + _field(7, b"junk"),  # an unknown length-delimited field
        _field(2, _ECDSA) + _field(1, _HEADER),  # fields in the other order
        _field(1, _HEADER) + _field(1, _HEADER) + _field(2, _ECDSA),  # header twice
        _field(1, _HEADER) + _field(2, b"\x30\x00") + _field(2, _ECDSA),  # signature twice
        _field(1, _HEADER + b"\x30\x01") + _field(2, _ECDSA),  # unknown field in the header
        # The signature's length (under 128) as a two-byte varint.
        _field(1, _HEADER) + bytes([0x12, len(_ECDSA) | 0x80, 0x00]) + _ECDSA,
    ],
    ids=[
        "unknown-varint",
        "unknown-bytes",
        "reordered",
        "header-twice",
        "signature-twice",
        "unknown-in-header",
        "long-length",
    ],
)
def test_signed_data_in_another_encoding_is_refused(variant: bytes) -> None:
    # The attack: bytes the ECDSA value does not cover, changed so that a signed
    # object gets a second byte string that verifies. Each variant parses to the
    # same header and signature, so the check that refuses it is the encoding's.
    parsed = parse("SignedData", variant)
    assert (bytes(parsed.signature), parsed.header.key_type) == (_ECDSA, "ecdsap256-public")
    with pytest.raises(AuthenticationError, match="not in canonical form"):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, variant)
    P256.verifier().verify(DATA, ATTESTATION_CONTEXT, SIG256)


def _accepted_by_the_rule(verifier: Verifier, sig: bytes) -> bool:
    """The rule of the module doc, spelled out with protobuf: canonical SignedData,
    version 2, the verifier's key type, and an ECDSA value that verifies."""
    try:
        signed = parse("SignedData", sig)
    except CodecError:
        return False
    signed.DiscardUnknownFields()
    header = signed.header
    if serialize(signed) != sig or header.version != 2:
        return False
    if not header.HasField("key_type") or header.key_type != verifier.key_type:
        return False
    try:
        verifier.public_key.verify(
            bytes(signed.signature),
            contextualized_digest(DATA, ATTESTATION_CONTEXT),
            ec.ECDSA(Prehashed(hashes.SHA256())),
        )
    except InvalidSignature:
        return False
    return True


def _verifies(verifier: Verifier, sig: bytes) -> bool:
    try:
        verifier.verify(DATA, ATTESTATION_CONTEXT, sig)
    except AuthenticationError:
        return False
    return True


@pytest.mark.parametrize(
    ("signer", "sig"), [(P256, SIG256), (P384, SIG384)], ids=["P-256", "P-384"]
)
@given(st.data())
def test_signed_data_read_by_its_bytes_obeys_the_rule(
    signer: Signer, sig: bytes, data: st.DataObject
) -> None:
    # Verify reads the SignedData that signers write by its exact bytes, without
    # protobuf. Whatever is done to a real signature (bytes changed, cut, inserted,
    # appended), it accepts exactly what the rule accepts.
    altered = bytearray(sig)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["set", "cut", "insert", "append"]))
        i = data.draw(st.integers(0, len(altered)))
        byte = data.draw(st.integers(0, 255))
        if op == "set" and i < len(altered):
            altered[i] = byte
        elif op == "cut":
            del altered[i : i + data.draw(st.integers(1, 4))]
        elif op == "insert":
            altered[i:i] = bytes([byte])
        else:
            altered += data.draw(st.binary(min_size=1, max_size=4))
    verifier = signer.verifier()
    assert _verifies(verifier, bytes(altered)) == _accepted_by_the_rule(verifier, bytes(altered))


def test_length_byte_of_a_long_varint_is_not_taken_for_a_length() -> None:
    # The attack on a reader that takes the byte after the signature's tag as its
    # length: a byte of 128 or more starts a longer varint, so bytes whose length
    # happens to equal it are not "prefix, length, value". Refused as malformed or
    # not canonical, never handed to ECDSA as a value.
    prefix = SIG256[: len(SIG256) - len(_ECDSA) - 1]
    for n in (0x80, 0x85, 0xC6, 0xFF):
        forged = prefix + bytes([n]) + _ECDSA + b"\x00" * (n - len(_ECDSA))
        assert len(forged) == len(prefix) + 1 + n
        with pytest.raises(AuthenticationError, match=r"malformed|canonical"):
            P256.verifier().verify(DATA, ATTESTATION_CONTEXT, forged)


def test_sign_writes_what_protobuf_serializes() -> None:
    for signer in (P256, P384):
        for data in (b"", DATA, b"x" * 5000):
            sig = signer.sign(data, DIRECTIVE_CONTEXT)
            parsed = parse("SignedData", sig)
            header = message_class("CryptoHeader")(version=2, key_type=signer.verifier().key_type)
            expected = message_class("SignedData")(header=header, signature=parsed.signature)
            assert serialize(expected) == sig


def test_signatures_as_other_bytes_like_objects_verify() -> None:
    for sig in (bytearray(SIG256), memoryview(SIG256)):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, sig)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="canonical"):
        P256.verifier().verify(DATA, ATTESTATION_CONTEXT, bytearray(SIG256 + b"\x18\x05"))  # type: ignore[arg-type]


# -- keys ---------------------------------------------------------------------


def test_pkcs8_round_trip() -> None:
    for signer in (P256, P384):
        again = Signer.from_pkcs8_der(signer.to_pkcs8_der())
        assert again == signer
        assert again.public_key_der() == signer.public_key_der()
        assert again.key_type == signer.key_type
        again.verifier().verify(DATA, ATTESTATION_CONTEXT, signer.sign(DATA, ATTESTATION_CONTEXT))
    assert P256 != OTHER


def test_from_private_key_and_properties() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    signer = Signer.from_private_key(key)
    assert signer.private_key is key
    assert signer.public_key_der() == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = Verifier.from_public_key(key.public_key())
    assert verifier == signer.verifier()
    assert verifier.public_key_der() == signer.public_key_der()
    assert isinstance(verifier.public_key, ec.EllipticCurvePublicKey)
    assert hash(verifier) == hash(signer.verifier())


def test_repr_shows_no_secret() -> None:
    secret_hex = P256.private_key.private_numbers().private_value.to_bytes(32, "big").hex()
    assert secret_hex[:16] not in repr(P256)
    assert "ecdsap256" in repr(P256)
    assert "ecdsap256-public" in repr(P256.verifier())


def test_unsupported_curve_names() -> None:
    for curve in ["P-521", "p256", "secp256k1", ""]:
        with pytest.raises(ConfigError, match="unsupported curve"):
            Signer.generate(curve)


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_verifier_refuses_other_key_kinds() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "rsa": _spki(rsa_key.public_key()),
        "ed25519": _spki(ed25519.Ed25519PrivateKey.generate().public_key()),
        "p521": _spki(ec.generate_private_key(ec.SECP521R1()).public_key()),
        "secp256k1": _spki(ec.generate_private_key(ec.SECP256K1()).public_key()),
    }
    for name, der in cases.items():
        with pytest.raises(CodecError):
            Verifier.from_der(der)
        del name
    with pytest.raises(CodecError):
        Verifier.from_public_key(rsa_key.public_key())
    with pytest.raises(CodecError):
        Signer.from_private_key(rsa_key)
    with pytest.raises(CodecError):
        Signer.from_private_key(ec.generate_private_key(ec.SECP521R1()))
    rsa_pkcs8 = rsa_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CodecError):
        Signer.from_pkcs8_der(rsa_pkcs8)


def test_verifier_refuses_compressed_point() -> None:
    assert Verifier.from_der(P256.public_key_der())  # the canonical form is accepted
    point = P256.private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SPKI prefix for a P-256 compressed point (33 bytes).
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    with pytest.raises(CodecError, match="canonical"):
        Verifier.from_der(prefix + point)


def test_verifier_refuses_trailing_bytes() -> None:
    with pytest.raises(CodecError):
        Verifier.from_der(P256.public_key_der() + b"\x00")


@given(st.binary(max_size=200))
def test_junk_keys_raise_codec_error(junk: bytes) -> None:
    with pytest.raises(CodecError):
        Verifier.from_der(junk)
    with pytest.raises(CodecError):
        Signer.from_pkcs8_der(junk)


def test_non_bytes_keys_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        Verifier.from_der("not bytes")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        Signer.from_pkcs8_der(None)  # type: ignore[arg-type]


# -- golden vectors -------------------------------------------------------------


def _vectors() -> list[dict[str, str]]:
    return json.loads(VECTORS.read_text())["vectors"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["curve"])
def test_golden_vector_verifies(vector: dict[str, str]) -> None:
    signer = Signer.from_pkcs8_der(bytes.fromhex(vector["private_key_pkcs8_der"]))
    assert signer.public_key_der().hex() == vector["public_key_der"]
    verifier = Verifier.from_der(bytes.fromhex(vector["public_key_der"]))
    data = bytes.fromhex(vector["data"])
    sig = bytes.fromhex(vector["signed_data"])
    verifier.verify(data, vector["context"], sig)
    signer.verifier().verify(data, vector["context"], sig)
    # The bytes the signature covers are pinned too.
    cd = message_class("ContextualizedData")(context=vector["context"], data=data)
    assert serialize(cd).hex() == vector["contextualized_data"]
    # And a fresh signature by the same key verifies against the stored public key.
    verifier.verify(data, vector["context"], signer.sign(data, vector["context"]))
    with pytest.raises(AuthenticationError):
        verifier.verify(data + b"!", vector["context"], sig)


@given(st.binary(max_size=2000), st.text(max_size=300))
def test_contextualized_digest_is_sha256_of_the_protobuf(data: bytes, context: str) -> None:
    import hashlib

    from taonet.crypto import contextualized_digest
    from taonet.wire import message_class, serialize

    wrapper = message_class("ContextualizedData")(context=context, data=data)
    assert contextualized_digest(data, context) == hashlib.sha256(serialize(wrapper)).digest()
