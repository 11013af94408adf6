"""The secret service's proto2 messages (package ``secret_service``), built without protoc.

The original's ``secret_service.Request`` and ``Response`` keep their field numbers
and meanings (see the CloudProxy format sheet); taonet's additions take new numbers.
As in :mod:`taonet.protected`, ``string`` fields are declared ``bytes`` (same wire
encoding; the codec decodes UTF-8 strictly) and embedded ``object_id_message`` /
``object_message`` fields are declared ``bytes`` too (a length-delimited embedded
message is the same bytes as a bytes field holding its serialization), so they are
read by :mod:`taonet.protected`'s strict decoders. ``op`` (an enum in the original)
is read as ``uint64`` so that an unknown number is seen and refused, not dropped.

Request field 21, ``directive``, carries a disclosure directive's
``directive_message`` bytes (:mod:`taonet.disclosure`) on a Read only: the server
releases the object at the one epoch read to the channel's peer when the directive
grants it that (see :class:`taonet.secrets.ReadRequest`).

Internal: the public API is the attrs values of :mod:`taonet.secrets._protocol`.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from taonet.wire._schema import build_messages, parse_message

__all__ = ["message_class", "parse", "serialize"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
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
        ("directive", 21, _OPT, "bytes"),  # Read: a disclosure directive (taonet.disclosure)
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
        ("store_id", 12, _OPT, "bytes"),  # Info: the id of the server's store
    ],
}


_MESSAGES: Final = build_messages("taonet/secret_service.proto", _PACKAGE, _SCHEMA)


def message_class(name: str) -> Any:
    """The message class ``name`` (typed Any: built at run time)."""
    return _MESSAGES[name]


def parse(name: str, data: bytes, *, limit: int, what: str) -> Any:
    """Decode ``data`` (at most ``limit`` bytes) as ``name``; CodecError and nothing else."""
    return parse_message(_MESSAGES[name], data, limit=limit, what=what, required=False)


def serialize(msg: Message) -> bytes:
    """Serialize deterministically (fields in number order)."""
    return msg.SerializeToString(deterministic=True)
