"""The original's ``protected_objects`` proto2 messages, built without protoc.

Declared as data and turned into message classes at import time, as
:mod:`taonet.wire` does for the Tao messages, in their own descriptor pool and
proto package (``protected_objects``). Every ``string`` field of the original is
declared here as ``bytes``: the wire encoding is the same (length-delimited), and
the codec then decodes UTF-8 strictly itself, so a name that is not UTF-8 is a
:class:`~taonet.CodecError` and not whatever the protobuf runtime does with it.
Likewise ``obj_epoch`` (an ``int32``) is read as ``uint64``: both are varints and a
valid epoch (1 .. 2**31-1) has the same bytes either way, but an ``int32`` reader
would cut 2**32+1 down to 1 and read Go's 10-byte negative numbers as negative;
read whole, every epoch outside the range is seen and refused.

These classes are internal: the public API is the attrs values of ``_objects``
and the functions of ``_codec``.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from taonet.wire._schema import build_messages, parse_message

__all__ = ["MAX_STORE_BYTES", "message_class", "parse", "serialize"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REQ, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REQUIRED, _F.LABEL_REPEATED
_PACKAGE: Final = "protected_objects"

# protected_objects.proto of the original (strings declared as bytes, see above).
_SCHEMA: Final[dict[str, list[tuple[str, int, int, str]]]] = {
    "object_id_message": [("obj_name", 1, _REQ, "bytes"), ("obj_epoch", 2, _OPT, "uint64")],
    "object_message": [
        ("obj_id", 1, _REQ, "object_id_message"),
        ("obj_type", 2, _OPT, "bytes"),
        ("obj_status", 3, _OPT, "bytes"),
        ("not_before", 4, _OPT, "bytes"),
        ("not_after", 5, _OPT, "bytes"),
        ("obj_val", 6, _OPT, "bytes"),
    ],
    "node_message": [
        ("protected_obj_id", 1, _REQ, "object_id_message"),
        ("protector_obj_id", 2, _OPT, "object_id_message"),
    ],
    "protected_object_message": [
        ("protected_obj_id", 1, _REQ, "object_id_message"),
        ("protector_obj_id", 2, _OPT, "object_id_message"),
        ("blob", 3, _OPT, "bytes"),
    ],
    "object_store_message": [("objects", 1, _REP, "object_message")],
    "node_store_message": [("node_objects", 1, _REP, "node_message")],
    "protected_object_store_message": [("protected_objects", 1, _REP, "protected_object_message")],
}

#: Largest store message decoded at all (a single object is bounded tighter by the codec).
MAX_STORE_BYTES: Final = 20 * 1024 * 1024


_MESSAGES: Final = build_messages("taonet/protected_objects.proto", _PACKAGE, _SCHEMA)


def message_class(name: str) -> Any:
    """The message class ``name`` (typed Any: built at run time)."""
    return _MESSAGES[name]


def parse(name: str, data: bytes, *, limit: int, what: str) -> Any:
    """Decode ``data`` (at most ``limit`` bytes) as ``name``; CodecError and nothing else."""
    return parse_message(_MESSAGES[name], data, limit=limit, what=what)


def serialize(msg: Message) -> bytes:
    """Serialize deterministically (fields in number order)."""
    return msg.SerializeToString(deterministic=True)
