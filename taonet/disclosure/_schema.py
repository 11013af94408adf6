"""The original's ``secret_disclosure.directive_message`` (proto2), built without protoc.

Declared as data like :mod:`taonet.protected`'s messages, in a descriptor pool and
proto package of its own (``secret_disclosure``). ``type`` (an enum in the original,
``SECRET_DISCLOSURE = 1``) is read as ``uint64``: an enum reader would move an unknown
number to the unknown fields, where it would look like no type at all; read whole,
every number is seen and refused but 1.

Internal: the public API is :mod:`taonet.disclosure`'s values and functions.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from taonet.wire._schema import build_messages, parse_message

__all__ = ["SECRET_DISCLOSURE", "message_class", "parse", "serialize"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT: Final = _F.LABEL_OPTIONAL
_PACKAGE: Final = "secret_disclosure"

#: ``directive_message.directive_type.SECRET_DISCLOSURE``, the only type there is.
SECRET_DISCLOSURE: Final = 1

_SCHEMA: Final[dict[str, list[tuple[str, int, int, str]]]] = {
    "directive_message": [
        ("type", 1, _OPT, "uint64"),  # enum directive_type {SECRET_DISCLOSURE = 1}
        ("serialized_statement", 2, _OPT, "bytes"),  # auth binary: a Says
        ("signer", 3, _OPT, "bytes"),  # auth binary: key([sha256 of PKIX])
        ("signature", 4, _OPT, "bytes"),  # SignedData, DIRECTIVE_CONTEXT
        ("cert", 5, _OPT, "bytes"),  # the signer's program certificate (DER)
    ],
}

_MESSAGES: Final = build_messages("taonet/directive.proto", _PACKAGE, _SCHEMA)


def message_class(name: str) -> Any:
    """The message class ``name`` (typed Any: built at run time)."""
    return _MESSAGES[name]


def parse(name: str, data: bytes, *, limit: int, what: str) -> Any:
    """Decode ``data`` (at most ``limit`` bytes) as ``name``; CodecError and nothing else."""
    return parse_message(_MESSAGES[name], data, limit=limit, what=what, required=False)


def serialize(msg: Message) -> bytes:
    """Serialize deterministically (fields in number order)."""
    return msg.SerializeToString(deterministic=True)
