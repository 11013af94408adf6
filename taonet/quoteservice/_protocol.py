"""The quote service protocol: typed messages and their pure codec (no I/O, no trio).

A TPM host asks the domain to certify its quote key. The request
(:class:`QuoteKeyRequest`) carries the TPM's EK certificate (DER), the EK's public
area and the quote key's public area (marshaled ``TPMT_PUBLIC``), and the host's
name ``tpm2([sha256 of the quote key's PKIX]).PCRs(...)`` (binary form). The reply
(:class:`QuoteKeyReply`) is

* ``credential_blob`` and ``encrypted_secret``: TPM2_MakeCredential of a fresh
  32-byte AES key for that EK, bound to the quote key's name (the contents of
  TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, without their size fields);
* ``encrypted_certificate``: the quote-key certificate (a host certificate of the
  domain, see :func:`taonet.certs.verify_host_certificate` with ``signer_type="tpm2"``)
  sealed with AES-256-GCM under that key, the quote key's name as associated data:
  a 12-byte nonce, then the ciphertext and tag.

Only the TPM that holds the EK, with that quote key loaded, recovers the AES key
(TPM2_ActivateCredential); :func:`open_certificate` then opens the certificate.

On the wire these are the protobuf messages ``QuoteServiceRequest`` and
``QuoteServiceResponse`` inside the protorpc envelope (method :data:`OP_CERTIFY_QUOTE_KEY`);
a refusal is a reply with an ``error_code`` and a ``reason``.
"""

from __future__ import annotations

import os
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taonet import auth
from taonet._errors import AuthenticationError, CodecError, ProtocolError, TaoError
from taonet.wire import message_class, parse, serialize

__all__ = [
    "CREDENTIAL_BYTES",
    "ERROR_BAD_REQUEST",
    "ERROR_INTERNAL",
    "ERROR_REFUSED",
    "MAX_REPLY",
    "MAX_REQUEST",
    "OP_CERTIFY_QUOTE_KEY",
    "QuoteKeyReply",
    "QuoteKeyRequest",
    "QuoteServiceError",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "open_certificate",
    "seal_certificate",
]

#: The quote service's one method (the protorpc header's ``op``).
OP_CERTIFY_QUOTE_KEY: Final = "QuoteService.CertifyQuoteKey"
ERROR_BAD_REQUEST: Final = "bad_request"
#: A check failed: EK certificate, EK public area, quote key or host name.
ERROR_REFUSED: Final = "refused"
ERROR_INTERNAL: Final = "internal_error"
#: Largest request body (an EK certificate is about 1 kB, public areas 100-400 bytes,
#: a host name with 24 PCRs about 2.5 kB).
MAX_REQUEST: Final = 16 * 1024
#: Largest reply body (a host certificate is about 700 bytes, an RSA secret 256).
MAX_REPLY: Final = 16 * 1024
#: The AES-256 key the credential carries.
CREDENTIAL_BYTES: Final = 32
_NONCE: Final = 12
_MAX_REASON: Final = 1000


