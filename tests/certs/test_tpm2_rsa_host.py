"""A TPM's RSA quote key may be certified as a ``tpm2`` host; any other host key must be
ECDSA, and an RSA key other than 2048/3072/4096 bits with e = 65537 is never certified
(tests/attestation/test_tpm2_key_attacks.py has the other exponents)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from taonet import AuthenticationError, CodecError, certs
from taonet.crypto import Signer


def _rsa_der(bits: int) -> bytes:
    key = rsa.generate_private_key(65537, bits).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_rsa_quote_key_certified_only_for_tpm2() -> None:
    now = time.time_ns()
    policy = Signer.generate()
    policy_cert = certs.make_policy_certificate(policy, common_name="p", now_ns=now)
    der = _rsa_der(2048)
    cert = certs.issue_host_certificate(policy, policy_cert, der, now_ns=now, signer_type="tpm2")
    anchor = certs.PolicyAnchor(policy_cert, now_ns=now)
    anchor.verify_host_certificate(cert, host_key_der=der, signer_type="tpm2", now_ns=now)
    with pytest.raises(AuthenticationError, match="another principal"):
        anchor.verify_host_certificate(cert, host_key_der=der, signer_type="key", now_ns=now)
    with pytest.raises(CodecError, match="not an ECDSA public key"):
        certs.issue_host_certificate(policy, policy_cert, der, now_ns=now)
    with pytest.raises(CodecError, match="RSA-1024 is not RSA-2048, RSA-3072 or RSA-4096"):
        certs.issue_host_certificate(
            policy, policy_cert, _rsa_der(1024), now_ns=now, signer_type="tpm2"
        )
