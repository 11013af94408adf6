"""Verifying a disclosure directive against a domain's policy anchor.

:func:`verify_directive` checks, in this order, and raises
:class:`~taonet.disclosure.DirectiveError` with the first failure's reason:

1. the bytes: at most :data:`~taonet.disclosure.MAX_DIRECTIVE_BYTES`, a canonical
   ``directive_message`` with a statement, a signer and a signature (MALFORMED);
   its type SECRET_DISCLOSURE (BAD_TYPE);
2. the policy certificate's window (EXPIRED, NOT_YET_VALID); the signer, a key
   principal: either the policy key itself (then a certificate,
   if any, must be the policy certificate: the original's helper attached the
   signing key's own certificate), or a key its program certificate certifies.
   That certificate must be signed by this domain's policy key and issued under
   its subject (WRONG_DOMAIN); be a program certificate of taonet's profile, or of
   the original's (its subject CommonName holding the principal's text)
   (UNKNOWN_SIGNER; a serial of 0, which the original always wrote and no CRL can
   list, is MALFORMED, as taonet reads no such certificate); be valid now
   (EXPIRED, NOT_YET_VALID); certify the signer's key (UNKNOWN_SIGNER); and its
   serial must not be revoked (REVOKED);
3. the signature over the statement with DIRECTIVE_CONTEXT, by that key, in the
   one canonical SignedData encoding with nothing after the DER ECDSA value
   (BAD_SIGNATURE);
4. the statement: ``Speaker says Op(Delegate, object id)`` (MALFORMED); the
   speaker is the policy key's principal (policy-signed) or exactly the program
   the certificate names (WRONG_SPEAKER); the operation one of the five (BAD_OP);
5. the window: ``not_before <= now < not_after`` for the ends present
   (NOT_YET_VALID, EXPIRED); a directive without ``not_after`` (the original's
   never had one) is UNBOUNDED unless ``allow_unbounded=True``, and so is one
   whose ``not_after`` is more than ``max_lifetime_ns`` (default
   :data:`MAX_LIFETIME_NS`, 367 days) after now.

It does not decide ownership: when ``by_policy`` is False, the caller checks that
the delegator owns the object.

What is remembered: the decoding of a statement and the checks of a program
certificate (its signature, profile and name), each by their exact bytes (the
certificate's in the anchor's bounded cache); the policy key's principal. The
signature over the statement is checked on every call; the certificate's window,
the revocation and the directive's window against the caller's clock and list.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet.certs import PolicyAnchor, load_certificate, public_key_der
from taonet.certs._profile import (
    SERIAL_LIMIT,
    check_signed_by,
    refuse_retired_profile,
    refusing_malformed,
)
from taonet.certs._program import _verify_program
from taonet.crypto import DIRECTIVE_CONTEXT, Verifier
from taonet.disclosure._directive import (
    MAX_DIRECTIVE_BYTES,
    Directive,
    DirectiveOp,
    Statement,
    decode_statement,
    has_taonet_uri,
    named_principal,
    op_of,
    parse_envelope,
)
from taonet.disclosure._errors import DirectiveError, DirectiveReason
from taonet.disclosure._schema import SECRET_DISCLOSURE

__all__ = ["MAX_LIFETIME_NS", "Revoked", "verify_directive"]

#: What tells a revoked serial: a verified CRL (``taonet.certs.RevocationList``),
#: any container of serials, or a function of the serial.
Revoked = Callable[[int], bool] | Container[int]

_R = DirectiveReason
#: The furthest end a directive may have, from the verifier's now, unless the caller
#: says otherwise (``max_lifetime_ns``): the 366 days ``taonet domain directive``
#: signs at most, and a day for clocks. An end in 2262 is as good as none.
MAX_LIFETIME_NS: Final = 367 * 86400 * 10**9
_CURVES: Final = frozenset({"secp256r1", "secp384r1"})
_KNOWN_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)


@attrs.frozen
class _ProgramCert:
    principal: auth.Prin
    serial: int
    not_before: int
    not_after: int
    key_der: bytes
    #: The certified key's principal, and its binary encoding.
    signer: auth.Prin
    signer_bytes: bytes


def verify_directive(
    data: bytes | Directive,
    *,
    policy: PolicyAnchor,
    now_ns: int,
    revoked: Revoked | None = None,
    allow_unbounded: bool = False,
    max_lifetime_ns: int | None = MAX_LIFETIME_NS,
) -> Directive:
    """Check a directive (its bytes, or a :class:`Directive` by its ``raw`` bytes).

    See the module documentation for the checks and their order. Returns the
    verified :class:`Directive` (``signer_key``, ``by_policy`` and, for a program
    signer, ``cert_serial`` filled in); raises :class:`DirectiveError` with a
    :class:`DirectiveReason` and a message saying what failed.

    ``max_lifetime_ns``: a directive that ends more than this after ``now_ns`` is
    refused (UNBOUNDED); default :data:`MAX_LIFETIME_NS`, None for no bound.
    """
    raw = data.raw if isinstance(data, Directive) else data
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise DirectiveError(
            f"directive: expected bytes, got {type(raw).__name__}", reason=_R.MALFORMED
        )
    raw = bytes(raw)
    if len(raw) > MAX_DIRECTIVE_BYTES:
        raise DirectiveError(
            f"directive: {len(raw)} bytes is over the {MAX_DIRECTIVE_BYTES}-byte limit",
            reason=_R.MALFORMED,
        )
    try:
        env = parse_envelope(raw)
    except CodecError as exc:
        raise DirectiveError(str(exc), reason=_R.MALFORMED) from None
    if env.type != SECRET_DISCLOSURE:
        raise DirectiveError(
            f"directive type {env.type} is not SECRET_DISCLOSURE (1)", reason=_R.BAD_TYPE
        )
    if env.statement is None or env.signer is None or env.signature is None:
        raise DirectiveError(
            "directive: statement, signer and signature are all required", reason=_R.MALFORMED
        )
    # 2. Who signed: the policy key, or a program key its certificate vouches for. The
    # signer field is compared as bytes with the one encoding of that key's principal.
    policy_prin, policy_signer = _key_principal(policy.public_key_der)
    _check_policy_window(policy, now_ns)
    program: _ProgramCert | None = None
    if env.signer == policy_signer:
        if env.cert is not None and env.cert != policy.der:
            raise DirectiveError(
                "a directive signed by the policy key carries a certificate other than the "
                "policy certificate",
                reason=_R.MALFORMED,
            )
        signer, key_der = policy_prin, policy.public_key_der
    else:
        if env.cert is None:
            raise DirectiveError(
                f"directive signed by {_signer_text(env.signer)}, which is not this domain's "
                "policy key and carries no program certificate",
                reason=_R.UNKNOWN_SIGNER,
            )
        program = _check_program_cert(policy, env.cert, now_ns)
        if env.signer != program.signer_bytes:
            raise DirectiveError(
                f"the directive's program certificate certifies another key than its "
                f"signer {_signer_text(env.signer)}",
                reason=_R.UNKNOWN_SIGNER,
            )
        if revoked is not None and _is_revoked(revoked, program.serial):
            raise DirectiveError(
                f"the program certificate that signed the directive (serial {program.serial}, "
                f"{_short(program.principal)}) is revoked",
                reason=_R.REVOKED,
            )
        signer, key_der = program.signer, program.key_der

    # 3. The signature, every time.
    try:
        Verifier.from_der(key_der).verify(env.statement, DIRECTIVE_CONTEXT, env.signature)
    except (AuthenticationError, CodecError) as exc:
        raise DirectiveError(f"directive signature: {exc}", reason=_R.BAD_SIGNATURE) from None

    # 4. What it says.
    try:
        statement = decode_statement(env.statement)
    except CodecError as exc:
        raise DirectiveError(f"directive statement: {exc}", reason=_R.MALFORMED) from None
    expected = signer if program is None else program.principal
    if statement.speaker != expected:
        who = "the policy key" if program is None else "the program its certificate names"
        raise DirectiveError(
            f"directive speaker {_short(statement.speaker)} is not {who} ({_short(expected)})",
            reason=_R.WRONG_SPEAKER,
        )
    op = op_of(statement.op_name)
    if op is None:
        raise DirectiveError(
            f"directive operation {statement.op_name[:40]!r} is not one of "
            f"{', '.join(o.value for o in DirectiveOp)}",
            reason=_R.BAD_OP,
        )

    # 5. When.
    _check_window(statement, now_ns, allow_unbounded, max_lifetime_ns)
    return Directive(
        op=op,
        delegate=statement.delegate,
        object_id=statement.object_id,
        delegator=statement.speaker,
        not_before=statement.time,
        not_after=statement.expiration,
        signer=signer,
        signer_key=key_der,
        cert=env.cert,
        raw=raw,
        by_policy=program is None,
        cert_serial=None if program is None else program.serial,
    )


def _check_window(
    statement: Statement, now_ns: int, allow_unbounded: bool, max_lifetime_ns: int | None
) -> None:
    start, end = statement.time, statement.expiration
    if start is not None and end is not None and start >= end:
        raise DirectiveError(
            "directive's window is empty (from is not before until)", reason=_R.MALFORMED
        )
    if start is not None and now_ns < start:
        raise DirectiveError(
            f"directive is not valid until {_when(start)}", reason=_R.NOT_YET_VALID
        )
    if end is None:
        if not allow_unbounded:
            raise DirectiveError(
                "directive has no expiration (the original CloudProxy's never do); "
                "unbounded directives are not accepted here",
                reason=_R.UNBOUNDED,
            )
    elif now_ns >= end:
        raise DirectiveError(f"directive expired at {_when(end)}", reason=_R.EXPIRED)
    elif max_lifetime_ns is not None and end - now_ns > max_lifetime_ns:
        raise DirectiveError(
            f"directive ends at {_when(end)}, more than {max_lifetime_ns // 86_400_000_000_000}"
            " days from now: a directive so long is refused like one without end",
            reason=_R.UNBOUNDED,
        )


def _is_revoked(revoked: Revoked, serial: int) -> bool:
    if isinstance(revoked, Container):
        return serial in revoked
    return bool(revoked(serial))


@functools.lru_cache(maxsize=1024)
def _key_principal(key_der: bytes) -> tuple[auth.Prin, bytes]:
    """A key's principal and its binary encoding (what a signer field holds)."""
    prin = auth.principal_for_key("key", key_der)
    return prin, auth.encode(prin)


