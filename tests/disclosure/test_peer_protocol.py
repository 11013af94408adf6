"""Disclosure.Fetch on the wire: round trips and the codec's bounds (pure)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError
from taonet.disclosure import _peer_protocol as wire
from taonet.disclosure.peer import (
    MAX_FETCH,
    MAX_FETCH_REQUEST_BODY,
    DisclosureCode,
    FetchFailure,
    FetchRequest,
    decode_fetch_request,
    decode_fetch_response,
    encode_fetch_request,
    encode_fetch_response,
)
from taonet.protected import (
    KEY_TYPE,
    MAX_VALUE_BYTES,
    ObjectId,
    SecretObject,
    Status,
    encode_object,
    encode_object_id,
)
from tests.disclosure.test_peer import KEY, key_object

IDS = (ObjectId("/a/b", 1), ObjectId("/a/c", 7))


def test_requests_and_answers_round_trip() -> None:
    request = FetchRequest((b"d1", b"d2"), IDS)
    assert decode_fetch_request(encode_fetch_request(request)) == request
    objects = tuple(key_object(i) for i in IDS)
    assert decode_fetch_response(encode_fetch_response(objects)) == objects
    failure = FetchFailure(DisclosureCode.NOT_FOUND, "no such key")
    assert decode_fetch_response(encode_fetch_response(failure)) == failure
    unknown = decode_fetch_response(encode_fetch_response(FetchFailure("later", "?")))
    assert unknown == FetchFailure("later", "?")


def test_one_directive_is_the_bytes_of_an_optional_field() -> None:
    body = encode_fetch_request(FetchRequest((b"dir",), IDS[:1]))
    assert body.startswith(b"\x0a\x03dir")  # field 1, length-delimited, 3 bytes


@pytest.mark.parametrize(
    ("directives", "ids"),
    [
        ((), IDS),  # no directive
        ((b"d",), ()),  # no id
        ((b"d",), (IDS[0], IDS[0])),  # an id twice
        ((b"",), IDS),  # an empty directive
        ((b"d",), tuple(ObjectId(f"/k/{i}", 1) for i in range(MAX_FETCH + 1))),
    ],
)
def test_out_of_bounds_requests_do_not_decode(
    directives: tuple[bytes, ...], ids: tuple[ObjectId, ...]
) -> None:
    msg: Any = wire._MESSAGES["FetchRequest"]()
    msg.directives.extend(directives)
    msg.ids.extend(encode_object_id(i) for i in ids)
    with pytest.raises(CodecError):
        decode_fetch_request(msg.SerializeToString())
    with pytest.raises(ValueError, match=r"directive|id"):  # nor can they be built
        FetchRequest(directives, ids)


def test_a_request_over_its_limit_does_not_decode() -> None:
    with pytest.raises(CodecError, match="limit"):
        decode_fetch_request(b"\x0a" + b"\x80" * 3 + b"\x01" + b"x" * MAX_FETCH_REQUEST_BODY)


def test_an_answer_with_objects_and_an_error_does_not_decode() -> None:
    msg: Any = wire._MESSAGES["FetchResponse"]()
    msg.objects.append(encode_object(key_object(KEY)))
    msg.error_code = b"unauthorized"
    with pytest.raises(CodecError):
        decode_fetch_response(msg.SerializeToString())


def test_an_answer_too_large_is_not_encoded() -> None:
    big = [
        SecretObject(ObjectId(f"/big/{i}", 1), KEY_TYPE, Status.ACTIVE, None, None, b"x")
        for i in range(2)
    ]
    assert decode_fetch_response(encode_fetch_response(big)) == tuple(big)
    huge = [
        SecretObject(
            ObjectId(f"/big/{i}", 1), "file", Status.ACTIVE, None, None, bytes(MAX_VALUE_BYTES)
        )
        for i in range(17)
    ]
    with pytest.raises(ValueError, match="answer limit"):
        encode_fetch_response(huge)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_codec_error_or_decode(data: bytes) -> None:
    for decode in (decode_fetch_request, decode_fetch_response):
        with contextlib.suppress(CodecError):
            decode(data)
