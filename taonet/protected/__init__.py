"""Protected objects: keys and files sealed under other keys, chains of them, rotation.

Pure: no trio, no I/O. The values (frozen attrs):

* :class:`ObjectId` (hierarchical name, epoch), :class:`Status`,
  :class:`SecretObject` (type, status, validity window, value; repr hides the value),
  :class:`ProtectedObject` (protected id, protector id, blob), :class:`Node`.
* :func:`protect` / :func:`unprotect`: AES-256-GCM under a :data:`KEY_TYPE`
  protector, both ids bound as associated data; :func:`recover` follows a chain
  from a leaf to a root key (bounded by :data:`MAX_CHAIN_DEPTH`, cycles refused).
* :func:`plan_rotation` -> :class:`Rotation` (new epoch, children rewrapped, old
  epoch retired), :func:`may_revoke`.
* Codecs of the original's ``protected_objects`` proto2 messages
  (``encode_*``/``decode_*``): times read in Go's ``Time.String()`` layout and
  RFC 3339, written in RFC 3339.

Errors: :class:`ProtectedObjectError` (``.reason``, a :class:`Reason`) and its
kinds :class:`MissingProtectorError`, :class:`WrongKeyError` (also an
AuthenticationError), :class:`ObjectStateError` (also an AuthenticationError),
:class:`ChainCycleError`, :class:`ChainTooLongError`; decoders raise
:class:`~taonet.CodecError` and nothing else.
"""

from __future__ import annotations

from taonet.protected._codec import (
    MAX_OBJECT_MESSAGE_BYTES,
    MAX_STORE_ENTRIES,
    decode_node,
    decode_node_store,
    decode_object,
    decode_object_id,
    decode_object_store,
    decode_protected_object,
    decode_protected_object_store,
    encode_node,
    encode_node_store,
    encode_object,
    encode_object_id,
    encode_object_store,
    encode_protected_object,
    encode_protected_object_store,
)
from taonet.protected._errors import (
    ChainCycleError,
    ChainTooLongError,
    MissingProtectorError,
    ObjectStateError,
    ProtectedObjectError,
    Reason,
    WrongKeyError,
)
from taonet.protected._objects import (
    KEY_BYTES,
    KEY_TYPE,
    MAX_EPOCH,
    MAX_NAME_BYTES,
    MAX_TYPE_CHARS,
    MAX_VALUE_BYTES,
    Node,
    ObjectId,
    ProtectedObject,
    SecretObject,
    Status,
    check_name,
)
from taonet.protected._protect import (
    AAD_CONTEXT,
    MAX_CHAIN_DEPTH,
    associated_data,
    protect,
    recover,
    unprotect,
)
from taonet.protected._rotation import Rotation, may_revoke, plan_rotation
from taonet.protected._times import format_time, parse_time

__all__ = [
    "AAD_CONTEXT",
    "KEY_BYTES",
    "KEY_TYPE",
    "MAX_CHAIN_DEPTH",
    "MAX_EPOCH",
    "MAX_NAME_BYTES",
    "MAX_OBJECT_MESSAGE_BYTES",
    "MAX_STORE_ENTRIES",
    "MAX_TYPE_CHARS",
    "MAX_VALUE_BYTES",
    "ChainCycleError",
    "ChainTooLongError",
    "MissingProtectorError",
    "Node",
    "ObjectId",
    "ObjectStateError",
    "ProtectedObject",
    "ProtectedObjectError",
    "Reason",
    "Rotation",
    "SecretObject",
    "Status",
    "WrongKeyError",
    "associated_data",
    "check_name",
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
    "format_time",
    "may_revoke",
    "parse_time",
    "plan_rotation",
    "protect",
    "recover",
    "unprotect",
]

# What this namespace exports reports it as its home (reprs, tracebacks, docs).
for _public in (
    ChainCycleError,
    ChainTooLongError,
    MissingProtectorError,
    Node,
    ObjectId,
    ObjectStateError,
    ProtectedObject,
    ProtectedObjectError,
    Reason,
    Rotation,
    SecretObject,
    Status,
    WrongKeyError,
    associated_data,
    check_name,
    decode_node,
    decode_node_store,
    decode_object,
    decode_object_id,
    decode_object_store,
    decode_protected_object,
    decode_protected_object_store,
    encode_node,
    encode_node_store,
    encode_object,
    encode_object_id,
    encode_object_store,
    encode_protected_object,
    encode_protected_object_store,
    format_time,
    may_revoke,
    parse_time,
    plan_rotation,
    protect,
    recover,
    unprotect,
):
    _public.__module__ = __name__
del _public
