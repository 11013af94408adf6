"""The secret service protocol: operations, typed messages and a pure codec.

Transport: the protorpc envelope (:class:`taonet.wire.Envelope`) over a Tao channel.
A request is a header naming the method (``SecretService.Read``, ...: :class:`Op`)
and a ``secret_service.Request`` body; the answer is a header and a
``secret_service.Response`` body. A refusal is a normal answer whose body carries a
typed ``error_code`` (:class:`~taonet.secrets.ErrorCode`) and a reason
(:class:`Failure`); a request the server cannot read at all (a body that does not
decode or is over its limit, an unknown method) gets an envelope error instead.
Several calls may be in flight on one channel (sequence numbers match them).

Messages (frozen attrs; protobuf classes never leave this package):

* requests: :class:`ReadRequest`, :class:`WriteRequest`, :class:`CreateRequest`,
  :class:`DeleteRequest`, :class:`ListRequest`, :class:`RotateRequest`,
  :class:`WatchRequest`, :class:`GrantRequest`, :class:`InfoRequest`; each may carry
  ``operator``, an opaque operator credential (see :func:`operator_payload`);
* responses: a :class:`~taonet.protected.SecretObject` (Read), :class:`Changed`
  (Write, Create, Rotate: the id now current), :class:`Deleted`, :class:`Listing`,
  :class:`WatchBatch`, :class:`Granted`, :class:`ServerInfo`, :class:`Failure`.

Info (``SecretService.Info``, taonet's op 9) asks the server which store it serves:
the answer's :attr:`ServerInfo.store_id` is the random id made when its database was
first set up, the same on every replica of that database and different on every
other database. An operator signs each request for that id (with the server's
principal: see :mod:`taonet.secrets._operator`), so a credential made for a test
server is refused by production even when both run the same program. Info needs no
right and no certificate (an operator's tool asks it before signing anything); the
answer is as authentic as the channel it came on: the caller verified the server's
principal in the handshake, and only that server holds the channel's key. An older
server that has no Info answers with an envelope error (unknown method); the other
operations are unchanged on the wire.

Directives. A Read may carry ``directive`` (field 21): the ``directive_message``
bytes of a disclosure directive (:mod:`taonet.disclosure`, signed by the policy key
or by a program that owns the name). The server then releases the object to the
channel's verified peer (never to a principal the request names) when the directive
verifies against the domain and grants that peer ``Read`` on exactly the
``(name, epoch)`` read; a Read with a directive must name its epoch (the server
refuses one without). At most :data:`MAX_DIRECTIVE_FIELD` bytes; on any other
operation the field is refused as malformed.

Wire: the original's fields keep their numbers and meanings: ``op`` 1 (READ 1,
WRITE 2, CREATE 3, DELETE 4; taonet adds LIST 5, ROTATE 6, WATCH 7, GRANT 8, INFO 9),
``secret_id`` 2 (the object read, written or deleted, at one epoch),
``new_secret_type`` 3, ``new_secret_val`` 4; response ``error_message`` 1,
``secret_type`` 2, ``secret_val`` 3. taonet writes both the original's fields and
its own where they overlap, and reads its own (see ``_schema`` for the numbers).
Everything is bounded before it is decoded: :data:`MAX_REQUEST_BODY`,
:data:`MAX_RESPONSE_BODY`, names (:data:`~taonet.protected.MAX_NAME_BYTES`), values
(:data:`~taonet.protected.MAX_VALUE_BYTES`), list pages (:data:`MAX_PAGE`), watch
batches (:data:`MAX_EVENTS`), operator credentials (:data:`MAX_OPERATOR_BYTES`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final

import attrs

from taonet._errors import CodecError, ProtocolError
from taonet.protected import (
    KEY_TYPE,
    MAX_EPOCH,
    MAX_NAME_BYTES,
    MAX_TYPE_CHARS,
    MAX_VALUE_BYTES,
    ObjectId,
    SecretObject,
    check_name,
    decode_object,
    decode_object_id,
    encode_object,
    encode_object_id,
    format_time,
    parse_time,
)
from taonet.secrets._errors import ErrorCode
from taonet.secrets._schema import message_class, parse, serialize

__all__ = [
    "DEFAULT_PAGE",
    "GRANT_OPS",
    "MAX_DIRECTIVE_FIELD",
    "MAX_EVENTS",
    "MAX_OPERATOR_BYTES",
    "MAX_PAGE",
    "MAX_REASON_CHARS",
    "MAX_REQUEST_BODY",
    "MAX_RESPONSE_BODY",
    "STORE_ID_BYTES",
    "Changed",
    "CreateRequest",
    "DeleteRequest",
    "Deleted",
    "Failure",
    "GrantRequest",
    "Granted",
    "InfoRequest",
    "ListRequest",
    "Listing",
    "Op",
    "ReadRequest",
    "Request",
    "Response",
    "RotateRequest",
    "ServerInfo",
    "WatchBatch",
    "WatchEvent",
    "WatchRequest",
    "WriteRequest",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "op_of",
    "operator_payload",
    "request_body_limit",
]

#: Most names in one List page (the server's page is never longer).
MAX_PAGE: Final = 1000
#: The page size when a List request gives none.
DEFAULT_PAGE: Final = 100
#: Most events in one Watch answer.
MAX_EVENTS: Final = 1000
#: Largest operator credential carried by a request.
MAX_OPERATOR_BYTES: Final = 16 * 1024
#: Largest directive a Read carries (a directive with a program certificate is ~2 KiB).
MAX_DIRECTIVE_FIELD: Final = 8 * 1024
#: Largest request body: a value of MAX_VALUE_BYTES, its name and the rest.
MAX_REQUEST_BODY: Final = MAX_VALUE_BYTES + MAX_OPERATOR_BYTES + 8 * 1024
#: Largest response body: a full List page of the longest names, or a value.
MAX_RESPONSE_BODY: Final = MAX_PAGE * (MAX_NAME_BYTES + 8) + MAX_VALUE_BYTES + 64 * 1024
#: Longest reason in a Failure (the rest is cut).
MAX_REASON_CHARS: Final = 1000
#: Length of a store id (:class:`ServerInfo`).
STORE_ID_BYTES: Final = 16
#: The operations a Grant may give (the guard's operations on object names).
GRANT_OPS: Final = ("Read", "Write", "Create", "Delete", "Own")
_SERVICE: Final = "SecretService"
_SMALL_REQUEST: Final = 3 * MAX_NAME_BYTES + MAX_OPERATOR_BYTES + 4096
_BODY_LIMITS: Final = {
    "Write": MAX_REQUEST_BODY,
    "Create": MAX_REQUEST_BODY,
    "Read": _SMALL_REQUEST + MAX_DIRECTIVE_FIELD,
}


class Op(enum.Enum):
    """The service's operations; ``method`` is the envelope header's op, ``number``
    the ``op`` field of the original's Request."""

    READ = ("Read", 1)
    WRITE = ("Write", 2)
    CREATE = ("Create", 3)
    DELETE = ("Delete", 4)
    LIST = ("List", 5)
    ROTATE = ("Rotate", 6)
    WATCH = ("Watch", 7)
    GRANT = ("Grant", 8)
    INFO = ("Info", 9)

    @property
    def method(self) -> str:
        """``SecretService.<Name>``."""
        return _METHOD_OF[self]

    @property
    def number(self) -> int:
        return int(self.value[1])

    @classmethod
    def from_method(cls, method: str) -> Op:
        """The operation named by an envelope header; ProtocolError for another."""
        op = _OP_OF_METHOD.get(method)
        if op is None:
            raise ProtocolError(f"unknown secret service method {method[:64]!r}")
        return op


