"""The disclosure peer protocol's messages and their pure codec (no trio, no I/O).

Transport: the protorpc envelope (:class:`taonet.wire.Envelope`) over a Tao channel,
one method, ``Disclosure.Fetch``. The request body is a ``taonet_disclosure.
FetchRequest``: field 1 ``directives`` (repeated ``directive_message`` bytes, see
:mod:`taonet.disclosure`; a directive grants one object id, so fetching many keys at
once takes one directive for each, and one of them is the same bytes as an
``optional bytes directive = 1``), field 2 ``ids`` (repeated ``object_id_message``,
the original's ``protected_objects`` encoding). The answer body is a ``FetchResponse``:
field 1 ``objects`` (repeated ``object_message``, one per id asked, in the order
asked), or fields 2 ``error_code`` (a :class:`DisclosureCode` value) and 3
``error_message`` (a reason) for a refusal. A request the server cannot read at all
(over its limit, an unknown method) gets an envelope error.

Bounds, checked before anything is decoded or stored: at most :data:`MAX_FETCH` ids
and as many directives in one request, each directive of at most
:data:`MAX_DIRECTIVE_WIRE` bytes, request
bodies of at most :data:`MAX_FETCH_REQUEST_BODY` and answers of at most
:data:`MAX_FETCH_RESPONSE_BODY` bytes (a server whose answer would be larger refuses
the request as ``invalid``: ask for fewer ids at a time).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
from google.protobuf import descriptor_pb2

from taonet._errors import AuthorizationError, CodecError
from taonet.disclosure._directive import MAX_DIRECTIVE_BYTES
from taonet.protected import (
    MAX_OBJECT_MESSAGE_BYTES,
    ObjectId,
    SecretObject,
    decode_object,
    decode_object_id,
    encode_object,
    encode_object_id,
)
from taonet.wire._schema import build_messages, parse_message

__all__ = [
    "FETCH_METHOD",
    "MAX_DIRECTIVE_WIRE",
    "MAX_FETCH",
    "MAX_FETCH_REQUEST_BODY",
    "MAX_FETCH_RESPONSE_BODY",
    "MAX_REASON_CHARS",
    "DisclosureCode",
    "DisclosureRefusedError",
    "FetchFailure",
    "FetchRequest",
    "decode_fetch_request",
    "decode_fetch_response",
    "encode_fetch_request",
    "encode_fetch_response",
]

#: The envelope method of the one operation.
FETCH_METHOD: Final = "Disclosure.Fetch"
#: Most ids in one request.
MAX_FETCH: Final = 1000
#: Largest directive a request carries.
MAX_DIRECTIVE_WIRE: Final = MAX_DIRECTIVE_BYTES
#: Largest request body (MAX_FETCH ids of the longest names and their directives, each
#: with a program certificate, take about 3 MiB).
MAX_FETCH_REQUEST_BODY: Final = 8 * 1024 * 1024
#: Largest answer body (under the envelope's 20 MiB frame ceiling).
MAX_FETCH_RESPONSE_BODY: Final = 16 * 1024 * 1024
#: Longest reason in a refusal (the rest is cut).
MAX_REASON_CHARS: Final = 1000

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES: Final = build_messages(
    "taonet/disclosure_peer.proto",
    "taonet_disclosure",
    {
        "FetchRequest": [
            ("directives", 1, _REP, "bytes"),  # directive_message
            ("ids", 2, _REP, "bytes"),  # object_id_message
        ],
        "FetchResponse": [
            ("objects", 1, _REP, "bytes"),  # object_message
            ("error_code", 2, _OPT, "bytes"),
            ("error_message", 3, _OPT, "bytes"),
        ],
    },
)


class DisclosureCode(enum.Enum):
    """Why a peer refused a Fetch (the wire text is the value)."""

    #: The directive does not verify, is not for the caller, or does not grant
    #: every id asked (nothing is released).
    UNAUTHORIZED = "unauthorized"
    #: The peer holds no object of an id asked (nothing is released).
    NOT_FOUND = "not_found"
    #: The request is malformed or out of bounds.
    INVALID = "invalid"
    #: The peer failed; nothing was released.
    INTERNAL = "internal"


class DisclosureRefusedError(AuthorizationError):
    """A disclosure peer refused a Fetch: ``code`` (a :class:`DisclosureCode`, or the
    wire text of one this side does not know) and ``reason``. Nothing was released."""

    def __init__(self, code: DisclosureCode | str, reason: str) -> None:
        shown = code.value if isinstance(code, DisclosureCode) else code
        super().__init__(f"the disclosure peer refused ({shown}): {reason}")
        self.code = code
        self.reason = reason


def _ids(value: Iterable[ObjectId]) -> tuple[ObjectId, ...]:
    return tuple(value)


def _blobs(value: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(bytes(v) for v in value)


def _reason(value: object) -> str:
    return str(value)[:MAX_REASON_CHARS]


@attrs.frozen
class FetchRequest:
    """Release the objects ``ids`` (1..MAX_FETCH distinct ids) under ``directives``
    (1..MAX_FETCH directives' bytes; each id must be granted by one of them)."""

    directives: tuple[bytes, ...] = attrs.field(converter=_blobs, repr=False)
    ids: tuple[ObjectId, ...] = attrs.field(converter=_ids)

    @directives.validator
    def _check_directives(self, _attr: object, value: tuple[bytes, ...]) -> None:
        if not 1 <= len(value) <= MAX_FETCH:
            raise ValueError(f"a request carries 1..{MAX_FETCH} directives, not {len(value)}")
        if not all(1 <= len(d) <= MAX_DIRECTIVE_WIRE for d in value):
            raise ValueError(f"a directive must be 1..{MAX_DIRECTIVE_WIRE} bytes")

    @ids.validator
    def _check_ids(self, _attr: object, value: tuple[ObjectId, ...]) -> None:
        if not 1 <= len(value) <= MAX_FETCH:
            raise ValueError(f"a request asks for 1..{MAX_FETCH} ids, not {len(value)}")
        if not all(isinstance(i, ObjectId) for i in value):
            raise TypeError("ids must be ObjectId values")
        if len(set(value)) != len(value):
            raise ValueError("an id is asked for twice")


@attrs.frozen
class FetchFailure:
    """A refusal: a typed code and a reason (cut at :data:`MAX_REASON_CHARS`)."""

    code: DisclosureCode | str
    reason: str = attrs.field(converter=_reason)


def encode_fetch_request(request: FetchRequest) -> bytes:
    """The body of ``request``."""
    msg: Any = _MESSAGES["FetchRequest"]()
    msg.directives.extend(request.directives)
    msg.ids.extend(encode_object_id(i) for i in request.ids)
    body: bytes = msg.SerializeToString(deterministic=True)
    return body


def decode_fetch_request(body: bytes) -> FetchRequest:
    """The request ``body`` stands for; CodecError (and nothing else) when it does not
    decode or is out of its bounds."""
    what = f"{FETCH_METHOD} request"
    msg: Any = parse_message(
        _MESSAGES["FetchRequest"], body, limit=MAX_FETCH_REQUEST_BODY, what=what, required=False
    )
    if len(msg.ids) > MAX_FETCH or len(msg.directives) > MAX_FETCH:
        raise CodecError(f"{what}: more than {MAX_FETCH} ids or directives")
    ids = tuple(decode_object_id(bytes(raw)) for raw in msg.ids)
    try:
        return FetchRequest(tuple(bytes(d) for d in msg.directives), ids)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{what}: {exc}") from None


def encode_fetch_response(response: Sequence[SecretObject] | FetchFailure) -> bytes:
    """The body of an answer: the objects released, or a refusal. ValueError when the
    objects do not fit in :data:`MAX_FETCH_RESPONSE_BODY`."""
    msg: Any = _MESSAGES["FetchResponse"]()
    if isinstance(response, FetchFailure):
        code = response.code.value if isinstance(response.code, DisclosureCode) else response.code
        msg.error_code = code.encode()
        msg.error_message = response.reason.encode()
    else:
        msg.objects.extend(encode_object(obj) for obj in response)
    body: bytes = msg.SerializeToString(deterministic=True)
    if len(body) > MAX_FETCH_RESPONSE_BODY:
        raise ValueError(
            f"{len(body)} bytes of objects, over the {MAX_FETCH_RESPONSE_BODY}-byte answer limit"
        )
    return body


def decode_fetch_response(body: bytes) -> tuple[SecretObject, ...] | FetchFailure:
    """The answer ``body`` stands for; CodecError (and nothing else) when it does not
    decode or is out of its bounds."""
    what = f"{FETCH_METHOD} response"
    msg: Any = parse_message(
        _MESSAGES["FetchResponse"],
        body,
        limit=MAX_FETCH_RESPONSE_BODY,
        what=what,
        required=False,
    )
    if msg.HasField("error_code"):
        if msg.objects:
            raise CodecError(f"{what}: both objects and an error")
        try:
            code_text = bytes(msg.error_code)[:64].decode("utf-8")
            reason = bytes(msg.error_message).decode("utf-8", errors="replace")
        except UnicodeDecodeError:
            raise CodecError(f"{what}: error_code is not UTF-8") from None
        try:
            code: DisclosureCode | str = DisclosureCode(code_text)
        except ValueError:
            code = code_text
        return FetchFailure(code, reason)
    if len(msg.objects) > MAX_FETCH:
        raise CodecError(f"{what}: {len(msg.objects)} objects, over {MAX_FETCH}")
    objects = []
    for raw in msg.objects:
        if len(raw) > MAX_OBJECT_MESSAGE_BYTES:
            raise CodecError(f"{what}: an object of {len(raw)} bytes")
        objects.append(decode_object(bytes(raw)))
    return tuple(objects)
