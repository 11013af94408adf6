"""Value types of the authorization logic: terms, formulas and principal names.

Every value is a frozen, hashable attrs class; sequences are tuples. ``str(x)``
prints the canonical text form (see :mod:`taonet.auth._text`), and
:func:`taonet.auth.encode` gives the CloudProxy binary form.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = [
    "RESERVED_WORDS",
    "And",
    "Bytes",
    "Const",
    "Element",
    "Exists",
    "Forall",
    "Form",
    "Implies",
    "Int",
    "Not",
    "Or",
    "Pred",
    "Prin",
    "PrinExt",
    "PrinTail",
    "Says",
    "Speaksfor",
    "Str",
    "SubPrin",
    "Term",
    "TermVar",
    "is_sub_principal_or_identical",
    "key_principal",
    "principal_for_key",
]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

#: Lower-case words with a meaning of their own; none of them can be a principal type.
RESERVED_WORDS = frozenset(
    {
        "and",
        "exists",
        "ext",
        "false",
        "forall",
        "from",
        "implies",
        "not",
        "or",
        "says",
        "speaksfor",
        "true",
        "until",
    }
)

_NAME_RE = re.compile(r"[A-Z][A-Za-z0-9_]*")
_PRIN_TYPE_RE = re.compile(r"[a-z][a-z0-9]*")
# Principal types met in nearly every name, known good: checked without the pattern.
_COMMON_PRIN_TYPES = frozenset({"key", "tpm", "tpm2"})


def _is_name(value: str) -> bool:
    """An identifier: predicate, extension and variable names."""
    return _NAME_RE.fullmatch(value) is not None


def _is_prin_type(value: str) -> bool:
    """A lower-case word that is not reserved: a principal type."""
    return value in _COMMON_PRIN_TYPES or (
        _PRIN_TYPE_RE.fullmatch(value) is not None and value not in RESERVED_WORDS
    )


# ---------------------------------------------------------------- validators


def _check_name(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _is_name(value):
        raise ValueError(
            f"{attr.name} must be an identifier ([A-Z][A-Za-z0-9_]*), got {value!r:.80}"
        )


def _check_prin_type(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _is_prin_type(value):
        raise ValueError(
            f"{attr.name} must be a lower-case principal type such as 'key' or 'tpm2' "
            f"(not a reserved word), got {value!r:.80}"
        )


def _check_utf8(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attr.name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{attr.name} must be encodable as UTF-8 (no lone surrogates)") from None


def _check_int64(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attr.name} must be an int, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{attr.name} must fit in a signed 64-bit integer, got {value}")


def _check_opt_int64(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_int64(inst, attr, value)


def _check_bool(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attr.name} must be a bool, got {type(value).__name__}")


def _check_bytes(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{attr.name} must be bytes, got {type(value).__name__}")


def _check_term(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, TERM_TYPES):
        raise TypeError(f"{attr.name} must be a Term, got {type(value).__name__}")


def _check_form(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, FORM_TYPES):
        raise TypeError(f"{attr.name} must be a Form, got {type(value).__name__}")


def _check_terms(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    assert isinstance(value, tuple)  # the converter made it one
    for item in value:
        if not isinstance(item, TERM_TYPES):
            raise TypeError(f"{attr.name} must hold Terms, found {type(item).__name__}")


def _check_forms(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    assert isinstance(value, tuple)
    for item in value:
        if not isinstance(item, FORM_TYPES):
            raise TypeError(f"{attr.name} must hold Forms, found {type(item).__name__}")


def _check_exts(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    assert isinstance(value, tuple)
    for item in value:
        if not isinstance(item, PrinExt):
            raise TypeError(f"{attr.name} must hold PrinExt values, found {type(item).__name__}")


def _check_subprin(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, SubPrin):
        raise TypeError(f"{attr.name} must be a SubPrin, got {type(value).__name__}")


# ---------------------------------------------------------------- converters


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    if isinstance(value, str | bytes):
        raise TypeError("expected a sequence of elements, not a str or bytes")
    return tuple(value)


def _to_terms(value: Iterable[Term]) -> tuple[Term, ...]:
    return _to_tuple(value)


def _to_forms(value: Iterable[Form]) -> tuple[Form, ...]:
    return _to_tuple(value)


def _to_exts(value: Iterable[PrinExt]) -> tuple[PrinExt, ...]:
    return _to_tuple(value)


def _to_subprin(value: SubPrin | Iterable[PrinExt]) -> SubPrin:
    if isinstance(value, SubPrin):
        return value
    return SubPrin(_to_exts(value))


def _to_bytes(value: bytes | bytearray | memoryview) -> bytes:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _to_int(value: int) -> int:
    # int subclasses (IntEnum, ...) become plain ints so printing is canonical.
    if isinstance(value, int) and not isinstance(value, bool) and type(value) is not int:
        return int(value)
    return value


def _to_opt_int(value: int | None) -> int | None:
    return None if value is None else _to_int(value)


# ---------------------------------------------------------------- base


class _Element:
    """Shared behaviour: ``str()`` gives the canonical text form."""

    __slots__ = ()

    def __str__(self) -> str:
        from taonet.auth._text import format_element

        return format_element(self)  # type: ignore[arg-type]


# ---------------------------------------------------------------- principal names


@attrs.frozen(str=False)
class PrinExt(_Element):
    """One extension of a principal name, ``Name(arg, ...)``."""

    name: str = attrs.field(validator=_check_name)
    args: tuple[Term, ...] = attrs.field(default=(), converter=_to_terms, validator=_check_terms)


@attrs.frozen(str=False)
class SubPrin(_Element):
    """A sequence of extensions, printed ``.A(...).B(...)`` (empty prints as "")."""

    exts: tuple[PrinExt, ...] = attrs.field(default=(), converter=_to_exts, validator=_check_exts)

    def __len__(self) -> int:
        return len(self.exts)

    def __iter__(self) -> Iterator[PrinExt]:
        return iter(self.exts)

    def __add__(self, other: SubPrin) -> SubPrin:
        if not isinstance(other, SubPrin):
            return NotImplemented
        return SubPrin(self.exts + other.exts)


@attrs.frozen(str=False)
class Prin(_Element):
    """A principal: ``type(key_hash).Ext1(...).Ext2(...)``.

    ``type`` is a lower-case word ("key", "tpm", "tpm2", ...), ``key_hash`` is
    normally :class:`Bytes` holding the SHA-256 of the public key (a
    :class:`TermVar` in rules), and ``ext`` names a sub-principal.
    """

    type: str = attrs.field(validator=_check_prin_type)
    key_hash: Term = attrs.field(validator=_check_term)
    ext: SubPrin = attrs.field(factory=SubPrin, converter=_to_subprin, validator=_check_subprin)

    def extend(self, *exts: PrinExt | SubPrin) -> Prin:
        """Return the sub-principal ``self.E1(...).E2(...)``."""
        added: list[PrinExt] = list(self.ext.exts)
        for e in exts:
            if isinstance(e, PrinExt):
                added.append(e)
            elif isinstance(e, SubPrin):
                added.extend(e.exts)
            else:
                raise TypeError(f"extend takes PrinExt or SubPrin values, got {type(e).__name__}")
        return Prin(self.type, self.key_hash, SubPrin(tuple(added)))

    def is_sub_principal_of(self, parent: Prin) -> bool:
        """True if ``self`` is ``parent`` or a sub-principal of it.

        Same type and key hash, and ``parent``'s extensions are a prefix of ours.
        """
        return is_sub_principal_or_identical(self, parent)

    def parent(self) -> Prin | None:
        """The principal with the last extension removed, or None if there is none."""
        if not self.ext.exts:
            return None
        return Prin(self.type, self.key_hash, SubPrin(self.ext.exts[:-1]))

    def last_ext(self) -> PrinExt | None:
        """The last extension, or None if the name has none."""
        return self.ext.exts[-1] if self.ext.exts else None

    def root(self) -> Prin:
        """The principal without any extensions."""
        return Prin(self.type, self.key_hash)


@attrs.frozen(str=False)
class PrinTail(_Element):
    """A free-floating tail of extensions, ``ext.A(...).B(...)`` (at least one)."""

    ext: SubPrin = attrs.field(converter=_to_subprin, validator=_check_subprin)

    @ext.validator
    def _nonempty(self, attribute: attrs.Attribute[Any], value: SubPrin) -> None:
        if not value.exts:
            raise ValueError("a PrinTail must have at least one extension")


@attrs.frozen(str=False)
class Str(_Element):
    """A string term, printed double-quoted with Go escapes."""

    value: str = attrs.field(validator=_check_utf8)


@attrs.frozen(str=False)
class Bytes(_Element):
    """A byte-string term, printed ``[hex]``."""

    value: bytes = attrs.field(converter=_to_bytes, validator=_check_bytes)


@attrs.frozen(str=False)
class Int(_Element):
    """A signed 64-bit integer term."""

    value: int = attrs.field(converter=_to_int, validator=_check_int64)


@attrs.frozen(str=False)
class TermVar(_Element):
    """A term variable, an identifier such as ``X`` (bound by forall/exists)."""

    name: str = attrs.field(validator=_check_name)


# ---------------------------------------------------------------- formulas


@attrs.frozen(str=False)
class Pred(_Element):
    """A predicate ``Name(arg, ...)``."""

    name: str = attrs.field(validator=_check_name)
    args: tuple[Term, ...] = attrs.field(default=(), converter=_to_terms, validator=_check_terms)


@attrs.frozen(str=False)
class Const(_Element):
    """``true`` or ``false``."""

    value: bool = attrs.field(validator=_check_bool)


@attrs.frozen(str=False)
class Not(_Element):
    """``not F``."""

    negand: Form = attrs.field(validator=_check_form)


@attrs.frozen(str=False)
class And(_Element):
    """``F1 and F2 and ...`` (an empty And prints as ``true``)."""

    conjuncts: tuple[Form, ...] = attrs.field(converter=_to_forms, validator=_check_forms)


@attrs.frozen(str=False)
class Or(_Element):
    """``F1 or F2 or ...`` (an empty Or prints as ``false``)."""

    disjuncts: tuple[Form, ...] = attrs.field(converter=_to_forms, validator=_check_forms)


@attrs.frozen(str=False)
class Implies(_Element):
    """``A implies C``."""

    antecedent: Form = attrs.field(validator=_check_form)
    consequent: Form = attrs.field(validator=_check_form)


@attrs.frozen(str=False)
class Speaksfor(_Element):
    """``Delegate speaksfor Delegator``."""

    delegate: Term = attrs.field(validator=_check_term)
    delegator: Term = attrs.field(validator=_check_term)


@attrs.frozen(str=False)
class Says(_Element):
    """``Speaker [from Time] [until Expiration] says Message``.

    Times are int64; in attestations they are nanoseconds since the Unix epoch.
    """

    speaker: Term = attrs.field(validator=_check_term)
    message: Form = attrs.field(validator=_check_form)
    time: int | None = attrs.field(default=None, converter=_to_opt_int, validator=_check_opt_int64)
    expiration: int | None = attrs.field(
        default=None, converter=_to_opt_int, validator=_check_opt_int64
    )


@attrs.frozen(str=False)
class Forall(_Element):
    """``forall V: F``."""

    var: str = attrs.field(validator=_check_name)
    body: Form = attrs.field(validator=_check_form)


@attrs.frozen(str=False)
class Exists(_Element):
    """``exists V: F``."""

    var: str = attrs.field(validator=_check_name)
    body: Form = attrs.field(validator=_check_form)


Term: TypeAlias = Prin | PrinTail | Str | Bytes | Int | TermVar
Form: TypeAlias = Pred | Const | Not | And | Or | Implies | Speaksfor | Says | Forall | Exists
Element: TypeAlias = Term | Form | SubPrin | PrinExt

TERM_TYPES: tuple[type, ...] = (Prin, PrinTail, Str, Bytes, Int, TermVar)
FORM_TYPES: tuple[type, ...] = (
    Pred,
    Const,
    Not,
    And,
    Or,
    Implies,
    Speaksfor,
    Says,
    Forall,
    Exists,
)


# ---------------------------------------------------------------- trusted construction
#
# The binary decoder builds the nodes that make up every attestation statement
# (Bytes, Prin, SubPrin, PrinExt, Speaksfor, Says) through these, without the attrs
# validators and converters: it checks each invariant they enforce before the call,
# the types by the shape of the encoding and the names with _is_name and
# _is_prin_type. Nothing else may call them. tests/auth/test_binary_trusted.py runs
# attrs.validate over every node the decoder returns, on encodings of arbitrary
# values and on arbitrary bytes, to hold the two in step.

_new = object.__new__
_set = object.__setattr__

#: The SubPrin of a principal without extensions, shared (values are immutable).
_EMPTY_SUBPRIN = SubPrin(())


def _trusted_bytes(value: bytes) -> Bytes:
    node: Bytes = _new(Bytes)
    _set(node, "value", value)
    return node


def _trusted_subprin(exts: tuple[PrinExt, ...]) -> SubPrin:
    node: SubPrin = _new(SubPrin)
    _set(node, "exts", exts)
    return node


def _trusted_prinext(name: str, args: tuple[Term, ...]) -> PrinExt:
    node: PrinExt = _new(PrinExt)
    _set(node, "name", name)
    _set(node, "args", args)
    return node


def _trusted_prin(type: str, key_hash: Term, ext: SubPrin) -> Prin:
    node: Prin = _new(Prin)
    _set(node, "type", type)
    _set(node, "key_hash", key_hash)
    _set(node, "ext", ext)
    return node


def _trusted_speaksfor(delegate: Term, delegator: Term) -> Speaksfor:
    node: Speaksfor = _new(Speaksfor)
    _set(node, "delegate", delegate)
    _set(node, "delegator", delegator)
    return node


def _trusted_says(speaker: Term, message: Form, time: int | None, expiration: int | None) -> Says:
    node: Says = _new(Says)
    _set(node, "speaker", speaker)
    _set(node, "message", message)
    _set(node, "time", time)
    _set(node, "expiration", expiration)
    return node


# ---------------------------------------------------------------- helpers


def is_sub_principal_or_identical(child: Term, parent: Term) -> bool:
    """True if both are principals and ``child`` is ``parent`` or one of its sub-principals."""
    if not isinstance(child, Prin) or not isinstance(parent, Prin):
        return False
    # == rather than != : attrs' __ne__ is a Python call around __eq__.
    if not (child.type == parent.type and child.key_hash == parent.key_hash):
        return False
    n = len(parent.ext.exts)
    return len(child.ext.exts) >= n and child.ext.exts[:n] == parent.ext.exts


def principal_for_key(type: str, spki_der: bytes) -> Prin:
    """``type([sha256 of spki_der])``, e.g. for "key", "tpm" or "tpm2" principals."""
    if not isinstance(spki_der, bytes | bytearray | memoryview):
        raise TypeError(f"spki_der must be bytes, got {spki_der.__class__.__name__}")
    return Prin(type, Bytes(hashlib.sha256(spki_der).digest()))


def key_principal(public_key: bytes | PublicKeyTypes) -> Prin:
    """``key([sha256 of the PKIX DER SubjectPublicKeyInfo])`` of a public key.

    ``public_key`` is DER SPKI bytes or a ``cryptography`` public key object.
    """
    if isinstance(public_key, bytes | bytearray | memoryview):
        der = bytes(public_key)
    else:
        from cryptography.hazmat.primitives import serialization

        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return principal_for_key("key", der)
