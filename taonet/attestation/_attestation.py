"""Attestations: signed ``Says`` statements, built and validated as the original did.

An attestation carries ``serialized_statement`` (the binary auth encoding of a
``P [from T] [until T] says F``), the signer (``signer_type`` + ``signer_key``), the
signature over the statement under the context "Tao Attestation Signing Context V1",
optionally a delegation (a nested attestation ``Delegate speaksfor Delegator``) and a
``root_endorsement`` (a host certificate from the policy key, see ``taonet.certs``).

Validation (:func:`validate`) is total: it decodes, checks every signature in the
delegation chain, the chain's naming rules, every validity window against the
caller's clock, and that the chain's root signer is certified by the policy key. The
caller must say which policy: ``policy_cert`` is a required keyword, and skipping the
trust root takes the explicit :data:`UNROOTED`. It returns a :class:`Proven` value or
raises :class:`~taonet.AuthenticationError` saying what failed. All times are int64
nanoseconds since the Unix epoch, as on the wire. Every check runs on every call;
only what depends on a ``"key"`` signer's key alone (its parsed verifier and its
principal) is kept, for the last 1024 keys, keyed by the key's exact bytes (the
``"tpm2"`` type keeps the like for quote keys and names' PCRs).

Signer types are pluggable (:func:`register_signer_type`): ``"key"`` (ECDSA) and
``"tpm2"`` (TPM 2.0 quotes, verified in pure Python: see ``_tpm2``) are built in, so
a domain service verifies TPM attestations without a TSS. A name is registered once:
neither a built-in type nor a type registered earlier can be replaced.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from taonet import auth
from taonet._errors import AuthenticationError, CodecError, TaoError
from taonet.certs import PolicyAnchor
from taonet.crypto import ATTESTATION_CONTEXT, Signer, Verifier
from taonet.wire import message_class, parse, serialize

__all__ = [
    "DEFAULT_VALIDITY_NS",
    "MAX_DELEGATION_DEPTH",
    "UNROOTED",
    "Attestation",
    "Proven",
    "SignerType",
    "Unrooted",
    "attest",
    "register_signer_type",
    "validate",
]

NS_PER_SECOND: Final = 1_000_000_000
#: An attestation made without explicit times is valid for a year (as the original).
DEFAULT_VALIDITY_NS: Final = 365 * 24 * 3600 * NS_PER_SECOND
#: Longest delegation chain we follow (a hosted program under a few stacked hosts).
MAX_DELEGATION_DEPTH: Final = 8
MAX_ATTESTATION_BYTES: Final = 1024 * 1024

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# Principal types are lower-case words (key, tpm, tpm2, ...).
_SIGNER_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9]{0,31}")


class Unrooted(enum.Enum):
    """The type of :data:`UNROOTED`, the one value that skips the policy root."""

    UNROOTED = "UNROOTED"

    def __repr__(self) -> str:
        return "UNROOTED"


#: ``validate(..., policy_cert=UNROOTED)`` checks signatures, the chain and the
#: windows but not that the root signer is certified by any policy key: the caller
#: then trusts ``Proven.root_signer`` by some other means, or not at all.
UNROOTED: Final = Unrooted.UNROOTED


def _bytes_tuple(items: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple([bytes(i) for i in items]) if items else ()


@attrs.frozen
class Attestation:
    """One attestation, as its protobuf fields (bytes stay as they came)."""

    serialized_statement: bytes
    signer_type: str
    signer_key: bytes
    signature: bytes
    serialized_delegation: bytes | None = None
    serialized_endorsements: tuple[bytes, ...] = attrs.field(default=(), converter=_bytes_tuple)
    tpm2_quote_structure: bytes | None = None
    root_endorsement: bytes | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Attestation:
        """Decode a serialized Attestation; CodecError on anything malformed."""
        if len(data) > MAX_ATTESTATION_BYTES:
            raise CodecError(f"attestation: {len(data)} bytes is over {MAX_ATTESTATION_BYTES}")
        msg = parse("Attestation", data, what="attestation")
        has = msg.HasField
        # Scalar bytes and string fields of a parsed message are bytes and str.
        return cls(
            msg.serialized_statement,
            msg.signer_type,
            msg.signer_key,
            msg.signature,
            msg.serialized_delegation if has("serialized_delegation") else None,
            msg.serialized_endorsements,
            msg.tpm2_quote_structure if has("tpm2_quote_structure") else None,
            msg.root_endorsement if has("root_endorsement") else None,
        )

    def to_bytes(self) -> bytes:
        """Serialize as the original's protobuf Attestation."""
        msg = message_class("Attestation")(
            serialized_statement=self.serialized_statement,
            signer_type=self.signer_type,
            signer_key=self.signer_key,
            signature=self.signature,
        )
        if self.serialized_delegation is not None:
            msg.serialized_delegation = self.serialized_delegation
        msg.serialized_endorsements.extend(self.serialized_endorsements)
        if self.tpm2_quote_structure is not None:
            msg.tpm2_quote_structure = self.tpm2_quote_structure
        if self.root_endorsement is not None:
            msg.root_endorsement = self.root_endorsement
        return serialize(msg)

    def statement(self) -> auth.Says:
        """Decode the statement (no signature check: use :func:`validate`)."""
        form = auth.decode_form(self.serialized_statement)
        if not isinstance(form, auth.Says):
            raise CodecError("attestation statement is not a says formula")
        return form


