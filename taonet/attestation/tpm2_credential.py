"""TPM 2.0 endorsement keys and credentials, in pure Python (no TSS, no trio).

Public names of ``_tpm2_credential`` (public areas, names, KDFs, MakeCredential, the
TCG EK templates, the quote key check) and ``_ek_chain`` (an EK certificate checked
against manufacturer CAs, an EK public area against its certificate).
"""

from __future__ import annotations

from taonet.attestation._ek_chain import (
    EK_CERTIFICATE_EKU,
    MAX_EK_CERTIFICATE,
    check_ek_certificate,
    check_ek_public,
    load_ek_certificate,
)
from taonet.attestation._tpm2_credential import (
    EK_TEMPLATES,
    MAX_TPMT_PUBLIC,
    EkTemplate,
    Symmetric,
    TpmPublic,
    check_quote_key,
    kdfa,
    kdfe,
    make_credential,
    match_ek_template,
    object_name,
    parse_public,
    tpmt_public_from_tpm2b,
)

__all__ = [
    "EK_CERTIFICATE_EKU",
    "EK_TEMPLATES",
    "MAX_EK_CERTIFICATE",
    "MAX_TPMT_PUBLIC",
    "EkTemplate",
    "Symmetric",
    "TpmPublic",
    "check_ek_certificate",
    "check_ek_public",
    "check_quote_key",
    "kdfa",
    "kdfe",
    "load_ek_certificate",
    "make_credential",
    "match_ek_template",
    "object_name",
    "parse_public",
    "tpmt_public_from_tpm2b",
]

for _public in (EkTemplate, Symmetric, TpmPublic):
    _public.__module__ = __name__
del _public
