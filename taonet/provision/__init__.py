"""Provisioning a program's identity: the domain service client and the bootstrap.

* :func:`load_or_provision`: first run, attest and get a program certificate, seal
  it; later runs, unseal it (see ``_bootstrap``).
* :func:`request_certificate`, :func:`fetch_crl`: the domain service protocol.
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

__all__ = [
    "ERROR_BAD_REQUEST",
    "ERROR_INTERNAL",
    "ERROR_INVALID_ATTESTATION",
    "ERROR_UNAUTHORIZED",
    "OP_CERTIFY",
    "OP_GET_CRL",
    "DomainServiceError",
    "Provisioned",
    "bind_to_domain",
    "fetch_crl",
    "load_or_provision",
    "request_certificate",
]
