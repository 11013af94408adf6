"""The quote service: certifies TPM quote keys for a domain (see ``_service``)."""

from __future__ import annotations

from taonet_services.quote_service._service import REQUEST_TIMEOUT, QuoteService

__all__ = ["REQUEST_TIMEOUT", "QuoteService"]

QuoteService.__module__ = __name__
