"""Attestations: build them and validate them fully (see ``_attestation``).

Signer types ``"key"`` and ``"tpm2"`` are built in; TPM 2.0 names and quotes are in
:mod:`taonet.attestation.tpm2`.
"""

from __future__ import annotations

from taonet.attestation import _tpm2
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

# Built in, like "key": registered before anyone else can take the name.
register_signer_type("tpm2", _tpm2.SIGNER_TYPE)

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