#: Each operation's envelope method, and back (looked up on every request).
_METHOD_OF: Final[dict[Op, str]] = {op: f"{_SERVICE}.{op.value[0]}" for op in Op}
_OP_OF_METHOD: Final[dict[str, Op]] = {method: op for op, method in _METHOD_OF.items()}


def request_body_limit(method: str) -> int:
    """The largest body the server reads for ``method`` (Write and Create carry values)."""
    service, _, name = method.partition(".")
    if service != _SERVICE:
        return _SMALL_REQUEST
    return _BODY_LIMITS.get(name, _SMALL_REQUEST)


# -- validators ---------------------------------------------------------------------


def _name(_inst: object, _attr: object, value: str) -> None:
    check_name(value)


def _prefix(_inst: object, _attr: object, value: str) -> None:
    if value != "/":
        check_name(value[:-1] if value.endswith("/") else value)


def _opt_name(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None:
        check_name(value)


def _opt_epoch(_inst: object, _attr: object, value: int | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EPOCH
    ):
        raise ValueError(f"epoch must be 1..{MAX_EPOCH}, got {value!r}")


def _value(_inst: object, _attr: object, value: bytes | None) -> None:
    if value is not None and len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"value is {len(value)} bytes, over {MAX_VALUE_BYTES}")


