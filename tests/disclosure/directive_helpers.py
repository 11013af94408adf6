"""Building directives byte by byte, as an attacker (or the original CloudProxy) would.

Nothing here calls taonet's directive code: the messages, statements and signatures are
written from the format sheet (``directive_message``, the auth binary encoding, the
``ContextualizedData``/``SignedData`` signature), so the tests hold taonet's codec
against an encoding made elsewhere.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

CONTEXT = b"Policy Secret Disclosure Directive Signature"


def uvarint(n: int) -> bytes:
    """Protobuf's (and the auth encoding's) base-128 varint of ``n`` (two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return uvarint(number << 3 | 2) + uvarint(len(value)) + value


def varint_field(number: int, value: int) -> bytes:
    """A varint protobuf field."""
    return uvarint(number << 3) + uvarint(value)


def directive_message(
    *,
    statement: bytes | None,
    signer: bytes | None,
    signature: bytes | None,
    cert: bytes | None = None,
    type_: int | None = 1,
) -> bytes:
    """``secret_disclosure.directive_message``, fields in number order."""
    out = b""
    if type_ is not None:
        out += varint_field(1, type_)
    for number, value in ((2, statement), (3, signer), (4, signature), (5, cert)):
        if value is not None:
            out += field(number, value)
    return out


# -- the auth binary encoding (tags of the format sheet) ------------------------------


def a_str(text: str) -> bytes:
    raw = text.encode()
    return uvarint(len(raw)) + raw


def a_bytes_term(value: bytes) -> bytes:
    return uvarint(4) + uvarint(len(value)) + value


def a_ext(name: str, *terms: bytes) -> bytes:
    return uvarint(18) + a_str(name) + uvarint(len(terms)) + b"".join(terms)


def a_prin(type_: str, key_hash: bytes, *exts: bytes) -> bytes:
    """Tag 1: type, key hash (a Bytes term), then the SubPrin (tag 17, count, exts)."""
    subprin = uvarint(17) + uvarint(len(exts)) + b"".join(exts)
    return uvarint(1) + a_str(type_) + a_bytes_term(key_hash) + subprin


def a_pred(name: str, *terms: bytes) -> bytes:
    return uvarint(7) + a_str(name) + uvarint(len(terms)) + b"".join(terms)


def a_says(speaker: bytes, message: bytes, *, time: int | None, expiration: int | None) -> bytes:
    """Tag 14: speaker, has_time[, time], has_exp[, exp], message."""
    out = uvarint(14) + speaker
    for value in (time, expiration):
        out += b"\x00" if value is None else b"\x01" + uvarint(value)
    return out + message


def object_id_message(name: str, epoch: int) -> bytes:
    return field(1, name.encode()) + varint_field(2, epoch)


def statement(
    speaker: bytes,
    op: str,
    delegate: bytes,
    name: str,
    epoch: int,
    *,
    time: int | None,
    expiration: int | None,
) -> bytes:
    """``speaker [from time] [until expiration] says op(delegate, [object id])``."""
    pred = a_pred(op, delegate, a_bytes_term(object_id_message(name, epoch)))
    return a_says(speaker, pred, time=time, expiration=expiration)


# -- keys and signatures --------------------------------------------------------------


def spki(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_prin_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The auth encoding of ``key([sha256 of the PKIX DER])``."""
    return a_prin("key", hashlib.sha256(spki(key)).digest())


def signed_data_header(key_type: str = "ecdsap256-public") -> bytes:
    """``CryptoHeader{version = 2, key_type}``."""
    return varint_field(1, 2) + field(4, key_type.encode())


def contextualized(data: bytes) -> bytes:
    return field(1, CONTEXT) + field(2, data)


def sign(key: ec.EllipticCurvePrivateKey, data: bytes, *, tail: bytes = b"") -> bytes:
    """``SignedData{header, signature}`` over ``data``; ``tail`` is appended to the DER value."""
    digest = hashlib.sha256(contextualized(data)).digest()
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return field(1, signed_data_header()) + field(2, der + tail)


def ecdsa_value(signature: bytes) -> bytes:
    """The DER ECDSA value of a SignedData written as :func:`sign` writes it."""
    header = field(1, signed_data_header())
    assert signature.startswith(header)
    rest = signature[len(header) :]
    assert rest[0] == 0x12
    assert rest[1] == len(rest) - 2
    return rest[2:]


def check_signature(public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> None:
    """Raise unless ``signature`` (a SignedData) signs ``data`` with the directive context."""
    digest = hashlib.sha256(contextualized(data)).digest()
    public.verify(ecdsa_value(signature), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
