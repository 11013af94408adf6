"""The one rule for an RSA TPM 2.0 quote key, shared by everything that accepts one.

A TPM makes RSA keys of 2048, 3072 or 4096 bits with the public exponent 65537 (a
TPMT_PUBLIC exponent of 0 means 65537). A key with any other exponent is no TPM's and
only costs a verifier time: RSA verification is linear in the exponent's bit length,
so a 3071-bit exponent makes one verify ~20 times dearer. The verifier
(``taonet.attestation._tpm2``), the quote service's key check
(``taonet.attestation._tpm2_credential.check_quote_key``) and the host-certificate
profile (``taonet.certs``) all apply :func:`rsa_quote_key_problem`.

A leaf module (``cryptography`` only) so that ``taonet.certs`` can use it without
importing ``taonet.attestation``, which imports ``taonet.certs``.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric import rsa

#: RSA modulus sizes a TPM 2.0 quote key may have.
RSA_QUOTE_KEY_BITS: Final = (2048, 3072, 4096)
#: The only RSA public exponent accepted for a quote key.
RSA_QUOTE_KEY_EXPONENT: Final = 65537


def rsa_quote_key_problem(key: rsa.RSAPublicKey) -> str | None:
    """Why ``key`` is not an acceptable RSA quote key, or None if it is."""
    if key.key_size not in RSA_QUOTE_KEY_BITS:
        return f"RSA-{key.key_size} is not RSA-2048, RSA-3072 or RSA-4096"
    e = key.public_numbers().e
    if e != RSA_QUOTE_KEY_EXPONENT:
        return f"RSA public exponent of {e.bit_length()} bits is not 65537"
    return None