def _signer_text(signer: bytes) -> str:
    """The signer field, for a message (it only matched no key taonet knows)."""
    try:
        return _short(auth.decode_prin(signer))
    except CodecError:
        return "an undecodable principal"


def _check_policy_window(policy: PolicyAnchor, now_ns: int) -> None:
    """The policy certificate, the root of everything a directive relies on, is valid now."""
    try:
        policy.check_window(now_ns)
    except AuthenticationError as exc:
        start_ns = int(policy.cert.not_valid_before_utc.timestamp()) * 1_000_000_000
        reason = _R.NOT_YET_VALID if now_ns < start_ns else _R.EXPIRED
        raise DirectiveError(f"this domain's {exc}", reason=reason) from None


def _check_program_cert(policy: PolicyAnchor, der: bytes, now_ns: int) -> _ProgramCert:
    """The program certificate's checks that depend only on its bytes (remembered by
    the anchor), then its window against ``now_ns``."""
    program = policy.remember(("directive-program", der), lambda: _program_once(policy, der))
    if now_ns < program.not_before:
        raise DirectiveError(
            f"the directive's program certificate is not valid until {_when(program.not_before)}",
            reason=_R.NOT_YET_VALID,
        )
    if now_ns > program.not_after:
        raise DirectiveError(
            f"the directive's program certificate expired at {_when(program.not_after)}",
            reason=_R.EXPIRED,
        )
    return program