@attrs.frozen
class SignerType:
    """How to check signatures of one signer type and name its principal."""

    #: (signer_key, attestation) -> None; raises AuthenticationError on a bad signature.
    verify: Callable[[Attestation], None]
    #: signer_key -> the signer's principal.
    principal: Callable[[bytes], auth.Prin]
    #: Optional (attestation, its decoded statement) -> None, which :func:`validate`
    #: calls instead of ``verify`` when set: for a signer type whose check depends on
    #: the speaker ("tpm2" quotes are over the PCRs the speaker's name lists), so the
    #: statement is not decoded twice.
    verify_says: Callable[[Attestation, auth.Says], None] | None = None


@functools.lru_cache(maxsize=1024)
def _key_signer(der: bytes) -> tuple[Verifier, auth.Prin]:
    # What depends only on a "key" signer's exact key bytes, computed once per key:
    # its parsed verifier and its principal. The cache is bounded and keyed by the
    # bytes themselves (equal keys are equal bytes: no two keys can share an entry);
    # a malformed key raises and is not cached.
    try:
        verifier = Verifier.from_der(der)
    except CodecError as exc:
        raise AuthenticationError(f"attestation signer key is malformed: {exc}") from None
    return verifier, auth.principal_for_key("key", der)


def _key_bytes(der: bytes) -> bytes:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise AuthenticationError(
            f"attestation signer key: expected bytes, not {type(der).__name__}"
        )
    return bytes(der)


def _verify_key_signer(att: Attestation) -> None:
    der = att.signer_key
    verifier = _key_signer(der if type(der) is bytes else _key_bytes(der))[0]
    verifier.verify(att.serialized_statement, ATTESTATION_CONTEXT, att.signature)


def _key_signer_principal(der: bytes) -> auth.Prin:
    return _key_signer(der if type(der) is bytes else _key_bytes(der))[1]


_SIGNER_TYPES: dict[str, SignerType] = {
    "key": SignerType(verify=_verify_key_signer, principal=_key_signer_principal),
}


def register_signer_type(name: str, signer_type: SignerType) -> None:
    """Teach :func:`validate` a signer type (``"key"`` and ``"tpm2"`` are built in).

    ``name`` is a principal type: a lower-case word of at most 32 letters and
    digits. Each name is registered once: ValueError for the built-in ``"key"`` or
    any name already registered, so that no later import can change how an
    existing type's signatures are checked.
    """
    if not isinstance(name, str) or not _SIGNER_TYPE_NAME.fullmatch(name):
        raise ValueError(
            f"signer type name must be a lower-case word of 1 to 32 letters and digits, "
            f"not {name!r}"
        )
    if not isinstance(signer_type, SignerType):
        raise TypeError(f"expected a SignerType, got {type(signer_type).__name__}")
    if name in _SIGNER_TYPES:
        raise ValueError(f"signer type {name!r} is already registered and cannot be replaced")
    _SIGNER_TYPES[name] = signer_type


