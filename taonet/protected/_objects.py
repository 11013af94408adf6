"""Object ids, objects and protected objects: frozen values with validators.

Constructors refuse what the format forbids (``ValueError``, ``TypeError`` for a
wrong type); the codecs turn those into :class:`~taonet.CodecError` for bytes from
outside.
"""

from __future__ import annotations

import enum
import hmac
import re
import unicodedata
from datetime import datetime
from typing import Any, Final

import attrs

from taonet.protected._errors import ObjectStateError, Reason

__all__ = [
    "KEY_BYTES",
    "KEY_TYPE",
    "MAX_EPOCH",
    "MAX_NAME_BYTES",
    "MAX_TYPE_CHARS",
    "MAX_VALUE_BYTES",
    "Node",
    "ObjectId",
    "ProtectedObject",
    "SecretObject",
    "Status",
    "check_name",
]

#: Longest object name, in UTF-8 bytes.
MAX_NAME_BYTES: Final = 1024
#: Epochs run from 1 to the largest proto int32.
MAX_EPOCH: Final = 2**31 - 1
#: Longest object type (printable ASCII).
MAX_TYPE_CHARS: Final = 64
#: Largest object value (a key, or a small file).
MAX_VALUE_BYTES: Final = 1024 * 1024
#: The type of an object that can protect others: an AES-256-GCM key of KEY_BYTES bytes.
KEY_TYPE: Final = "aes256-gcm"
KEY_BYTES: Final = 32

# Characters no name may hold: controls, surrogates, line/paragraph separators and
# invisible format characters (bidi overrides, zero-width joiners).
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# The same rule for ASCII names (the common case): Cc is all ASCII has of them.
_ASCII_CONTROL: Final = re.compile("[\x00-\x1f\x7f]")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise ValueError saying why.

    A name is a hierarchical path: it starts with ``/``; its segments are not
    empty, ``.`` or ``..``; it has no control, format or separator characters (NUL
    among them); it is valid UTF-8 of at most :data:`MAX_NAME_BYTES` bytes.
    """
    if not isinstance(name, str):
        raise TypeError(f"object name must be str, got {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("object name is not valid UTF-8 (lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"object name is {size} bytes, over the {MAX_NAME_BYTES}-byte limit")
    if not name.startswith("/"):
        raise ValueError("object name must start with '/'")
    if name.isascii():
        bad = _ASCII_CONTROL.search(name)
        if bad:
            raise ValueError(f"object name holds a forbidden character U+{ord(bad[0]):04X}")
    else:
        for ch in name:
            if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
                raise ValueError(f"object name holds a forbidden character U+{ord(ch):04X}")
    for segment in name[1:].split("/"):
        if segment == "":
            raise ValueError("object name has an empty segment")
        if segment in (".", ".."):
            raise ValueError(f"object name has a {segment!r} segment")
    return name


def _check_name(_inst: object, _attr: object, value: str) -> None:
    check_name(value)


def _check_epoch(_inst: object, _attr: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"epoch must be int, got {type(value).__name__}")
    if not 1 <= value <= MAX_EPOCH:
        raise ValueError(f"epoch {value} is outside 1..{MAX_EPOCH}")


@attrs.frozen(order=True)
class ObjectId:
    """An object's id: its hierarchical name and its epoch (1 .. 2**31-1)."""

    name: str = attrs.field(validator=_check_name)
    epoch: int = attrs.field(validator=_check_epoch)

    def is_under(self, prefix: str) -> bool:
        """Whether the name is ``prefix`` or below it, segment by segment.

        ``/a/b`` is under ``/a``, ``/a/`` and ``/``; not under ``/a/bc`` nor ``/ab``.
        A prefix that is not a valid name (with or without one trailing ``/``) covers
        nothing: the answer is False.
        """
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            return False
        if prefix == "/":
            return True
        base = prefix[:-1] if prefix.endswith("/") else prefix
        try:
            check_name(base)
        except ValueError:
            return False
        return self.name == base or self.name.startswith(base + "/")

    def __str__(self) -> str:
        return f"{self.name}#{self.epoch}"


class Status(enum.Enum):
    """An object's status; the value is the original's wire text."""

    #: In use: may protect, be read, be used.
    ACTIVE = "active"
    #: Not (yet or any more) in use: refused everywhere.
    INACTIVE = "inactive"
    #: Superseded by a newer epoch: may still unwrap what it protects, never protects anew.
    RETIRED = "retired"
    #: Withdrawn: refused everywhere.
    REVOKED = "revoked"


