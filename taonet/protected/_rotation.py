"""Key rotation as a pure plan: a new epoch, every child rewrapped, the old epoch retired.

:func:`plan_rotation` computes everything a store must write, changing nothing:
its inputs are frozen values and stay as they were (the original's rotation
helpers changed copies and lost the change). The store applies a
:class:`Rotation` in one transaction, so a crash leaves either the old state or
the new one. Rewrapping opens each child's blob in memory and seals the same
bytes under the new key: no child value leaves the process, and the child's own
object (status, window, value) is unchanged. Only direct children are rewrapped:
what a child protects is bound to the child's id, which does not change.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from datetime import datetime, timedelta

import attrs

from taonet._errors import AuthenticationError
from taonet.crypto import Crypter
from taonet.protected._errors import (
    ObjectStateError,
    ProtectedObjectError,
    Reason,
    WrongKeyError,
)
from taonet.protected._objects import (
    KEY_BYTES,
    MAX_EPOCH,
    ObjectId,
    ProtectedObject,
    SecretObject,
    Status,
)
from taonet.protected._protect import _aad, _crypter, _id_bytes, protect

__all__ = ["Rotation", "may_revoke", "plan_rotation"]


@attrs.frozen
class Rotation:
    """What rotating a key changes; apply all of it in one transaction or none.

    * ``new_key``: epoch + 1, ACTIVE, a fresh value.
    * ``rewrapped``: each direct child, same protected id, now under ``new_key``.
    * ``retired_old``: the old key with status RETIRED (it is not revoked: see
      :func:`may_revoke`).
    * ``new_key_protected`` / ``retired_old_protected``: both sealed under the
      ``parent`` given to :func:`plan_rotation` (None without one), ready to store.
    """

    new_key: SecretObject
    rewrapped: tuple[ProtectedObject, ...]
    retired_old: SecretObject
    new_key_protected: ProtectedObject | None = None
    retired_old_protected: ProtectedObject | None = None


def plan_rotation(
    old_key: SecretObject,
    children: Iterable[ProtectedObject],
    *,
    now: datetime,
    new_value: bytes | None = None,
    validity: timedelta | None = None,
    parent: SecretObject | None = None,
) -> Rotation:
    """Plan the rotation of ``old_key`` over its direct ``children``.

    ``old_key`` must be an ACTIVE key (it may have expired: rotating it is the
    cure); every child must name it as protector and authenticate under it
    (:class:`WrongKeyError` otherwise; :class:`~taonet.CodecError` for a blob too
    short or of an unknown version), each protected id once (ValueError). The new
    key has ``new_value`` (32 bytes, not the old value) or a random one; it is valid
    from ``now`` for ``validity``, or for as long as the old key's window when that
    had both ends, or without end. A key at epoch 2**31-1 cannot be rotated
    (reason EPOCH_EXHAUSTED). With ``parent``, the new key and the retired old key
    are also sealed under it (:func:`protect` rules apply to the parent).
    """
    old_crypter = _crypter(old_key)
    if old_key.status is not Status.ACTIVE:
        raise ObjectStateError(
            f"{old_key.id} is {old_key.status.value}: only an active key is rotated",
            reason=Reason[old_key.status.name],
        )
    if old_key.id.epoch >= MAX_EPOCH:
        raise ProtectedObjectError(
            f"{old_key.id} is at the last epoch", reason=Reason.EPOCH_EXHAUSTED
        )
    if new_value is None:
        value = os.urandom(KEY_BYTES)
    else:
        value = bytes(new_value)
        if len(value) != KEY_BYTES:
            raise ValueError(f"new key value must be {KEY_BYTES} bytes, got {len(value)}")
        if hmac.compare_digest(value, old_key.value):
            raise ValueError("new key value must differ from the old one")
    if validity is not None:
        not_after: datetime | None = now + validity
    elif old_key.not_before is not None and old_key.not_after is not None:
        not_after = now + (old_key.not_after - old_key.not_before)
    else:
        not_after = None
    new_key = SecretObject(
        ObjectId(old_key.id.name, old_key.id.epoch + 1),
        old_key.type,
        Status.ACTIVE,
        now,
        not_after,
        value,
    )
    new_crypter = Crypter(value)
    rewrapped: list[ProtectedObject] = []
    seen: set[ObjectId] = set()
    old_id, new_id = _id_bytes(old_key.id), _id_bytes(new_key.id)
    for child in children:
        if child.protector_id != old_key.id:
            raise WrongKeyError(
                f"{child.protected_id} is protected by {child.protector_id}, not {old_key.id}",
                reason=Reason.WRONG_PROTECTOR,
            )
        if child.protected_id in seen:
            raise ValueError(f"{child.protected_id} is listed twice")
        seen.add(child.protected_id)
        child_id = _id_bytes(child.protected_id)
        try:
            plain = old_crypter.decrypt(child.blob, _aad(child_id, old_id))
        except AuthenticationError:
            raise WrongKeyError(
                f"{child.protected_id} does not authenticate under {old_key.id}: wrong key, "
                "altered blob, or a blob moved from another id"
            ) from None
        blob = new_crypter.encrypt(plain, _aad(child_id, new_id))
        rewrapped.append(ProtectedObject(child.protected_id, new_key.id, blob))
    retired = old_key.with_status(Status.RETIRED)
    if parent is None:
        return Rotation(new_key, tuple(rewrapped), retired)
    return Rotation(
        new_key,
        tuple(rewrapped),
        retired,
        protect(new_key, parent, now=now),
        protect(retired, parent, now=now),
    )


def may_revoke(old_id: ObjectId, remaining_children: Iterable[ProtectedObject]) -> bool:
    """Whether no protected object in ``remaining_children`` still needs ``old_id``."""
    return all(child.protector_id != old_id for child in remaining_children)
