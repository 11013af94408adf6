"""Disclosure directives: the policy key (or an owning program) lets a principal at a key.

A directive is the original CloudProxy's ``secret_disclosure.directive_message``:
``Delegator [from T1] [until T2] says Op(Delegate, object id)``, signed by the
domain's policy key, or by a program whose certificate (in the message) chains to
the policy key. Pure: no trio, no I/O.

* :class:`DirectiveOp`: Read, Write, Create, Delete, Own (nothing else is accepted).
* :class:`Directive`: what a directive says (``grants(principal, op, object_id)``,
  ``by_policy``, ``digest``: its name in logs and audits, of its signed statement
  and signer, so other bytes of the same grant keep it; :func:`directive_digest`
  computes it from the bytes).
* :func:`sign_directive` -> the message bytes; :func:`decode_directive` reads them
  (:class:`~taonet.CodecError` and nothing else, bounded by
  :data:`MAX_DIRECTIVE_BYTES`; the original's directives, without a window, too).
* :func:`verify_directive` checks one against a :class:`~taonet.certs.PolicyAnchor`
  at the caller's clock and revocation list; it raises :class:`DirectiveError`
  (an :class:`~taonet.AuthorizationError`) whose ``reason`` is a
  :class:`DirectiveReason`. A directive without expiration (every directive the
  original made) is refused unless ``allow_unbounded=True``; so is one that ends
  more than :data:`MAX_LIFETIME_NS` (367 days) from now, unless
  ``max_lifetime_ns`` says otherwise.

Beyond the issue 12 contract: the reasons BAD_TYPE and WRONG_SPEAKER,
``Directive.cert_serial``, ``Directive.digest`` and :func:`directive_digest`.
"""

from __future__ import annotations

from taonet.disclosure._directive import (
    MAX_DIRECTIVE_BYTES,
    Directive,
    DirectiveOp,
    decode_directive,
    directive_digest,
    sign_directive,
)
from taonet.disclosure._errors import DirectiveError, DirectiveReason
from taonet.disclosure._verify import MAX_LIFETIME_NS, verify_directive

__all__ = [
    "MAX_DIRECTIVE_BYTES",
    "MAX_LIFETIME_NS",
    "Directive",
    "DirectiveError",
    "DirectiveOp",
    "DirectiveReason",
    "decode_directive",
    "directive_digest",
    "sign_directive",
    "verify_directive",
]

for _public in (
    Directive,
    DirectiveError,
    DirectiveOp,
    DirectiveReason,
    decode_directive,
    directive_digest,
    sign_directive,
    verify_directive,
):
    _public.__module__ = __name__
del _public
