"""Certificates issued by a domain's policy key (policy, host; programs come with channels).

See ``taonet.certs._profile`` for the profile and the checks each verifier makes.
"""

from __future__ import annotations

from taonet.certs._profile import (
    OID_TAONET_HOST,
    OID_TAONET_PRINCIPAL,
    PolicyAnchor,
    certificate_principal,
    issue_host_certificate,
    load_certificate,
    make_policy_certificate,
    public_key_der,
    verify_host_certificate,
    verify_policy_certificate,
)

__all__ = [
    "OID_TAONET_HOST",
    "OID_TAONET_PRINCIPAL",
    "PolicyAnchor",
    "certificate_principal",
    "issue_host_certificate",
    "load_certificate",
    "make_policy_certificate",
    "public_key_der",
    "verify_host_certificate",
    "verify_policy_certificate",
]