def _check_type(_inst: object, _attr: object, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"object type must be str, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_TYPE_CHARS or not all(" " < c <= "~" for c in value):
        raise ValueError(f"object type must be 1..{MAX_TYPE_CHARS} printable ASCII characters")


def _check_time(_inst: object, attr: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise TypeError(f"{attr.name} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise ValueError(f"{attr.name} must be timezone-aware")


def _check_value(_inst: object, _attr: object, value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"object value is {len(value)} bytes, over {MAX_VALUE_BYTES}")


def _to_bytes(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"object value must be bytes, got {type(value).__name__}")
    return bytes(value)


def _secret_eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


_STATE_REASON: Final = {
    Status.INACTIVE: Reason.INACTIVE,
    Status.RETIRED: Reason.RETIRED,
    Status.REVOKED: Reason.REVOKED,
}


@attrs.frozen
class SecretObject:
    """An object: id, type (:data:`KEY_TYPE`, ``"file"``, ...), status, validity window, value.

    Times are timezone-aware; ``None`` means no bound. The repr never shows the
    value; equality compares it in constant time.
    """

    id: ObjectId = attrs.field(validator=attrs.validators.instance_of(ObjectId))
    type: str = attrs.field(validator=_check_type)
    status: Status = attrs.field(validator=attrs.validators.instance_of(Status))
    not_before: datetime | None = attrs.field(validator=_check_time)
    not_after: datetime | None = attrs.field(validator=_check_time)
    value: bytes = attrs.field(
        converter=_to_bytes,
        validator=_check_value,
        repr=False,
        eq=attrs.cmp_using(eq=_secret_eq),
        hash=False,
    )

    def __attrs_post_init__(self) -> None:
        if (
            self.not_before is not None
            and self.not_after is not None
            and self.not_before > self.not_after
        ):
            raise ValueError(f"{self.id}: not_before is after not_after")

    @property
    def is_key(self) -> bool:
        """Whether this object can protect others (type KEY_TYPE, KEY_BYTES long)."""
        return self.type == KEY_TYPE and len(self.value) == KEY_BYTES

    def with_status(self, status: Status) -> SecretObject:
        """A copy with another status (this object is unchanged: it is frozen)."""
        return attrs.evolve(self, status=status)

    def check_usable(self, now: datetime, *, allow_retired: bool = False) -> None:
        """Raise :class:`ObjectStateError` unless the object may be used at ``now``.

        It must be ACTIVE (or RETIRED, with ``allow_retired``: a retired key may
        still unwrap what it protects) and ``not_before <= now <= not_after``.
        """
        if not isinstance(now, datetime) or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        if self.status is not Status.ACTIVE and not (
            allow_retired and self.status is Status.RETIRED
        ):
            reason = _STATE_REASON[self.status]
            raise ObjectStateError(f"{self.id} is {self.status.value}", reason=reason)
        if self.not_before is not None and now < self.not_before:
            raise ObjectStateError(
                f"{self.id} is not valid before {self.not_before.isoformat()}",
                reason=Reason.NOT_YET_VALID,
            )
        if self.not_after is not None and now > self.not_after:
            raise ObjectStateError(
                f"{self.id} expired at {self.not_after.isoformat()}", reason=Reason.EXPIRED
            )


def _check_blob(_inst: object, _attr: object, value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES + 4096:
        raise ValueError(f"blob is {len(value)} bytes, over {MAX_VALUE_BYTES + 4096}")


@attrs.frozen
class ProtectedObject:
    """An object sealed under its protector: (protected id, protector id, blob).

    The blob is AES-256-GCM under the protector's value with both ids as associated
    data (see :func:`~taonet.protected.protect`).
    """

    protected_id: ObjectId = attrs.field(validator=attrs.validators.instance_of(ObjectId))
    protector_id: ObjectId = attrs.field(validator=attrs.validators.instance_of(ObjectId))
    blob: bytes = attrs.field(converter=_to_bytes, validator=_check_blob, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.protected_id == self.protector_id:
            raise ValueError(f"{self.protected_id} cannot protect itself")


@attrs.frozen
class Node:
    """The original's node: which object protects which (protector may be absent)."""

    protected_id: ObjectId = attrs.field(validator=attrs.validators.instance_of(ObjectId))
    protector_id: ObjectId | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(ObjectId)),
    )
