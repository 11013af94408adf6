"""The secret service's proto2 messages (package ``secret_service``), built without protoc.

The original's ``secret_service.Request`` and ``Response`` keep their field numbers
and meanings (see the CloudProxy format sheet); taonet's additions take new numbers.
As in :mod:`taonet.protected`, ``string`` fields are declared ``bytes`` (same wire
encoding; the codec decodes UTF-8 strictly) and embedded ``object_id_message`` /
``object_message`` fields are declared ``bytes`` too (a length-delimited embedded
message is the same bytes as a bytes field holding its serialization), so they are
read by :mod:`taonet.protected`'s strict decoders. ``op`` (an enum in the original)
is read as ``uint64`` so that an unknown number is seen and refused, not dropped.

Internal: the public API is the attrs values of :mod:`taonet.secrets._protocol`.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from taonet._errors import CodecError

__all__ = ["message_class", "parse", "serialize"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_SCALARS: Final = {"bytes": _F.TYPE_BYTES, "uint64": _F.TYPE_UINT64, "bool": _F.TYPE_BOOL}
_PACKAGE: Final = "secret_service"

_SCHEMA: Final[dict[str, list[tuple[str, int, int, str]]]] = {
    "Request": [
        # The original's fields.
        ("op", 1, _OPT, "uint64"),  # enum: READ 1, WRITE 2, CREATE 3, DELETE 4 (+ taonet's)
        ("secret_id", 2, _OPT, "bytes"),  # object_id_message
        ("new_secret_type", 3, _OPT, "bytes"),
        ("new_secret_val", 4, _OPT, "bytes"),
        ("new_secret_id", 5, _OPT, "bytes"),  # object_id_message (unused by taonet)
        ("protector_id", 6, _OPT, "bytes"),  # object_id_message (unused by taonet)
        # taonet's.
        ("name", 7, _OPT, "bytes"),  # a name without an epoch
        ("prefix", 8, _OPT, "bytes"),  # List, Watch
        ("after", 9, _OPT, "bytes"),  # List: the page starts after this name
        ("limit", 10, _OPT, "uint64"),  # List: page size
        ("protector_name", 11, _OPT, "bytes"),  # Create: the key that protects it
        ("not_before", 12, _OPT, "bytes"),  # RFC 3339
        ("not_after", 13, _OPT, "bytes"),
        ("cursor", 14, _OPT, "uint64"),  # Watch
        ("principal", 15, _OPT, "bytes"),  # Grant
        ("ops", 16, _REP, "bytes"),  # Grant
        ("revoke", 17, _OPT, "bool"),  # Grant
        ("operator", 20, _OPT, "bytes"),  # an operator's credential (see the protocol)
    ],
    "WatchEvent": [
        ("name", 1, _OPT, "bytes"),
        ("epoch", 2, _OPT, "uint64"),
        ("kind", 3, _OPT, "bytes"),
        ("seq", 4, _OPT, "uint64"),
    ],
    "Response": [
        # The original's fields.
        ("error_message", 1, _OPT, "bytes"),
        ("secret_type", 2, _OPT, "bytes"),
        ("secret_val", 3, _OPT, "bytes"),
        # taonet's.
        ("error_code", 4, _OPT, "bytes"),
        ("secret", 5, _OPT, "bytes"),  # object_message: the object read
        ("secret_id", 6, _OPT, "bytes"),  # object_id_message: the object changed
        ("names", 7, _REP, "bytes"),  # List
        ("next_after", 8, _OPT, "bytes"),  # List: more after this name
        ("events", 9, _REP, "WatchEvent"),
        ("cursor", 10, _OPT, "uint64"),
        ("epochs", 11, _REP, "uint64"),  # Delete: the epochs removed
    ],
}


def _build() -> dict[str, type[Message]]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="taonet/secret_service.proto", package=_PACKAGE, syntax="proto2"
    )
    for msg_name, fields in _SCHEMA.items():
        msg = fdp.message_type.add(name=msg_name)
        for field_name, number, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label)
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _SCHEMA
    }


_MESSAGES: Final = _build()


def message_class(name: str) -> Any:
    """The message class ``name`` (typed Any: built at run time)."""
    return _MESSAGES[name]


def parse(name: str, data: bytes, *, limit: int, what: str) -> Any:
    """Decode ``data`` (at most ``limit`` bytes) as ``name``; CodecError and nothing else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise CodecError(f"{what}: {len(data)} bytes is over the {limit}-byte limit")
    msg = _MESSAGES[name]()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"{what}: malformed protobuf: {exc}") from None
    return msg


def serialize(msg: Message) -> bytes:
    """Serialize deterministically (fields in number order)."""
    return msg.SerializeToString(deterministic=True)
