"""Certificates issued by a domain's policy key: the policy (root), hosts and programs.

See ``taonet.certs._profile`` (policy and host certificates) and
``taonet.certs._program`` (program certificates) for the profiles and the checks
each verifier makes.
"""

from __future__ import annotations

from taonet.certs._crl import MAX_CRL_BYTES, RevocationList, make_crl, verify_crl
from taonet.certs._profile import (
    CertificateRole,
    PolicyAnchor,
    certificate_principal,
    issue_host_certificate,
    load_certificate,
    make_policy_certificate,
    principal_uri,
    public_key_der,
    verify_host_certificate,
    verify_policy_certificate,
)
from taonet.certs._program import (
    CHANNEL_HOSTNAME,
    ProgramCertificate,
    issue_program_certificate,
    verify_program_certificate,
)

__all__ = [
    "CHANNEL_HOSTNAME",
    "MAX_CRL_BYTES",
    "CertificateRole",
    "PolicyAnchor",
    "ProgramCertificate",
    "RevocationList",
    "certificate_principal",
    "issue_host_certificate",
    "issue_program_certificate",
    "load_certificate",
    "make_crl",
    "make_policy_certificate",
    "principal_uri",
    "public_key_der",
    "verify_crl",
    "verify_host_certificate",
    "verify_policy_certificate",
    "verify_program_certificate",
]
