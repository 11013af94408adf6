"""Quote-key certification: a TPM host's quote key certified by its domain.

* The protocol (``_protocol``): :class:`QuoteKeyRequest` (EK certificate, EK and quote
  key public areas, host name) and :class:`QuoteKeyReply` (MakeCredential of an AES
  key for that EK, and the quote-key certificate sealed under it), their pure codec,
  :func:`seal_certificate` (the service's side) and :func:`open_certificate` (the
  host's, after ActivateCredential).
* The client (``_client``): :func:`request_quote_key_certificate`, and
  :func:`certify_quote_key` (request, ActivateCredential through a callback, open,
  verify: what a TPM host runs).
* The domain's manufacturer CA list (``_manufacturers``), bound by its digest into the
  domain's signed configuration: :func:`manufacturer_cas`, :func:`load_manufacturer_cas`,
  :func:`add_manufacturer_cas`, :func:`remove_manufacturer_cas`.

The server is ``taonet quote-service`` (``taonet_services.quote_service``); the
checks it makes are pure functions of :mod:`taonet.attestation.tpm2_credential`.
"""

from __future__ import annotations

from taonet.quoteservice._client import (
    REQUEST_TIMEOUT,
    certify_quote_key,
    request_quote_key_certificate,
)
from taonet.quoteservice._manufacturers import (
    MANUFACTURER_CAS_FILE,
    MAX_MANUFACTURER_CAS,
    add_manufacturer_cas,
    load_manufacturer_cas,
    manufacturer_cas,
    remove_manufacturer_cas,
)
from taonet.quoteservice._protocol import (
    CREDENTIAL_BYTES,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_REFUSED,
    MAX_REPLY,
    MAX_REQUEST,
    OP_CERTIFY_QUOTE_KEY,
    QuoteKeyReply,
    QuoteKeyRequest,
    QuoteServiceError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    open_certificate,
    seal_certificate,
)

__all__ = [
    "CREDENTIAL_BYTES",
    "ERROR_BAD_REQUEST",
    "ERROR_INTERNAL",
    "ERROR_REFUSED",
    "MANUFACTURER_CAS_FILE",
    "MAX_MANUFACTURER_CAS",
    "MAX_REPLY",
    "MAX_REQUEST",
    "OP_CERTIFY_QUOTE_KEY",
    "REQUEST_TIMEOUT",
    "QuoteKeyReply",
    "QuoteKeyRequest",
    "QuoteServiceError",
    "add_manufacturer_cas",
    "certify_quote_key",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "load_manufacturer_cas",
    "manufacturer_cas",
    "open_certificate",
    "remove_manufacturer_cas",
    "request_quote_key_certificate",
    "seal_certificate",
]

for _public in (QuoteKeyReply, QuoteKeyRequest, QuoteServiceError):
    _public.__module__ = __name__
del _public
