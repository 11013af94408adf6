"""The CloudProxy protobuf schemas: field numbers, and only CodecError from bad bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError
from taonet.wire import MAX_MESSAGE_BYTES, message_class, parse, serialize
from taonet.wire._schema import MESSAGES


@pytest.mark.parametrize("name", sorted(MESSAGES))
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_codec_error(name: str, data: bytes) -> None:
    try:
        msg = parse(name, data)
    except CodecError:
        return
    assert msg.IsInitialized()


def test_field_numbers_match_the_original() -> None:
    # Hand-written encodings of the original's messages, field by field.
    header = message_class("RPCHeader")(op="Tao.GetTaoName", seq=7, error="e")
    assert serialize(header) == b"\x0a\x0eTao.GetTaoName\x10\x07\x1a\x01e"
    request = message_class("RPCRequest")(
        data=b"d", size=2, policy="p", time=4, expiration=5, issuer=b"i", label="l", counter=8
    )
    assert serialize(request) == (
        b"\x0a\x01d\x10\x02\x1a\x01p\x20\x04\x28\x05\x32\x01i\x3a\x01l\x40\x08"
    )
    response = message_class("RPCResponse")(data=b"d", policy="p", counter=3)
    assert serialize(response) == b"\x0a\x01d\x12\x01p\x18\x03"
    att = message_class("Attestation")(
        serialized_statement=b"s",
        signer_type="key",
        signer_key=b"k",
        signature=b"g",
        serialized_delegation=b"d",
        serialized_endorsements=[b"e"],
        tpm2_quote_structure=b"q",
        root_endorsement=b"r",
    )
    assert serialize(att) == (
        b"\x0a\x01s\x12\x03key\x1a\x01k\x22\x01g\x2a\x01d\x32\x01e\x3a\x01q\x42\x01r"
    )


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(CodecError, match="signer_type"):
        parse("Attestation", b"\x0a\x01s")


def test_size_limit_and_type() -> None:
    with pytest.raises(CodecError, match="limit"):
        parse("ACLSet", b"\x00" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(CodecError, match="expected bytes"):
        parse("ACLSet", "text")  # type: ignore[arg-type]
