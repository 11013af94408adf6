"""Codecs for the original's ``protected_objects`` messages.

``encode_*`` write what the original reads (times as RFC 3339, which Go's
``time.Parse(time.RFC3339, ...)`` reads); ``decode_*`` read what the original
writes (Go's ``Time.String()`` layout too) and raise :class:`~taonet.CodecError`
and nothing else on any input: malformed protobuf, a missing field, text that is
not UTF-8, a name or epoch the format forbids, an unknown status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from taonet._errors import CodecError
from taonet.protected._objects import (
    MAX_VALUE_BYTES,
    Node,
    ObjectId,
    ProtectedObject,
    SecretObject,
    Status,
)
from taonet.protected._schema import MAX_STORE_BYTES, message_class, parse, serialize
from taonet.protected._times import format_time, parse_time

__all__ = [
    "MAX_OBJECT_MESSAGE_BYTES",
    "MAX_STORE_ENTRIES",
    "decode_node",
    "decode_node_store",
    "decode_object",
    "decode_object_id",
    "decode_object_store",
    "decode_protected_object",
    "decode_protected_object_store",
    "encode_node",
    "encode_node_store",
    "encode_object",
    "encode_object_id",
    "encode_object_store",
    "encode_protected_object",
    "encode_protected_object_store",
]

#: Largest single object, node or protected object message decoded.
MAX_OBJECT_MESSAGE_BYTES: Final = MAX_VALUE_BYTES + 8192
#: Most entries in one store message.
MAX_STORE_ENTRIES: Final = 100_000
_STATUSES: Final = {s.value: s for s in Status}


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise CodecError(f"{what} is not valid UTF-8") from None


# -- object ids ---------------------------------------------------------------------


def _id_msg(oid: ObjectId) -> Any:
    return message_class("object_id_message")(obj_name=oid.name.encode(), obj_epoch=oid.epoch)


def _id_from(msg: Any, what: str) -> ObjectId:
    name = _text(msg.obj_name, f"{what} name")
    if not msg.HasField("obj_epoch"):
        raise CodecError(f"{what} {name[:64]!r}: no epoch")
    try:
        return ObjectId(name, msg.obj_epoch)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{what}: {exc}") from None


def encode_object_id(oid: ObjectId) -> bytes:
    """Serialize an ``object_id_message``."""
    return serialize(_id_msg(oid))


def decode_object_id(data: bytes) -> ObjectId:
    """Decode an ``object_id_message``; CodecError on anything malformed."""
    return _id_from(parse("object_id_message", data, limit=4096, what="object id"), "object id")


# -- objects ------------------------------------------------------------------------


def _object_msg(obj: SecretObject) -> Any:
    msg = message_class("object_message")(
        obj_id=_id_msg(obj.id),
        obj_type=obj.type.encode(),
        obj_status=obj.status.value.encode(),
        obj_val=obj.value,
    )
    try:
        if obj.not_before is not None:
            msg.not_before = format_time(obj.not_before).encode()
        if obj.not_after is not None:
            msg.not_after = format_time(obj.not_after).encode()
    except OverflowError as exc:
        raise ValueError(f"{obj.id}: time cannot be written in UTC: {exc}") from None
    return msg


def _object_from(msg: Any) -> SecretObject:
    oid = _id_from(msg.obj_id, "object id")
    if not msg.HasField("obj_type") or not msg.HasField("obj_status"):
        raise CodecError(f"object {oid}: type and status are required")
    status_text = _text(msg.obj_status, "object status")
    status = _STATUSES.get(status_text)
    if status is None:
        raise CodecError(f"object {oid}: unknown status {status_text[:32]!r}")
    not_before = (
        parse_time(_text(msg.not_before, "not_before"), round_up=True, what="not_before")
        if msg.HasField("not_before")
        else None
    )
    not_after = (
        parse_time(_text(msg.not_after, "not_after"), what="not_after")
        if msg.HasField("not_after")
        else None
    )
    try:
        return SecretObject(
            oid, _text(msg.obj_type, "object type"), status, not_before, not_after, msg.obj_val
        )
    except (TypeError, ValueError) as exc:
        raise CodecError(f"object {oid}: {exc}") from None


def encode_object(obj: SecretObject) -> bytes:
    """Serialize an ``object_message`` (times in RFC 3339, UTC)."""
    return serialize(_object_msg(obj))


def decode_object(data: bytes) -> SecretObject:
    """Decode an ``object_message`` (times in either layout); CodecError on anything bad."""
    return _object_from(
        parse("object_message", data, limit=MAX_OBJECT_MESSAGE_BYTES, what="object")
    )


# -- nodes and protected objects ----------------------------------------------------


def _node_msg(node: Node) -> Any:
    msg = message_class("node_message")(protected_obj_id=_id_msg(node.protected_id))
    if node.protector_id is not None:
        msg.protector_obj_id.CopyFrom(_id_msg(node.protector_id))
    return msg


def _node_from(msg: Any) -> Node:
    protected = _id_from(msg.protected_obj_id, "protected id")
    protector = (
        _id_from(msg.protector_obj_id, "protector id") if msg.HasField("protector_obj_id") else None
    )
    return Node(protected, protector)


def encode_node(node: Node) -> bytes:
    """Serialize a ``node_message``."""
    return serialize(_node_msg(node))


def decode_node(data: bytes) -> Node:
    """Decode a ``node_message``; CodecError on anything malformed."""
    return _node_from(parse("node_message", data, limit=8192, what="node"))


def _po_msg(po: ProtectedObject) -> Any:
    return message_class("protected_object_message")(
        protected_obj_id=_id_msg(po.protected_id),
        protector_obj_id=_id_msg(po.protector_id),
        blob=po.blob,
    )


def _po_from(msg: Any) -> ProtectedObject:
    protected = _id_from(msg.protected_obj_id, "protected id")
    if not msg.HasField("protector_obj_id") or not msg.HasField("blob"):
        raise CodecError(f"protected object {protected}: protector id and blob are required")
    protector = _id_from(msg.protector_obj_id, "protector id")
    try:
        return ProtectedObject(protected, protector, msg.blob)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"protected object: {exc}") from None


def encode_protected_object(po: ProtectedObject) -> bytes:
    """Serialize a ``protected_object_message``."""
    return serialize(_po_msg(po))


def decode_protected_object(data: bytes) -> ProtectedObject:
    """Decode a ``protected_object_message``; CodecError on anything malformed."""
    return _po_from(
        parse(
            "protected_object_message",
            data,
            limit=MAX_OBJECT_MESSAGE_BYTES,
            what="protected object",
        )
    )


# -- stores -------------------------------------------------------------------------


def _store_items(msg: Any, field: str, what: str) -> Any:
    items = getattr(msg, field)
    if len(items) > MAX_STORE_ENTRIES:
        raise CodecError(f"{what}: {len(items)} entries, over {MAX_STORE_ENTRIES}")
    return items


def encode_object_store(objects: Iterable[SecretObject]) -> bytes:
    """Serialize an ``object_store_message``."""
    msg = message_class("object_store_message")()
    msg.objects.extend(_object_msg(o) for o in objects)
    return serialize(msg)


def decode_object_store(data: bytes) -> tuple[SecretObject, ...]:
    """Decode an ``object_store_message``; CodecError on anything malformed."""
    msg = parse("object_store_message", data, limit=MAX_STORE_BYTES, what="object store")
    return tuple(_object_from(m) for m in _store_items(msg, "objects", "object store"))


def encode_node_store(nodes: Iterable[Node]) -> bytes:
    """Serialize a ``node_store_message``."""
    msg = message_class("node_store_message")()
    msg.node_objects.extend(_node_msg(n) for n in nodes)
    return serialize(msg)


def decode_node_store(data: bytes) -> tuple[Node, ...]:
    """Decode a ``node_store_message``; CodecError on anything malformed."""
    msg = parse("node_store_message", data, limit=MAX_STORE_BYTES, what="node store")
    return tuple(_node_from(m) for m in _store_items(msg, "node_objects", "node store"))


def encode_protected_object_store(objects: Iterable[ProtectedObject]) -> bytes:
    """Serialize a ``protected_object_store_message``."""
    msg = message_class("protected_object_store_message")()
    msg.protected_objects.extend(_po_msg(p) for p in objects)
    return serialize(msg)


def decode_protected_object_store(data: bytes) -> tuple[ProtectedObject, ...]:
    """Decode a ``protected_object_store_message``; CodecError on anything malformed."""
    msg = parse(
        "protected_object_store_message",
        data,
        limit=MAX_STORE_BYTES,
        what="protected object store",
    )
    items = _store_items(msg, "protected_objects", "protected object store")
    return tuple(_po_from(m) for m in items)
