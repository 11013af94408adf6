"""Attestations: build them and validate them fully (see ``_attestation``)."""

from __future__ import annotations

from taonet.attestation._attestation import (
    DEFAULT_VALIDITY_NS,
    MAX_DELEGATION_DEPTH,
    UNROOTED,
    Attestation,
    Proven,
    SignerType,
    Unrooted,
    attest,
    register_signer_type,
    validate,
)

__all__ = [
    "DEFAULT_VALIDITY_NS",
    "MAX_DELEGATION_DEPTH",
    "UNROOTED",
    "Attestation",
    "Proven",
    "SignerType",
    "Unrooted",
    "attest",
    "register_signer_type",
    "validate",
]
