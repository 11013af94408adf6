"""The disclosure peer protocol (Trio): serve keys to a successor that presents
directives, fetch and seal them on the successor's side.

Kept out of :mod:`taonet.disclosure` (pure: no trio) so that importing the
directives does not import Trio; import this module explicitly.

* :func:`serve_disclosure` answers ``Disclosure.Fetch`` over Tao channels: it
  releases only what the directives grant to the channel's verified peer, all or
  nothing, each release and refusal logged (and audited through ``audit``).
* :func:`request_disclosure` fetches ids over one channel from the program named
  by ``server=`` (required; :data:`ANY_SERVER` opts out), all or an exception:
  :class:`DisclosureRefusedError`, :class:`~taonet.ProtocolError`, ...
* :func:`fetch_and_seal` fetches, seals with the program's Tao and writes the
  sealed objects atomically, keeping those a file at that path already holds
  (``replace=True`` does not); :func:`open_sealed` reads them back.
* The wire (``Disclosure.Fetch``): :class:`FetchRequest`, :class:`FetchFailure`,
  :class:`DisclosureCode`, the codec functions and their bounds (:data:`MAX_FETCH`
  ids per request, ...).
"""

from __future__ import annotations

from taonet.disclosure._peer import (
    ANY_SERVER,
    AUDIT_IDS_CHARS,
    CALL_TIMEOUT,
    MAX_SEALED_BYTES,
    AnyServer,
    AuditHook,
    KeySource,
    OwnsHook,
    fetch_and_seal,
    open_sealed,
    request_disclosure,
    serve_disclosure,
)
from taonet.disclosure._peer_protocol import (
    FETCH_METHOD,
    MAX_DIRECTIVE_WIRE,
    MAX_FETCH,
    MAX_FETCH_REQUEST_BODY,
    MAX_FETCH_RESPONSE_BODY,
    DisclosureCode,
    DisclosureRefusedError,
    FetchFailure,
    FetchRequest,
    decode_fetch_request,
    decode_fetch_response,
    encode_fetch_request,
    encode_fetch_response,
)

__all__ = [
    "ANY_SERVER",
    "AUDIT_IDS_CHARS",
    "CALL_TIMEOUT",
    "FETCH_METHOD",
    "MAX_DIRECTIVE_WIRE",
    "MAX_FETCH",
    "MAX_FETCH_REQUEST_BODY",
    "MAX_FETCH_RESPONSE_BODY",
    "MAX_SEALED_BYTES",
    "AnyServer",
    "AuditHook",
    "DisclosureCode",
    "DisclosureRefusedError",
    "FetchFailure",
    "FetchRequest",
    "KeySource",
    "OwnsHook",
    "decode_fetch_request",
    "decode_fetch_response",
    "encode_fetch_request",
    "encode_fetch_response",
    "fetch_and_seal",
    "open_sealed",
    "request_disclosure",
    "serve_disclosure",
]

for _public in (
    AnyServer,
    DisclosureCode,
    DisclosureRefusedError,
    FetchFailure,
    FetchRequest,
    KeySource,
    decode_fetch_request,
    decode_fetch_response,
    encode_fetch_request,
    encode_fetch_response,
    fetch_and_seal,
    open_sealed,
    request_disclosure,
    serve_disclosure,
):
    _public.__module__ = __name__
del _public