def _req_value(_inst: object, _attr: object, value: bytes) -> None:
    _value(_inst, _attr, value)


def _type(_inst: object, _attr: object, value: str) -> None:
    if not 1 <= len(value) <= MAX_TYPE_CHARS or not all(" " < c <= "~" for c in value):
        raise ValueError(f"type must be 1..{MAX_TYPE_CHARS} printable ASCII characters")


def _operator(_inst: object, _attr: object, value: bytes | None) -> None:
    if value is not None and len(value) > MAX_OPERATOR_BYTES:
        raise ValueError(f"operator credential over {MAX_OPERATOR_BYTES} bytes")


def _strs(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _events(value: Iterable[WatchEvent]) -> tuple[WatchEvent, ...]:
    return tuple(value)


def _reason(value: object) -> str:
    return str(value)[:MAX_REASON_CHARS]


def _bytes(value: bytes | bytearray | memoryview) -> bytes:
    return bytes(value)


def _directive(_inst: object, _attr: object, value: bytes | None) -> None:
    if value is not None and not 1 <= len(value) <= MAX_DIRECTIVE_FIELD:
        raise ValueError(f"a directive must be 1..{MAX_DIRECTIVE_FIELD} bytes")


def _opt_bytes(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[call-overload]


def _aware(_inst: object, attr: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise ValueError(f"{attr.name} must be a timezone-aware datetime")


def _operator_field() -> Any:
    return attrs.field(
        default=None, kw_only=True, converter=_opt_bytes, validator=_operator, repr=False
    )


# -- requests -----------------------------------------------------------------------


@attrs.frozen
class ReadRequest:
    """Read ``name`` at ``epoch``, or its latest ACTIVE epoch (needs Read).

    ``directive``: a disclosure directive's bytes (:mod:`taonet.disclosure`) that
    grants the caller Read on ``(name, epoch)``, in place of the guard's Read; the
    server refuses it without an ``epoch`` (see the module docstring)."""

    name: str = attrs.field(validator=_name)
    epoch: int | None = attrs.field(default=None, validator=_opt_epoch)
    operator: bytes | None = _operator_field()
    directive: bytes | None = attrs.field(
        default=None, kw_only=True, converter=_opt_bytes, validator=_directive, repr=False
    )


@attrs.frozen
class WriteRequest:
    """Replace the value of ``name`` at ``epoch`` (default: its latest ACTIVE epoch), in
    place (needs Write). A key that protects other objects is rotated, not written."""

    name: str = attrs.field(validator=_name)
    value: bytes = attrs.field(converter=_bytes, validator=_req_value, repr=False)
    epoch: int | None = attrs.field(default=None, validator=_opt_epoch)
    operator: bytes | None = _operator_field()


@attrs.frozen
class CreateRequest:
    """Create ``name`` at epoch 1, or after every epoch it had if it was deleted (needs
    Create). ``value`` None: the server makes a random key (``type`` must then be
    :data:`~taonet.protected.KEY_TYPE`). ``protector``: the key (by name, its latest
    ACTIVE epoch) that protects the new object; default the server's master key."""

    name: str = attrs.field(validator=_name)
    value: bytes | None = attrs.field(
        default=None, converter=_opt_bytes, validator=_value, repr=False
    )
    type: str = attrs.field(default="bytes", validator=_type)
    protector: str | None = attrs.field(default=None, validator=_opt_name)
    not_before: datetime | None = attrs.field(default=None, validator=_aware)
    not_after: datetime | None = attrs.field(default=None, validator=_aware)
    operator: bytes | None = _operator_field()

    def __attrs_post_init__(self) -> None:
        if self.value is None and self.type != KEY_TYPE:
            raise ValueError(f"only a {KEY_TYPE} key may be created without a value")


@attrs.frozen
class DeleteRequest:
    """Delete ``name`` at ``epoch``, or every epoch of it (needs Delete)."""

    name: str = attrs.field(validator=_name)
    epoch: int | None = attrs.field(default=None, validator=_opt_epoch)
    operator: bytes | None = _operator_field()


@attrs.frozen
class ListRequest:
    """Names under ``prefix`` the caller may Read, in order, a page at a time."""

    prefix: str = attrs.field(default="/", validator=_prefix)
    after: str | None = attrs.field(default=None, validator=_opt_name)
    limit: int = attrs.field(default=DEFAULT_PAGE)
    operator: bytes | None = _operator_field()

    @limit.validator
    def _limit(self, _attr: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}, got {value!r}")


@attrs.frozen
class RotateRequest:
    """A new epoch of ``name`` (needs Own): ``value``, or a random key for a key; what
    the old epoch protected is rewrapped under the new one; the old epoch is RETIRED."""

    name: str = attrs.field(validator=_name)
    value: bytes | None = attrs.field(
        default=None, converter=_opt_bytes, validator=_value, repr=False
    )
    operator: bytes | None = _operator_field()


@attrs.frozen
class WatchRequest:
    """Events under ``prefix`` after ``cursor`` (served by the watch extension)."""

    prefix: str = attrs.field(default="/", validator=_prefix)
    cursor: int = attrs.field(default=0)
    operator: bytes | None = _operator_field()

    @cursor.validator
    def _cursor(self, _attr: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValueError(f"cursor must be 0..2**63-1, got {value!r}")


@attrs.frozen
class GrantRequest:
    """Give (or with ``revoke``, take back) ``ops`` on ``name`` to ``principal`` (its
    text form); served by the operator extension."""

    principal: str = attrs.field(validator=attrs.validators.instance_of(str))
    ops: tuple[str, ...] = attrs.field(converter=_strs)
    name: str = attrs.field(validator=_prefix)
    revoke: bool = False
    operator: bytes | None = _operator_field()

    @principal.validator
    def _principal(self, _attr: object, value: str) -> None:
        if not 1 <= len(value.encode("utf-8", "surrogatepass")) <= 4 * MAX_NAME_BYTES:
            raise ValueError("principal must be 1..4096 bytes of text")

    @ops.validator
    def _ops(self, _attr: object, value: tuple[str, ...]) -> None:
        if not value or len(set(value)) != len(value) or not set(value) <= set(GRANT_OPS):
            raise ValueError(f"ops must be distinct names among {', '.join(GRANT_OPS)}")


@attrs.frozen
class InfoRequest:
    """Which store the server serves (answered with :class:`ServerInfo` to anyone on a
    channel, with or without a certificate; needs no right)."""

    operator: bytes | None = _operator_field()


Request = (
    ReadRequest
    | WriteRequest
    | CreateRequest
    | DeleteRequest
    | ListRequest
    | RotateRequest
    | WatchRequest
    | GrantRequest
    | InfoRequest
)
_OP_OF: Final[dict[type[Any], Op]] = {
    ReadRequest: Op.READ,
    WriteRequest: Op.WRITE,
    CreateRequest: Op.CREATE,
    DeleteRequest: Op.DELETE,
    ListRequest: Op.LIST,
    RotateRequest: Op.ROTATE,
    WatchRequest: Op.WATCH,
    GrantRequest: Op.GRANT,
    InfoRequest: Op.INFO,
}


def op_of(request: Request) -> Op:
    """The operation a request asks for."""
    return _OP_OF[type(request)]


# -- responses ----------------------------------------------------------------------


@attrs.frozen
class Changed:
    """Write, Create, Rotate: the object's id now (Rotate: the new epoch)."""

    id: ObjectId = attrs.field(validator=attrs.validators.instance_of(ObjectId))


@attrs.frozen
class Deleted:
    """Delete: the epochs of ``name`` removed."""

    name: str = attrs.field(validator=_name)
    epochs: tuple[int, ...] = attrs.field(converter=_ints)


@attrs.frozen
class Listing:
    """List: a page of names; ``next_after`` is set when more follow (ask again after it)."""

    names: tuple[str, ...] = attrs.field(converter=_strs)
    next_after: str | None = attrs.field(default=None, validator=_opt_name)

    @names.validator
    def _names(self, _attr: object, value: tuple[str, ...]) -> None:
        if len(value) > MAX_PAGE:
            raise ValueError(f"a page holds at most {MAX_PAGE} names")
        for name in value:
            check_name(name)


@attrs.frozen
class WatchEvent:
    """Something happened to an object: ``kind`` ``"created"``, ``"written"``,
    ``"rotated"`` (a new epoch) or ``"deleted"``; ``seq`` orders events."""

    id: ObjectId = attrs.field(validator=attrs.validators.instance_of(ObjectId))
    kind: str = attrs.field(validator=_type)
    seq: int = 0


@attrs.frozen
class WatchBatch:
    """Watch: events in order; ``cursor`` is where to ask from next."""

    events: tuple[WatchEvent, ...] = attrs.field(converter=_events)
    cursor: int = 0

    @events.validator
    def _events(self, _attr: object, value: tuple[WatchEvent, ...]) -> None:
        if len(value) > MAX_EVENTS:
            raise ValueError(f"a watch answer holds at most {MAX_EVENTS} events")


@attrs.frozen
class Granted:
    """Grant: the guard now holds (or no longer holds) the rule."""


@attrs.frozen
class ServerInfo:
    """Info: ``store_id``, the id of the store (database) the server serves, made at
    random when it was first set up and shared by its replicas. Authentic as far as
    the channel it came on is (the caller verified the server's principal)."""

    store_id: bytes = attrs.field(converter=_bytes)

    @store_id.validator
    def _store_id(self, _attr: object, value: bytes) -> None:
        if len(value) != STORE_ID_BYTES:
            raise ValueError(f"a store id is {STORE_ID_BYTES} bytes, got {len(value)}")


@attrs.frozen
class Failure:
    """A refusal: a typed code and a reason (cut at :data:`MAX_REASON_CHARS`)."""

    code: ErrorCode | str
    reason: str = attrs.field(converter=_reason)


Response = SecretObject | Changed | Deleted | Listing | WatchBatch | Granted | ServerInfo | Failure


# -- codec --------------------------------------------------------------------------


def _text(raw: bytes, what: str) -> str:
    try:
        return bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise CodecError(f"{what} is not valid UTF-8") from None


def _field_text(msg: Any, field: str, limit: int) -> str | None:
    if not msg.HasField(field):
        return None
    raw = getattr(msg, field)
    if len(raw) > limit:
        raise CodecError(f"{field}: {len(raw)} bytes is over the {limit}-byte limit")
    return _text(raw, field)


def _need(value: Any, field: str, what: str) -> Any:
    if value is None:
        raise CodecError(f"{what}: {field} is missing")
    return value


def encode_request(request: Request) -> tuple[str, bytes]:
    """The envelope method and the body bytes of ``request``."""
    op = op_of(request)
    msg = message_class("Request")(op=op.number)
    if isinstance(request, ReadRequest | WriteRequest | DeleteRequest):
        if request.epoch is None:
            msg.name = request.name.encode()
        else:  # the original's field: the object at one epoch
            msg.secret_id = encode_object_id(ObjectId(request.name, request.epoch))
    if isinstance(request, WriteRequest):
        msg.new_secret_val = request.value
    elif isinstance(request, CreateRequest):
        msg.name = request.name.encode()
        msg.new_secret_type = request.type.encode()
        if request.value is not None:
            msg.new_secret_val = request.value
        if request.protector is not None:
            msg.protector_name = request.protector.encode()
        if request.not_before is not None:
            msg.not_before = format_time(request.not_before).encode()
        if request.not_after is not None:
            msg.not_after = format_time(request.not_after).encode()
    elif isinstance(request, ListRequest):
        msg.prefix = request.prefix.encode()
        msg.limit = request.limit
        if request.after is not None:
            msg.after = request.after.encode()
    elif isinstance(request, RotateRequest):
        msg.name = request.name.encode()
        if request.value is not None:
            msg.new_secret_val = request.value
    elif isinstance(request, WatchRequest):
        msg.prefix = request.prefix.encode()
        msg.cursor = request.cursor
    elif isinstance(request, GrantRequest):
        msg.name = request.name.encode()
        msg.principal = request.principal.encode()
        msg.ops.extend(o.encode() for o in request.ops)
        msg.revoke = request.revoke
    if request.operator is not None:
        msg.operator = request.operator
    if isinstance(request, ReadRequest) and request.directive is not None:
        msg.directive = request.directive
    return op.method, serialize(msg)


def operator_payload(request: Request) -> bytes:
    """The bytes an operator's credential covers: the method, a NUL, and the body of
    ``request`` without its ``operator`` field (so the credential cannot cover itself)."""
    method, body = encode_request(attrs.evolve(request, operator=None))
    return method.encode() + b"\0" + body


def _id_and_name(msg: Any, what: str) -> tuple[str, int | None]:
    """The object a Read/Write/Delete names: ``secret_id`` (one epoch) or ``name``."""
    if msg.HasField("secret_id"):
        if msg.HasField("name"):
            raise CodecError(f"{what}: both secret_id and name")
        oid = decode_object_id(bytes(msg.secret_id))
        return oid.name, oid.epoch
    return _need(_field_text(msg, "name", MAX_NAME_BYTES), "name", what), None


def _build(what: str, make: Callable[[], Request]) -> Request:
    try:
        return make()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"{what}: {exc}") from None


def decode_request(method: str, body: bytes) -> Request:
    """The request a header's method and a body stand for.

    ProtocolError for a method that is not the service's; CodecError (and nothing
    else) for a body that does not decode, a field out of its bounds, or an ``op``
    field that names another operation than the method.
    """
    op = Op.from_method(method)
    what = f"{method} request"
    msg = parse("Request", body, limit=request_body_limit(method), what=what)
    if msg.HasField("op") and msg.op != op.number:
        raise CodecError(f"{what}: op field {msg.op} is not {op.name} ({op.number})")
    for unused in ("new_secret_id", "protector_id"):
        if msg.HasField(unused):
            raise CodecError(f"{what}: taonet does not read {unused}")
    operator = bytes(msg.operator) if msg.HasField("operator") else None
    if operator is not None and len(operator) > MAX_OPERATOR_BYTES:
        raise CodecError(f"{what}: operator credential over {MAX_OPERATOR_BYTES} bytes")
    directive = bytes(msg.directive) if msg.HasField("directive") else None
    if directive is not None and op is not Op.READ:
        raise CodecError(f"{what}: only a Read carries a directive")
    value = bytes(msg.new_secret_val) if msg.HasField("new_secret_val") else None

    def text(field: str, limit: int = MAX_NAME_BYTES) -> str | None:
        return _field_text(msg, field, limit)

    def when(field: str, *, round_up: bool = False) -> datetime | None:
        raw = text(field, 64)
        return None if raw is None else parse_time(raw, round_up=round_up, what=field)

    if op is Op.READ:
        name, epoch = _id_and_name(msg, what)
        return _build(
            what, lambda: ReadRequest(name, epoch, operator=operator, directive=directive)
        )
    if op is Op.DELETE:
        name, epoch = _id_and_name(msg, what)
        return _build(what, lambda: DeleteRequest(name, epoch, operator=operator))
    if op is Op.WRITE:
        name, epoch = _id_and_name(msg, what)
        data = _need(value, "new_secret_val", what)
        return _build(what, lambda: WriteRequest(name, data, epoch, operator=operator))
    if op is Op.CREATE:
        name = _need(text("name"), "name", what)
        kind = _need(text("new_secret_type", MAX_TYPE_CHARS), "new_secret_type", what)
        protector = text("protector_name")
        not_before, not_after = when("not_before", round_up=True), when("not_after")
        return _build(
            what,
            lambda: CreateRequest(
                name,
                value,
                kind,
                protector,
                not_before,
                not_after,
                operator=operator,
            ),
        )
    if op is Op.LIST:
        prefix = text("prefix") or "/"
        limit = int(msg.limit) if msg.HasField("limit") else DEFAULT_PAGE
        after = text("after")
        return _build(what, lambda: ListRequest(prefix, after, limit, operator=operator))
    if op is Op.ROTATE:
        name = _need(text("name"), "name", what)
        return _build(what, lambda: RotateRequest(name, value, operator=operator))
    if op is Op.WATCH:
        prefix = text("prefix") or "/"
        cursor = int(msg.cursor)
        return _build(what, lambda: WatchRequest(prefix, cursor, operator=operator))
    if op is Op.INFO:
        return _build(what, lambda: InfoRequest(operator=operator))
    name = _need(text("name"), "name", what)
    principal = _need(text("principal", 4 * MAX_NAME_BYTES), "principal", what)
    if len(msg.ops) > len(GRANT_OPS):
        raise CodecError(f"{what}: more than {len(GRANT_OPS)} ops")
    ops = tuple(_text(o, "op")[:16] for o in msg.ops)
    revoke = bool(msg.revoke)
    return _build(
        what, lambda: GrantRequest(principal, ops, name, revoke=revoke, operator=operator)
    )


def encode_response(response: Response) -> bytes:
    """The body of ``response``."""
    msg = message_class("Response")()
    if isinstance(response, Failure):
        code = response.code.value if isinstance(response.code, ErrorCode) else response.code
        msg.error_code = code.encode()
        msg.error_message = response.reason.encode()
    elif isinstance(response, SecretObject):
        msg.secret = encode_object(response)
        msg.secret_type = response.type.encode()  # the original's fields, for its clients
        msg.secret_val = response.value
    elif isinstance(response, Changed):
        msg.secret_id = encode_object_id(response.id)
    elif isinstance(response, Deleted):
        msg.secret_id = encode_object_id(ObjectId(response.name, max(response.epochs or (1,))))
        msg.epochs.extend(response.epochs)
    elif isinstance(response, Listing):
        msg.names.extend(n.encode() for n in response.names)
        if response.next_after is not None:
            msg.next_after = response.next_after.encode()
    elif isinstance(response, WatchBatch):
        for event in response.events:
            msg.events.add(
                name=event.id.name.encode(),
                epoch=event.id.epoch,
                kind=event.kind.encode(),
                seq=event.seq,
            )
        msg.cursor = response.cursor
    elif isinstance(response, ServerInfo):
        msg.store_id = response.store_id
    elif not isinstance(response, Granted):
        raise TypeError(f"not a secret service response: {type(response).__name__}")
    return serialize(msg)


def decode_response(method: str, body: bytes) -> Response:
    """The response to a ``method`` call; CodecError (and nothing else) if it does not
    decode or does not fit the method (ProtocolError for a method not the service's)."""
    op = Op.from_method(method)
    what = f"{method} response"
    msg = parse("Response", body, limit=MAX_RESPONSE_BODY, what=what)
    if msg.HasField("error_code"):
        code = _text(msg.error_code, "error_code")[:64]
        reason = _text(msg.error_message, "error_message") if msg.HasField("error_message") else ""
        try:
            known: ErrorCode | str = ErrorCode(code)
        except ValueError:
            known = code
        return Failure(known, reason)
    try:
        if op is Op.READ:
            return decode_object(bytes(_need(msg.secret or None, "secret", what)))
        if op in (Op.WRITE, Op.CREATE, Op.ROTATE):
            return Changed(decode_object_id(bytes(_need(msg.secret_id or None, "secret_id", what))))
        if op is Op.DELETE:
            oid = decode_object_id(bytes(_need(msg.secret_id or None, "secret_id", what)))
            return Deleted(oid.name, tuple(int(e) for e in msg.epochs))
        if op is Op.LIST:
            if len(msg.names) > MAX_PAGE:
                raise CodecError(f"{what}: more than {MAX_PAGE} names")
            names = tuple(_text(n, "name") for n in msg.names)
            after = _text(msg.next_after, "next_after") if msg.HasField("next_after") else None
            return Listing(names, after)
        if op is Op.WATCH:
            if len(msg.events) > MAX_EVENTS:
                raise CodecError(f"{what}: more than {MAX_EVENTS} events")
            events = tuple(
                WatchEvent(
                    ObjectId(_text(e.name, "event name"), int(e.epoch)),
                    _text(e.kind, "event kind"),
                    int(e.seq),
                )
                for e in msg.events
            )
            return WatchBatch(events, int(msg.cursor))
        if op is Op.INFO:
            if not msg.HasField("store_id"):
                raise CodecError(f"{what}: store_id is missing")
            return ServerInfo(bytes(msg.store_id))
        return Granted()
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{what}: {exc}") from None
