"""The quote service's pure codec: round trips, bounds, and bytes from outside that
raise CodecError (requests) or ProtocolError (replies) and nothing else."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError, ProtocolError
from taonet.attestation import tpm2_credential as tc
from taonet.attestation.tpm2 import host_name
from taonet.quoteservice import (
    MAX_REQUEST,
    QuoteKeyReply,
    QuoteKeyRequest,
    QuoteServiceError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    open_certificate,
    seal_certificate,
)

NAME = host_name(bytes(32), {0: bytes(32)})
REQUEST = QuoteKeyRequest(
    ek_certificate=b"cert", ek_public=b"ek", quote_key_public=b"ak", host_name=NAME
)


def test_request_round_trip() -> None:
    assert decode_request(encode_request(REQUEST)) == REQUEST


def test_reply_round_trip_and_refusal() -> None:
    reply = QuoteKeyReply(b"blob", b"secret", b"sealed")
    assert decode_reply(encode_reply(reply)) == reply
    with pytest.raises(QuoteServiceError, match="refused") as caught:
        decode_reply(encode_reply(QuoteServiceError("refused", "no")))
    assert caught.value.code == "refused"


def test_request_over_the_limit_refused() -> None:
    big = QuoteKeyRequest(
        ek_certificate=bytes(MAX_REQUEST), ek_public=b"", quote_key_public=b"", host_name=NAME
    )
    with pytest.raises(CodecError, match="over"):
        decode_request(encode_request(big))


def test_reply_without_certificate_is_a_protocol_error() -> None:
    from taonet.wire import message_class, serialize

    partial = serialize(message_class("QuoteServiceResponse")(credential_blob=b"x"))
    with pytest.raises(ProtocolError, match="without a wrapped certificate"):
        decode_reply(partial)


@given(st.binary(max_size=512))
def test_decode_request_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_request(data)


@given(st.binary(max_size=512))
def test_decode_reply_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError, QuoteServiceError):
        decode_reply(data)


# A real P-256 quote key's TPMT_PUBLIC shape (restricted ECDSA-SHA256 signing key).
_POINT = bytes.fromhex(
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)
QUOTE_KEY = (
    struct.pack(">HHI", 0x0023, 0x000B, 0x00050472)
    + struct.pack(">H", 0)
    + struct.pack(">HHHHHH", 0x0010, 0x0018, 0x000B, 0x0003, 0x0010, 32)
    + _POINT[:32]
    + struct.pack(">H", 32)
    + _POINT[32:]
)


def test_known_public_area_parses() -> None:
    area = tc.parse_public(QUOTE_KEY)
    tc.check_quote_key(area)
    assert area.name == b"\x00\x0b" + hashlib.sha256(QUOTE_KEY).digest()


@given(st.binary(max_size=600))
def test_parse_public_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        tc.parse_public(data)


@given(st.integers(0, len(QUOTE_KEY) - 1), st.integers(1, 255))
def test_parse_public_byte_flips(position: int, flip: int) -> None:
    data = bytearray(QUOTE_KEY)
    data[position] ^= flip
    try:
        area = tc.parse_public(bytes(data))
    except CodecError:
        return
    with contextlib.suppress(AuthenticationError):
        tc.check_quote_key(area)


def test_open_certificate_refuses_tampering() -> None:
    key, name = os.urandom(32), b"\x00\x0b" + os.urandom(32)
    sealed = seal_certificate(key, b"certificate", name)
    reply = QuoteKeyReply(b"", b"", sealed)
    assert open_certificate(reply, key, name) == b"certificate"
    for bad_reply, bad_key, bad_name in [
        (QuoteKeyReply(b"", b"", sealed[:-1] + bytes([sealed[-1] ^ 1])), key, name),
        (reply, os.urandom(32), name),
        (reply, key, name[:-1] + b"\0"),
        (QuoteKeyReply(b"", b"", sealed[:20]), key, name),
        (reply, key[:16], name),
    ]:
        with pytest.raises(AuthenticationError):
            open_certificate(bad_reply, bad_key, bad_name)
