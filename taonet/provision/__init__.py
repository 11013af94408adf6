"""Provisioning a program's identity: the domain service client and the bootstrap.

* :func:`load_or_provision`: first run, attest and get a program certificate, seal
  it; later runs, unseal it (see ``_bootstrap``).
* :func:`request_certificate`, :func:`fetch_crl`, :func:`watch_crl`: the domain
  service protocol.
* :class:`RevocationWatcher`: the domain's CRL kept current from the domain service
  (scheduled, on demand and by long poll), to give channels as ``revocations=``.
"""

from __future__ import annotations

from taonet.provision._bootstrap import Provisioned, bind_to_domain, load_or_provision
from taonet.provision._client import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_INVALID_ATTESTATION,
    ERROR_UNAUTHORIZED,
    OP_CERTIFY,
    OP_GET_CRL,
    DomainServiceError,
    fetch_crl,
    request_certificate,
)
from taonet.provision._crl import (
    ERROR_TOO_MANY_WATCHES,
    OP_WATCH_CRL,
    WATCH_TIMEOUT,
    RevocationWatcher,
    decode_crl_number,
    encode_crl_number,
    watch_crl,
)

__all__ = [
    "ERROR_BAD_REQUEST",
    "ERROR_INTERNAL",
    "ERROR_INVALID_ATTESTATION",
    "ERROR_TOO_MANY_WATCHES",
    "ERROR_UNAUTHORIZED",
    "OP_CERTIFY",
    "OP_GET_CRL",
    "OP_WATCH_CRL",
    "WATCH_TIMEOUT",
    "DomainServiceError",
    "Provisioned",
    "RevocationWatcher",
    "bind_to_domain",
    "decode_crl_number",
    "encode_crl_number",
    "fetch_crl",
    "load_or_provision",
    "request_certificate",
    "watch_crl",
]

RevocationWatcher.__module__ = __name__