@attrs.frozen
class Proven:
    """What a valid attestation proves: ``speaker says message`` within a window."""

    speaker: auth.Prin
    message: auth.Form
    statement: auth.Says
    #: Intersection of the validity windows along the chain (ns; None is unbounded).
    not_before: int | None
    not_after: int | None
    #: The principal whose key signed the outermost attestation.
    signer: auth.Prin
    #: The root of the chain: the innermost signer, its type and key (PKIX DER).
    root_signer: auth.Prin
    root_signer_type: str
    root_signer_key: bytes
    #: The host certificate found in the chain; verified unless validated UNROOTED.
    root_endorsement: bytes | None


def attest(
    signer: Signer,
    message: auth.Form,
    *,
    speaker: auth.Prin | None = None,
    time: int | None = None,
    expiration: int | None = None,
    now_ns: int,
    delegation: Attestation | None = None,
    root_endorsement: bytes | None = None,
) -> Attestation:
    """Sign ``speaker from time until expiration says message`` with ``signer``.

    Without ``speaker`` the signer's own key principal speaks. Without times the
    statement is valid from ``now_ns`` for one year. With a ``delegation`` the speaker
    must be (a sub-principal of) its delegator; this is checked by :func:`validate`,
    not here.
    """
    key_der = signer.public_key_der()
    if speaker is None:
        speaker = auth.principal_for_key("key", key_der)
    if time is None:
        time = now_ns
    if expiration is None:
        expiration = time + DEFAULT_VALIDITY_NS
    if not (_INT64_MIN <= time <= _INT64_MAX and _INT64_MIN <= expiration <= _INT64_MAX):
        raise ValueError("attestation times must fit in int64 nanoseconds")
    statement = auth.Says(speaker=speaker, message=message, time=time, expiration=expiration)
    serialized = auth.encode(statement)
    return Attestation(
        serialized_statement=serialized,
        signer_type="key",
        signer_key=key_der,
        signature=signer.sign(serialized, ATTESTATION_CONTEXT),
        serialized_delegation=delegation.to_bytes() if delegation is not None else None,
        root_endorsement=root_endorsement,
    )


_POLICY_TYPES: Final = (bytes, PolicyAnchor)
_BYTES_TYPES: Final = (bytes, bytearray)


def validate(
    attestation: Attestation | bytes,
    *,
    now_ns: int,
    policy_cert: bytes | PolicyAnchor | Unrooted,
) -> Proven:
    """Validate fully and return what the attestation proves.

    ``now_ns`` is the caller's clock (inject it in tests). ``policy_cert`` (required)
    is the domain's DER policy certificate, or better a
    :class:`~taonet.certs.PolicyAnchor` built once from it: the chain must be rooted
    in that policy key, either because the root signer is the policy key itself, or
    because a root_endorsement in the chain is a valid host certificate from the
    policy key for the root signer's key. Only the explicit :data:`UNROOTED` skips
    this check (None is a TypeError, so a missing value cannot skip it silently).
    """
    if policy_cert is not UNROOTED and not isinstance(policy_cert, _POLICY_TYPES):
        raise TypeError(
            "policy_cert must be the policy certificate (DER bytes), a PolicyAnchor, "
            f"or UNROOTED to skip the trust root explicitly; got {policy_cert!r}"
        )
    if isinstance(attestation, _BYTES_TYPES):
        try:
            attestation = Attestation.from_bytes(bytes(attestation))
        except CodecError as exc:
            raise AuthenticationError(f"malformed attestation: {exc}") from None
    proven = _validate(attestation, now_ns, depth=0)
    if policy_cert is not UNROOTED:
        _check_rooted_in_policy(proven, policy_cert, now_ns)
    return proven


def _window_check(says: auth.Says, now_ns: int, what: str) -> None:
    if says.time is not None and now_ns < says.time:
        raise AuthenticationError(f"{what} is not yet valid (valid from {says.time} ns)")
    if says.expiration is not None and now_ns >= says.expiration:
        raise AuthenticationError(f"{what} has expired (valid until {says.expiration} ns)")


def _intersect(a: int | None, b: int | None, pick: Callable[[int, int], int]) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


