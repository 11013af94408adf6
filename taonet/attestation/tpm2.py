"""TPM 2.0 host names and quotes, verified in pure Python (no TSS, no trio).

See ``taonet.attestation._tpm2`` for the rules a quote must meet. The ``"tpm2"``
signer type is registered with :func:`taonet.attestation.validate` on import of
:mod:`taonet.attestation`.
"""

from __future__ import annotations

from taonet.attestation._tpm2 import (
    DEFAULT_PCRS,
    MAX_QUOTE_BYTES,
    MAX_SIGNATURE_BYTES,
    PCR_BANK_SHA256,
    Quote,
    host_name,
    host_pcrs,
    parse_pcrs_ext,
    parse_quote,
    pcr_digest,
    pcr_selection_bytes,
    pcrs_ext,
    tpm2_attestation,
    tpm2_principal,
    verify_quote,
)

__all__ = [
    "DEFAULT_PCRS",
    "MAX_QUOTE_BYTES",
    "MAX_SIGNATURE_BYTES",
    "PCR_BANK_SHA256",
    "Quote",
    "host_name",
    "host_pcrs",
    "parse_pcrs_ext",
    "parse_quote",
    "pcr_digest",
    "pcr_selection_bytes",
    "pcrs_ext",
    "tpm2_attestation",
    "tpm2_principal",
    "verify_quote",
]

# What this namespace exports reports it as its home (``taonet.attestation.tpm2.Quote``).
for _public in (
    Quote,
    host_name,
    host_pcrs,
    parse_pcrs_ext,
    parse_quote,
    pcr_digest,
    pcr_selection_bytes,
    pcrs_ext,
    tpm2_attestation,
    tpm2_principal,
    verify_quote,
):
    _public.__module__ = __name__
del _public
