"""Operator credentials: secret service requests signed by the domain's policy key.

An operator (``taonet secret ...``) acts with the policy key. Each request carries,
in its ``operator`` field, a credential: a statement signed with the policy key
under :data:`OPERATOR_CONTEXT` that binds

* the request: its method and every field of its body (:func:`operator_payload`,
  the body without the credential itself), so no field can be edited after signing;
* the server it is for: the principal the operator saw on the channel *and* the id
  of the store that server serves (:class:`~taonet.secrets.ServerInfo`, asked with
  an Info request on that channel first), so a credential made for one server is
  refused by any other, including another instance of the same program (same
  principal) over another database, such as a test server and production; replicas
  of one database share its store id (and its nonces), so any one of them accepts
  the credential, once;
* a fresh random nonce (:data:`NONCE_BYTES`), which the server remembers until the
  window ends, so the same credential is accepted once;
* a validity window ``[not_before, not_after]`` of at most :data:`MAX_WINDOW_NS`
  (the CLI makes :data:`DEFAULT_WINDOW_NS`), so a credential is good only briefly;
* the signer's public key (SPKI DER), so a key of another domain is named as such.

Wire form of the credential (all lengths 4-byte big-endian, at most
:data:`~taonet.secrets.MAX_OPERATOR_BYTES` in all)::

    MAGIC | len server | server (binary principal) | store id (16) | nonce (16) |
    not_before_ns (8) | not_after_ns (8) | len key | key | len signature | signature

The signed data is the same up to the key, followed by the length and bytes of the
request payload. Decoding is strict (exact lengths, nothing after the signature).
Version 2 (this one) added the store id; a version 1 credential (no store id) is
refused as MALFORMED, never read as one for any store, and its signatures were made
under another context (:data:`OPERATOR_CONTEXT` changed with the version), so none
can be reused in a version 2 credential.

Verification (:func:`verify_operator_request`) raises :class:`OperatorError` (an
:class:`~taonet.AuthenticationError`) with an :class:`OperatorReason`; it never
returns False. Replays are the server's to refuse (it keeps the nonces).

Pure: no trio, no I/O; the clock is passed in.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
from typing import Final

import attrs

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet.crypto import Signer, Verifier
from taonet.secrets._protocol import (
    MAX_OPERATOR_BYTES,
    STORE_ID_BYTES,
    Request,
    operator_payload,
)

__all__ = [
    "CLOCK_SKEW_NS",
    "DEFAULT_WINDOW_NS",
    "MAX_WINDOW_NS",
    "NONCE_BYTES",
    "OPERATOR_CONTEXT",
    "OperatorClaim",
    "OperatorError",
    "OperatorReason",
    "decode_credential",
    "sign_operator_request",
    "verify_operator_request",
]

#: The taonet.crypto signing context of operator credentials (theirs alone).
OPERATOR_CONTEXT: Final = "taonet secret service operator request v2"
#: Random bytes naming one credential.
NONCE_BYTES: Final = 16
#: The window the CLI gives a credential.
DEFAULT_WINDOW_NS: Final = 60 * 10**9
#: The longest window a server accepts.
MAX_WINDOW_NS: Final = 300 * 10**9
#: How far a server's clock may be behind the operator's (a window starting at most
#: this much in the server's future is accepted).
CLOCK_SKEW_NS: Final = 30 * 10**9
_MAGIC: Final = b"taonet operator v2\0"
_OLD_MAGICS: Final = (b"taonet operator v1\0",)
_U32: Final = struct.Struct(">I")
_TIMES: Final = struct.Struct(">QQ")
_MAX_SERVER: Final = 4096
_MAX_KEY: Final = 512
_MAX_SIGNATURE: Final = 512


class OperatorReason(enum.Enum):
    """Why an operator credential was refused."""

    MALFORMED = "malformed"
    WRONG_SIGNER = "wrong_signer"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SERVER = "wrong_server"
    WRONG_STORE = "wrong_store"
    WINDOW_TOO_LONG = "window_too_long"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REPLAYED = "replayed"


class OperatorError(AuthenticationError):
    """An operator credential was refused; ``reason`` says why."""

    def __init__(self, message: str, *, reason: OperatorReason) -> None:
        super().__init__(message)
        self.reason: Final = reason


@attrs.frozen
class OperatorClaim:
    """What a credential says besides the request: for whom (a server and the store it
    serves), when, by which key."""

    server: auth.Prin
    store: bytes = attrs.field(repr=lambda b: b.hex())
    nonce: bytes = attrs.field(repr=lambda b: b.hex())
    not_before_ns: int
    not_after_ns: int = attrs.field()
    signer_key: bytes = attrs.field(repr=False)

    @store.validator
    def _store(self, _attr: object, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != STORE_ID_BYTES:
            raise ValueError(f"a store id is {STORE_ID_BYTES} bytes")

    @nonce.validator
    def _nonce(self, _attr: object, value: bytes) -> None:
        if len(value) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes")

    @not_after_ns.validator
    def _times(self, _attr: object, value: int) -> None:
        for t in (self.not_before_ns, value):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**64:
                raise ValueError("times are nanoseconds since the epoch, 0..2**64-1")
        if value < self.not_before_ns:
            raise ValueError("not_after is before not_before")


def _lp(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _head(claim: OperatorClaim) -> bytes:
    return b"".join(
        (
            _MAGIC,
            _lp(auth.encode(claim.server)),
            claim.store,
            claim.nonce,
            _TIMES.pack(claim.not_before_ns, claim.not_after_ns),
            _lp(claim.signer_key),
        )
    )


def _signed_data(head: bytes, request: Request) -> bytes:
    return head + _lp(operator_payload(request))


def sign_operator_request(
    request: Request,
    signer: Signer,
    *,
    server: auth.Prin,
    store: bytes,
    now_ns: int,
    window_ns: int = DEFAULT_WINDOW_NS,
    nonce: bytes | None = None,
) -> Request:
    """``request`` with an operator credential made by ``signer`` for ``server``
    serving the store ``store`` (the ``store_id`` its Info answer gave on a channel to
    it), good from ``now_ns`` for ``window_ns`` (a fresh random nonce unless one is
    given)."""
    if not 0 < window_ns <= MAX_WINDOW_NS:
        raise ValueError(f"window must be 1..{MAX_WINDOW_NS} ns")
    claim = OperatorClaim(
        server,
        store,
        os.urandom(NONCE_BYTES) if nonce is None else nonce,
        now_ns,
        now_ns + window_ns,
        signer.public_key_der(),
    )
    head = _head(claim)
    signature = signer.sign(_signed_data(head, request), OPERATOR_CONTEXT)
    credential = head + _lp(signature)
    if len(credential) > MAX_OPERATOR_BYTES:
        raise ValueError(f"operator credential over {MAX_OPERATOR_BYTES} bytes")
    return attrs.evolve(request, operator=credential)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise CodecError("operator credential is truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def field(self, limit: int, what: str) -> bytes:
        (n,) = _U32.unpack(self.take(4))
        if n > limit:
            raise CodecError(f"operator credential: {what} of {n} bytes is over {limit}")
        return self.take(n)


def decode_credential(credential: bytes) -> tuple[OperatorClaim, bytes, bytes]:
    """The claim, the signed head and the signature of a credential; CodecError (and
    nothing else) for bytes that are not one."""
    if not isinstance(credential, bytes) or len(credential) > MAX_OPERATOR_BYTES:
        raise CodecError(f"operator credential must be bytes, at most {MAX_OPERATOR_BYTES}")
    reader = _Reader(credential)
    if any(credential.startswith(old) for old in _OLD_MAGICS):
        raise CodecError(
            "an operator credential of an older version, without a store id:"
            " sign the request again with this version of taonet"
        )
    if reader.take(len(_MAGIC)) != _MAGIC:
        raise CodecError("not an operator credential (bad magic)")
    server_raw = reader.field(_MAX_SERVER, "server")
    store = reader.take(STORE_ID_BYTES)
    nonce = reader.take(NONCE_BYTES)
    not_before, not_after = _TIMES.unpack(reader.take(_TIMES.size))
    key = reader.field(_MAX_KEY, "key")
    head = credential[: reader.at]
    signature = reader.field(_MAX_SIGNATURE, "signature")
    if reader.at != len(credential):
        raise CodecError("operator credential: bytes after the signature")
    try:
        server = auth.decode_prin(server_raw)
    except CodecError as exc:
        raise CodecError(f"operator credential: server: {exc}") from None
    try:
        claim = OperatorClaim(server, store, nonce, not_before, not_after, key)
    except ValueError as exc:
        raise CodecError(f"operator credential: {exc}") from None
    return claim, head, signature


def verify_operator_request(
    request: Request,
    *,
    policy_key: Verifier,
    server: auth.Prin | None,
    store: bytes,
    now_ns: int | None,
) -> OperatorClaim:
    """Check the operator credential ``request`` carries: signed by ``policy_key`` over
    this very request, for ``server`` and the store ``store`` (the id of the store the
    verifying server serves), within its window at ``now_ns``. Returns the claim (its
    nonce and window, for the server's replay cache); raises :class:`OperatorError`
    otherwise.

    ``server=None, now_ns=None`` checks the signature and the store alone: for a
    grant's proof kept in a database and checked again at each load, on any replica
    (of any principal) of that store, long after its window (the request was checked
    in full when it was made)."""
    credential = request.operator
    if credential is None:
        raise OperatorError(
            "the request carries no operator credential", reason=OperatorReason.MALFORMED
        )
    try:
        claim, head, signature = decode_credential(credential)
    except CodecError as exc:
        raise OperatorError(str(exc), reason=OperatorReason.MALFORMED) from None
    if claim.signer_key != policy_key.public_key_der():
        raise OperatorError(
            "the operator credential is signed by another key, not this domain's policy key",
            reason=OperatorReason.WRONG_SIGNER,
        )
    try:
        policy_key.verify(_signed_data(head, request), OPERATOR_CONTEXT, signature)
    except AuthenticationError:
        raise OperatorError(
            "the operator credential's signature does not cover this request"
            " (edited after signing, or forged)",
            reason=OperatorReason.BAD_SIGNATURE,
        ) from None
    if server is not None and claim.server != server:
        raise OperatorError(
            f"the operator credential is for another server ({str(claim.server)[:200]})",
            reason=OperatorReason.WRONG_SERVER,
        )
    if not hmac.compare_digest(claim.store, store):
        raise OperatorError(
            f"the operator credential is for another store ({claim.store.hex()}), not the"
            f" one this server serves ({store.hex()}): another instance of this server"
            " (ask this one for its store id and sign again)",
            reason=OperatorReason.WRONG_STORE,
        )
    if now_ns is not None:
        if claim.not_after_ns - claim.not_before_ns > MAX_WINDOW_NS:
            raise OperatorError(
                f"the operator credential's window is over {MAX_WINDOW_NS // 10**9} s",
                reason=OperatorReason.WINDOW_TOO_LONG,
            )
        if now_ns + CLOCK_SKEW_NS < claim.not_before_ns:
            raise OperatorError(
                "the operator credential is not valid yet (its window starts"
                f" {(claim.not_before_ns - now_ns) // 10**9} s from now)",
                reason=OperatorReason.NOT_YET_VALID,
            )
        if now_ns > claim.not_after_ns:
            raise OperatorError(
                "the operator credential has expired"
                f" ({(now_ns - claim.not_after_ns) // 10**9} s ago)",
                reason=OperatorReason.EXPIRED,
            )
    return claim