def _validate(att: Attestation, now_ns: int, *, depth: int) -> Proven:
    what = "attestation" if depth == 0 else f"delegation (level {depth})"
    signer_type = _SIGNER_TYPES.get(att.signer_type)
    if signer_type is None:
        raise AuthenticationError(f"{what}: unsupported signer type {att.signer_type!r}")
    try:
        says = att.statement()
    except CodecError as exc:
        raise AuthenticationError(f"{what}: malformed statement: {exc}") from None
    if not isinstance(says.speaker, auth.Prin):
        raise AuthenticationError(f"{what}: the speaker is not a principal")
    # Signature first: nothing else in the statement is believed before it checks.
    # A signer type's callbacks are pluggable code fed with bytes from outside: what
    # they raise that is not a TaoError (a bug, or a library error they let through)
    # is still a refusal, never another exception out of validate().
    try:
        if signer_type.verify_says is None:
            signer_type.verify(att)
        else:
            signer_type.verify_says(att, says)
        try:
            signer = signer_type.principal(att.signer_key)
        except CodecError as exc:
            raise AuthenticationError(f"{what}: malformed signer key: {exc}") from None
    except TaoError:
        raise
    except Exception as exc:
        raise AuthenticationError(
            f"{what}: signer type {att.signer_type!r} failed on it: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    _window_check(says, now_ns, what)

    if att.serialized_delegation is None:
        if not says.speaker.is_sub_principal_of(signer):
            raise AuthenticationError(
                f"{what}: speaker {says.speaker} is not the signer {signer} "
                "or one of its sub-principals"
            )
        return Proven(  # positional, in field order: a quarter cheaper than by name
            says.speaker,  # speaker
            says.message,  # message
            says,  # statement
            says.time,  # not_before
            says.expiration,  # not_after
            signer,  # signer
            signer,  # root_signer
            att.signer_type,  # root_signer_type
            att.signer_key,  # root_signer_key
            att.root_endorsement,  # root_endorsement
        )

    if depth + 1 > MAX_DELEGATION_DEPTH:
        raise AuthenticationError(f"delegation chain is longer than {MAX_DELEGATION_DEPTH}")
    try:
        delegation = Attestation.from_bytes(att.serialized_delegation)
    except CodecError as exc:
        raise AuthenticationError(f"{what}: malformed delegation: {exc}") from None
    inner = _validate(delegation, now_ns, depth=depth + 1)
    dwhat = f"delegation (level {depth + 1})"
    msg = inner.message
    if not isinstance(msg, auth.Speaksfor):
        raise AuthenticationError(f"{dwhat}: the delegation is not a speaksfor statement")
    if not isinstance(msg.delegate, auth.Prin) or not isinstance(msg.delegator, auth.Prin):
        raise AuthenticationError(f"{dwhat}: delegate and delegator must be principals")
    if inner.speaker != msg.delegator:
        raise AuthenticationError(
            f"{dwhat}: speaker {inner.speaker} is not the delegator {msg.delegator}"
        )
    if not msg.delegate.is_sub_principal_of(signer):
        raise AuthenticationError(
            f"{dwhat}: delegate {msg.delegate} is not the signer {signer} of the {what}"
        )
    if not says.speaker.is_sub_principal_of(msg.delegator):
        raise AuthenticationError(
            f"{what}: speaker {says.speaker} is not the delegator {msg.delegator} "
            "or one of its sub-principals"
        )
    return Proven(
        speaker=says.speaker,
        message=says.message,
        statement=says,
        not_before=_intersect(says.time, inner.not_before, max),
        not_after=_intersect(says.expiration, inner.not_after, min),
        signer=signer,
        root_signer=inner.root_signer,
        root_signer_type=inner.root_signer_type,
        root_signer_key=inner.root_signer_key,
        root_endorsement=att.root_endorsement or inner.root_endorsement,
    )


def _check_rooted_in_policy(proven: Proven, policy: bytes | PolicyAnchor, now_ns: int) -> None:
    anchor = policy if isinstance(policy, PolicyAnchor) else PolicyAnchor(policy, now_ns=now_ns)
    anchor.check_window(now_ns)
    if proven.root_signer_type == "key" and proven.root_signer_key == anchor.public_key_der:
        return
    if proven.root_endorsement is None:
        raise AuthenticationError(
            f"the chain's root signer {proven.root_signer} is not the policy key and "
            "carries no root endorsement from it"
        )
    anchor.verify_host_certificate(
        proven.root_endorsement,
        host_key_der=proven.root_signer_key,
        signer_type=proven.root_signer_type,
        now_ns=now_ns,
    )