def _program_once(policy: PolicyAnchor, der: bytes) -> _ProgramCert:
    try:
        cert = load_certificate(der, what="program certificate")
    except CodecError as exc:
        raise DirectiveError(str(exc), reason=_R.MALFORMED) from None
    try:
        with refusing_malformed("program certificate"):
            check_signed_by(
                der, cert.tbs_certificate_bytes, policy.public_key, what="program certificate"
            )
            if cert.issuer != policy.cert.subject:
                raise AuthenticationError("its issuer is not the policy certificate's subject")
    except AuthenticationError as exc:
        raise DirectiveError(
            f"the directive's program certificate is not from this domain's policy key: {exc}",
            reason=_R.WRONG_DOMAIN,
        ) from None
    try:
        with refusing_malformed("program certificate"):
            if has_taonet_uri(cert):
                checked = _verify_program(policy, der, None)
                signer, signer_bytes = _key_principal(checked.public_key_der)
                return _ProgramCert(
                    principal=checked.principal,
                    serial=checked.serial,
                    not_before=checked.not_before,
                    not_after=checked.not_after,
                    key_der=checked.public_key_der,
                    signer=signer,
                    signer_bytes=signer_bytes,
                )
            return _original_program(cert)
    except AuthenticationError as exc:
        raise DirectiveError(
            f"the directive's certificate is not a program certificate: {exc}",
            reason=_R.UNKNOWN_SIGNER,
        ) from None


def _original_program(cert: x509.Certificate) -> _ProgramCert:
    """The original CloudProxy's program certificate (already known to be signed by the
    policy key): the principal in its CommonName. Its profile differs from taonet's
    (key usage includes certSign, no taonet: URI), so only what a directive relies on is
    checked: version 3, a serial a CRL can list, not a CA, no critical extension
    beyond taonet's, an ECDSA P-256/P-384 key."""
    refuse_retired_profile(cert, what="program certificate")
    if cert.version is not x509.Version.v3:
        raise AuthenticationError(f"program certificate is X.509 {cert.version.name}, not v3")
    if not 0 < cert.serial_number < SERIAL_LIMIT:
        raise AuthenticationError(
            f"program certificate serial {cert.serial_number} is not from 1 to 2**159 - 1 "
            "(the original's serial 0 cannot be revoked)"
        )
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise AuthenticationError("a CA certificate is not a program certificate")
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise AuthenticationError(
                f"program certificate has an unknown critical extension {ext.oid.dotted_string}"
            )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise AuthenticationError("program certificate does not certify an ECDSA P-256/P-384 key")
    try:
        principal = named_principal(cert)
    except CodecError as exc:
        raise AuthenticationError(str(exc)) from None
    key_der = public_key_der(cert)
    signer, signer_bytes = _key_principal(key_der)
    return _ProgramCert(
        principal=principal,
        serial=cert.serial_number,
        not_before=int(cert.not_valid_before_utc.timestamp()) * 1_000_000_000,
        not_after=int(cert.not_valid_after_utc.timestamp()) * 1_000_000_000,
        key_der=key_der,
        signer=signer,
        signer_bytes=signer_bytes,
    )


def _when(ns: int) -> str:
    import datetime as _dt

    try:
        return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns after the epoch"


def _short(value: object, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
