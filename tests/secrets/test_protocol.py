"""The secret service codec: round trips, the original's field numbers, bounds, typed errors."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthorizationError, CodecError, ProtocolError
from taonet.protected import KEY_TYPE, MAX_VALUE_BYTES, ObjectId, SecretObject, Status
from taonet.secrets import (
    MAX_PAGE,
    MAX_REQUEST_BODY,
    Changed,
    ConflictError,
    CreateRequest,
    Deleted,
    DeleteRequest,
    ErrorCode,
    Failure,
    Granted,
    GrantRequest,
    InfoRequest,
    Listing,
    ListRequest,
    NotFoundError,
    Op,
    ReadRequest,
    RotateRequest,
    SecretServiceError,
    ServerInfo,
    UnauthorizedError,
    WatchBatch,
    WatchEvent,
    WatchRequest,
    WriteRequest,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_for,
    operator_payload,
    request_body_limit,
)
from taonet.secrets._schema import message_class, serialize

WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
REQUESTS = [
    ReadRequest("/a/b"),
    ReadRequest("/a/b", 7),
    WriteRequest("/a", b"value"),
    WriteRequest("/a", b"", 2),
    CreateRequest("/k", type=KEY_TYPE),
    CreateRequest("/f", b"x" * 100, "file", "/k", WHEN, WHEN),
    DeleteRequest("/a"),
    DeleteRequest("/a", 3),
    ListRequest(),
    ListRequest("/a/", "/a/b", MAX_PAGE),
    RotateRequest("/k"),
    RotateRequest("/p", b"new"),
    WatchRequest("/a", 12),
    GrantRequest("key([0a0b])", ("Read", "Own"), "/a", revoke=True),
    ReadRequest("/a", operator=b"credential"),
    InfoRequest(),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=repr)
def test_requests_round_trip(request_: object) -> None:
    method, body = encode_request(request_)  # type: ignore[arg-type]
    assert decode_request(method, body) == request_


RESPONSES = [
    ("Read", SecretObject(ObjectId("/a", 2), "bytes", Status.RETIRED, None, WHEN, b"v")),
    ("Write", Changed(ObjectId("/a", 1))),
    ("Rotate", Changed(ObjectId("/a", 9))),
    ("Delete", Deleted("/a", (1, 2))),
    ("List", Listing(("/a", "/b"), "/b")),
    ("List", Listing(())),
    ("Watch", WatchBatch((WatchEvent(ObjectId("/a", 2), "rotated", 5),), 6)),
    ("Grant", Granted()),
    ("Info", ServerInfo(bytes(range(16)))),
    ("Info", Failure(ErrorCode.INVALID, "no store id")),
    ("Read", Failure(ErrorCode.NOT_FOUND, "gone")),
]


@pytest.mark.parametrize(("name", "response"), RESPONSES, ids=repr)
def test_responses_round_trip(name: str, response: object) -> None:
    method = f"SecretService.{name}"
    assert decode_response(method, encode_response(response)) == response  # type: ignore[arg-type]


def test_info_is_a_new_op_and_its_answer_a_store_id_of_16_bytes() -> None:
    method, body = encode_request(InfoRequest())
    assert method == "SecretService.Info"
    assert Op.INFO.number == 9
    original = message_class("Request")()
    original.ParseFromString(body)
    assert original.op == 9
    for bad in (b"", b"\x01" * 15, b"\x01" * 17):
        with pytest.raises(CodecError, match="store id"):
            decode_response(method, serialize(message_class("Response")(store_id=bad)))
    with pytest.raises(CodecError, match="store_id is missing"):
        decode_response(method, b"")


def test_original_fields_keep_their_numbers() -> None:
    """A read of one epoch is the original's Request{op: READ, secret_id}; the answer
    carries the original's secret_type and secret_val too."""
    _, body = encode_request(ReadRequest("/a", 3))
    original = message_class("Request")()
    original.ParseFromString(body)
    assert original.op == 1
    assert original.HasField("secret_id")
    assert [f.number for f, _ in original.ListFields()] == [1, 2]
    answer = message_class("Response")()
    answer.ParseFromString(
        encode_response(SecretObject(ObjectId("/a", 3), "file", Status.ACTIVE, None, None, b"v"))
    )
    assert (answer.secret_type, answer.secret_val) == (b"file", b"v")
    assert [op.number for op in Op][:4] == [1, 2, 3, 4]  # READ WRITE CREATE DELETE


@pytest.mark.parametrize(
    "fields",
    [
        {"op": 2},  # a Write op number under the Read method
        {"op": 1, "name": b"relative"},
        {"op": 1, "name": b"/a/../b"},
        {"op": 1, "name": b"\xff\xfe"},
        {"op": 1},  # no name
        {"op": 1, "name": b"/a", "protector_id": b"\n\x02/a\x10\x01"},
        {"op": 1, "name": b"/" + b"a" * 2000},
    ],
)
def test_bad_requests_are_codec_errors(fields: dict[str, object]) -> None:
    body = serialize(message_class("Request")(**fields))
    with pytest.raises(CodecError):
        decode_request("SecretService.Read", body)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    for op in Op:
        with contextlib.suppress(CodecError):
            decode_request(op.method, data)
        with contextlib.suppress(CodecError):
            decode_response(op.method, data)


def test_bounds() -> None:
    with pytest.raises(ValueError, match="over"):
        WriteRequest("/a", b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(ValueError, match="limit"):
        ListRequest(limit=MAX_PAGE + 1)
    with pytest.raises(ValueError, match="without a value"):
        CreateRequest("/a")  # no value and not a key
    assert request_body_limit("SecretService.Write") == MAX_REQUEST_BODY
    assert request_body_limit("SecretService.Read") < 32 * 1024
    with pytest.raises(ProtocolError):
        decode_request("SecretService.Steal", b"")
    body = serialize(message_class("Request")(op=2, name=b"/a", new_secret_val=b"x" * 40_000))
    with pytest.raises(CodecError, match="limit"):
        decode_request("SecretService.Read", body)


def test_operator_payload_excludes_the_credential() -> None:
    plain = operator_payload(ReadRequest("/a"))
    assert plain == operator_payload(ReadRequest("/a", operator=b"sig"))
    assert plain != operator_payload(ReadRequest("/b", operator=b"sig"))
    assert plain.startswith(b"SecretService.Read\0")


def test_errors_come_from_the_code_not_the_text() -> None:
    # The reason says "not found"; the code says conflict: the code decides.
    failure = decode_response(
        "SecretService.Create",
        encode_response(Failure(ErrorCode.CONFLICT, "not found; unauthorized")),
    )
    assert isinstance(failure, Failure)
    error = error_for(failure.code, failure.reason)
    assert type(error) is ConflictError
    assert isinstance(error_for("unauthorized", "x"), UnauthorizedError)
    assert isinstance(error_for("unauthorized", "x"), AuthorizationError)
    assert isinstance(error_for("not_found", "x"), NotFoundError)
    unknown = error_for("quota_exceeded", "x")
    assert type(unknown) is SecretServiceError
    assert unknown.code == "quota_exceeded"
