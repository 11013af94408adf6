"""The quote service: certifies TPM quote keys for a domain (see ``_service``)."""

from __future__ import annotations

from taonet_services.quote_service._service import (
    ADDRESS_ISSUANCE_LIMITS,
    EK_ISSUANCE_LIMITS,
    ISSUED_REASON,
    REQUEST_TIMEOUT,
    QuoteService,
)

__all__ = [
    "ADDRESS_ISSUANCE_LIMITS",
    "EK_ISSUANCE_LIMITS",
    "ISSUED_REASON",
    "REQUEST_TIMEOUT",
    "QuoteService",
]

QuoteService.__module__ = __name__