class QuoteServiceError(TaoError):
    """The quote service refused; ``code`` says which way, ``reason`` why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"the quote service refused ({code}): {reason}")
        self.code = code
        self.reason = reason


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


@attrs.frozen
class QuoteKeyRequest:
    """What a TPM host sends to have its quote key certified (module docstring)."""

    ek_certificate: bytes = attrs.field(converter=_bytes, repr=False)
    ek_public: bytes = attrs.field(converter=_bytes, repr=False)
    quote_key_public: bytes = attrs.field(converter=_bytes, repr=False)
    host_name: auth.Prin = attrs.field(validator=attrs.validators.instance_of(auth.Prin))


@attrs.frozen
class QuoteKeyReply:
    """The wrapped quote-key certificate (module docstring)."""

    credential_blob: bytes = attrs.field(converter=_bytes, repr=False)
    encrypted_secret: bytes = attrs.field(converter=_bytes, repr=False)
    encrypted_certificate: bytes = attrs.field(converter=_bytes, repr=False)


def encode_request(request: QuoteKeyRequest) -> bytes:
    """The ``QuoteServiceRequest`` body of ``request``."""
    msg = message_class("QuoteServiceRequest")(
        ek_certificate=request.ek_certificate,
        ek_public=request.ek_public,
        quote_key_public=request.quote_key_public,
        host_name=auth.encode(request.host_name),
    )
    return serialize(msg)


def decode_request(body: bytes) -> QuoteKeyRequest:
    """Decode a request body; CodecError (and nothing else) for bytes that are not one."""
    if len(body) > MAX_REQUEST:
        raise CodecError(f"quote service request: {len(body)} bytes is over {MAX_REQUEST}")
    msg = parse("QuoteServiceRequest", body, what="quote service request")
    return QuoteKeyRequest(
        ek_certificate=bytes(msg.ek_certificate),
        ek_public=bytes(msg.ek_public),
        quote_key_public=bytes(msg.quote_key_public),
        host_name=auth.decode_prin(bytes(msg.host_name)),
    )


def encode_reply(reply: QuoteKeyReply | QuoteServiceError) -> bytes:
    """The ``QuoteServiceResponse`` body of a reply or a refusal."""
    cls = message_class("QuoteServiceResponse")
    if isinstance(reply, QuoteServiceError):
        return serialize(cls(error_code=reply.code, reason=reply.reason[:_MAX_REASON]))
    return serialize(
        cls(
            credential_blob=reply.credential_blob,
            encrypted_secret=reply.encrypted_secret,
            encrypted_certificate=reply.encrypted_certificate,
        )
    )


def decode_reply(body: bytes) -> QuoteKeyReply:
    """The reply in ``body``; QuoteServiceError for a refusal, ProtocolError for a body
    that is neither."""
    if len(body) > MAX_REPLY:
        raise ProtocolError(f"quote service reply: {len(body)} bytes is over {MAX_REPLY}")
    try:
        msg = parse("QuoteServiceResponse", body, what="quote service reply")
    except CodecError as exc:
        raise ProtocolError(f"bad answer from the quote service: {exc}") from exc
    if msg.HasField("error_code"):
        raise QuoteServiceError(str(msg.error_code)[:64], str(msg.reason)[:_MAX_REASON])
    fields = ("credential_blob", "encrypted_secret", "encrypted_certificate")
    if not all(msg.HasField(f) for f in fields):
        raise ProtocolError("the quote service answered without a wrapped certificate")
    return QuoteKeyReply(*(bytes(getattr(msg, f)) for f in fields))


def seal_certificate(key: bytes, certificate_der: bytes, quote_key_name: bytes) -> bytes:
    """AES-256-GCM of the certificate under ``key``, the quote key's name as associated
    data: nonce || ciphertext || tag (the service's half of :func:`open_certificate`)."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, certificate_der, quote_key_name)


def open_certificate(reply: QuoteKeyReply, secret: bytes, quote_key_name: bytes) -> bytes:
    """The quote-key certificate (DER) in ``reply``, opened with ``secret`` (what
    ActivateCredential returned for ``reply``'s credential) and the quote key's name.

    AuthenticationError when it does not open (another key, another name, altered
    bytes). The certificate itself is still to be verified
    (:meth:`taonet.certs.PolicyAnchor.verify_host_certificate`, ``signer_type="tpm2"``).
    """
    if len(secret) != CREDENTIAL_BYTES:
        raise AuthenticationError(
            f"the credential is {len(secret)} bytes, not a {CREDENTIAL_BYTES}-byte key"
        )
    blob = reply.encrypted_certificate
    if len(blob) < _NONCE + 16:
        raise AuthenticationError("the wrapped quote-key certificate is truncated")
    try:
        return AESGCM(secret).decrypt(blob[:_NONCE], blob[_NONCE:], quote_key_name)
    except InvalidTag:
        raise AuthenticationError(
            "the wrapped quote-key certificate does not open with this credential and "
            "quote key name"
        ) from None
