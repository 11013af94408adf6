"""Quotes as a TPM makes them, signed in Python: TPMS_ATTEST and TPMT_SIGNATURE.

For tests that need a tpm2-rooted attestation chain without a TPM: the structures are
those TPM2_Quote returns (TPM 2.0 Part 2, 10.12.8 TPMS_ATTEST and 11.3.4
TPMT_SIGNATURE), signed by an ECDSA P-256 quote key. ``quoted_pcrs`` lets a test make a
quote correctly signed over PCR values other than those the speaker names.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from taonet import auth
from taonet.attestation import Attestation
from taonet.attestation.tpm2 import pcr_digest, pcr_selection_bytes, tpm2_attestation

DAY = 24 * 3600 * 10**9


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class QuoteKey:
    """An ECDSA P-256 key that signs TPMS_ATTEST quotes as a TPM's quote key would."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def quote(self, extra_data: bytes, pcrs: Mapping[int, bytes]) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) of a quote over ``pcrs`` with ``extra_data``."""
        attest = (
            struct.pack(">IH", 0xFF544347, 0x8018)
            + _tpm2b(b"\x00\x0b" + b"\x11" * 32)  # qualifiedSigner: not checked
            + _tpm2b(extra_data)
            + struct.pack(">QIIB", 123456, 1, 0, 1)  # clockInfo
            + struct.pack(">Q", 0x2019_0101)  # firmwareVersion
            + pcr_selection_bytes(pcrs)
            + _tpm2b(pcr_digest(pcrs))
        )
        r, s = decode_dss_signature(self._key.sign(attest, ec.ECDSA(hashes.SHA256())))
        signature = struct.pack(">HH", 0x0018, 0x000B) + _tpm2b(r.to_bytes(32, "big"))
        return attest, signature + _tpm2b(s.to_bytes(32, "big"))

    def attest(
        self,
        speaker: auth.Prin,
        message: auth.Form,
        *,
        now_ns: int,
        quoted_pcrs: Mapping[int, bytes],
        root_endorsement: bytes | None,
    ) -> Attestation:
        """``speaker says message`` for a day from ``now_ns``, quoted over ``quoted_pcrs``."""
        statement = auth.encode(
            auth.Says(speaker=speaker, message=message, time=now_ns, expiration=now_ns + DAY)
        )
        attest, signature = self.quote(hashlib.sha256(statement).digest(), quoted_pcrs)
        return tpm2_attestation(
            statement, self.der, attest, signature, root_endorsement=root_endorsement
        )
