"""Sealing an object under its protector, opening it, and following a chain of them.

A protected object's blob is :class:`taonet.crypto.Crypter` output (version byte
0x01, 12-byte random nonce, AES-256-GCM ciphertext and tag) over the serialized
``object_message``, under the protector's 32-byte value, with associated data::

    b"taonet protected object v1\\x00" || serialized node_message{protected id, protector id}

so a blob moved to another protected id, another epoch or another protector does
not authenticate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from taonet._errors import AuthenticationError, CodecError
from taonet.crypto import Crypter
from taonet.protected._codec import decode_object, encode_object
from taonet.protected._errors import (
    ChainCycleError,
    ChainTooLongError,
    MissingProtectorError,
    ObjectStateError,
    Reason,
    WrongKeyError,
)
from taonet.protected._objects import (
    KEY_BYTES,
    KEY_TYPE,
    ObjectId,
    ProtectedObject,
    SecretObject,
    Status,
)

__all__ = [
    "AAD_CONTEXT",
    "MAX_CHAIN_DEPTH",
    "associated_data",
    "protect",
    "recover",
    "unprotect",
]

#: Prefix of every protected object's associated data.
AAD_CONTEXT: Final = b"taonet protected object v1\x00"
#: Most protected objects between a leaf and its root (leaf's own included).
MAX_CHAIN_DEPTH: Final = 16


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _id_bytes(oid: ObjectId) -> bytes:
    # object_id_message{obj_name = 1, obj_epoch = 2}, as serialize() writes it.
    name = oid.name.encode()
    return b"\x0a" + _varint(len(name)) + name + b"\x10" + _varint(oid.epoch)


def _aad(protected: bytes, protector: bytes) -> bytes:
    # AAD_CONTEXT + node_message{protected_obj_id = 1, protector_obj_id = 2}.
    parts = (AAD_CONTEXT, b"\x0a", _varint(len(protected)), protected)
    return b"".join((*parts, b"\x12", _varint(len(protector)), protector))


def associated_data(protected_id: ObjectId, protector_id: ObjectId) -> bytes:
    """The associated data a blob is bound to (see the module docstring).

    Encoded here directly (the same bytes as ``encode_node``: a test holds them equal),
    since rotation computes two per child.
    """
    return _aad(_id_bytes(protected_id), _id_bytes(protector_id))


def _crypter(protector: SecretObject) -> Crypter:
    if not isinstance(protector, SecretObject):
        raise TypeError(f"protector must be a SecretObject, got {type(protector).__name__}")
    if protector.type != KEY_TYPE or len(protector.value) != KEY_BYTES:
        raise WrongKeyError(
            f"{protector.id} is not a key: type {protector.type!r}, "
            f"{len(protector.value)} bytes (expected {KEY_TYPE!r}, {KEY_BYTES} bytes)",
            reason=Reason.NOT_A_KEY,
        )
    return Crypter(protector.value)


def protect(
    obj: SecretObject, protector: SecretObject, *, now: datetime | None = None
) -> ProtectedObject:
    """Seal ``obj`` under ``protector``: a :class:`ProtectedObject` naming both ids.

    The protector must be a key (:data:`KEY_TYPE`, 32 bytes, else
    :class:`WrongKeyError`) and ACTIVE (else :class:`ObjectStateError`); with
    ``now``, also inside its validity window. An object cannot protect itself
    (:class:`ChainCycleError`).
    """
    crypter = _crypter(protector)
    if obj.id == protector.id:
        raise ChainCycleError(f"{obj.id} cannot protect itself")
    if protector.status is not Status.ACTIVE:
        raise ObjectStateError(
            f"{protector.id} is {protector.status.value}: only an active key protects",
            reason=Reason[protector.status.name],
        )
    if now is not None:
        protector.check_usable(now)
    blob = crypter.encrypt(encode_object(obj), associated_data(obj.id, protector.id))
    return ProtectedObject(obj.id, protector.id, blob)


def _open(po: ProtectedObject, crypter: Crypter, protector_id: ObjectId) -> bytes:
    try:
        return crypter.decrypt(po.blob, associated_data(po.protected_id, protector_id))
    except AuthenticationError:
        raise WrongKeyError(
            f"{po.protected_id} does not authenticate under {protector_id}: wrong key, "
            "altered blob, or a blob moved from another id"
        ) from None


def unprotect(
    po: ProtectedObject, protector: SecretObject, *, now: datetime | None = None
) -> SecretObject:
    """Open ``po`` with ``protector`` and return the object sealed in it.

    Raises :class:`WrongKeyError` when the protector is not the one ``po`` names,
    is not a key, or the blob does not authenticate; :class:`~taonet.CodecError`
    when the blob is structurally bad (too short, unknown version) or what it holds
    is not the object ``po`` names. With ``now``, the protector must be usable for
    unwrapping (ACTIVE or RETIRED, inside its window), else :class:`ObjectStateError`.
    The recovered object's own status is not checked here (see :func:`recover`).
    """
    crypter = _crypter(protector)
    if protector.id != po.protector_id:
        raise WrongKeyError(
            f"{po.protected_id} is protected by {po.protector_id}, not {protector.id}",
            reason=Reason.WRONG_PROTECTOR,
        )
    if now is not None:
        protector.check_usable(now, allow_retired=True)
    obj = decode_object(_open(po, crypter, protector.id))
    if obj.id != po.protected_id:
        raise CodecError(f"blob of {po.protected_id} holds {obj.id}")
    return obj


def recover(
    leaf: ObjectId,
    root: SecretObject,
    lookup: Callable[[ObjectId], ProtectedObject | None],
    *,
    now: datetime,
) -> SecretObject:
    """Follow protectors from ``leaf`` up to ``root``, then unwrap down to the leaf.

    ``lookup(id)`` returns the protected object whose protected id is ``id`` (or
    None). The walk stops at the first protected object whose protector is
    ``root.id``; it raises :class:`MissingProtectorError` when ``lookup`` has
    nothing, :class:`ChainCycleError` when an id comes back,
    :class:`ChainTooLongError` past :data:`MAX_CHAIN_DEPTH` protected objects.
    Unwrapping checks at ``now`` the root, every key in the middle and the leaf:
    each must be ACTIVE or RETIRED and inside its window (else
    :class:`ObjectStateError`); a middle object that is not a key, or a blob that
    does not authenticate, raises :class:`WrongKeyError`. ``leaf == root.id``
    returns the root after the same check.
    """
    if leaf == root.id:
        root.check_usable(now, allow_retired=True)
        return root
    path: list[ProtectedObject] = []
    seen = {leaf}
    current = leaf
    while True:
        if len(path) >= MAX_CHAIN_DEPTH:
            raise ChainTooLongError(
                f"no way from {leaf} to {root.id} within {MAX_CHAIN_DEPTH} protected objects"
            )
        po = lookup(current)
        if po is None:
            raise MissingProtectorError(f"nothing protects {current} (on the way from {leaf})")
        if po.protected_id != current:
            raise MissingProtectorError(f"lookup of {current} gave {po.protected_id}")
        path.append(po)
        if po.protector_id == root.id:
            break
        if po.protector_id in seen:
            raise ChainCycleError(f"the chain from {leaf} comes back to {po.protector_id}")
        seen.add(po.protector_id)
        current = po.protector_id
    root.check_usable(now, allow_retired=True)
    key = root
    for po in reversed(path):
        key = unprotect(po, key, now=now)
    key.check_usable(now, allow_retired=True)
    return key
