"""Quotes made by a real TPM (swtpm, tests/vectors/tpm2_swtpm.json), not by our helper.

The parser and verifier read the TPM's own bytes: every field is where the TPM put
it, the qualifiedSigner is the qualified name the TPM spec defines, and the whole
attestation validates, against a policy once its quote key is certified.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import attrs
import pytest

from taonet import AuthenticationError, auth, certs
from taonet.attestation import UNROOTED, Attestation, validate
from taonet.attestation.tpm2 import (
    parse_quote,
    pcr_digest,
    tpm2_attestation,
    tpm2_principal,
    verify_quote,
)
from taonet.crypto import Signer
from tests.vectors.generate import read_json

FILE = read_json("tpm2_swtpm.json")
VECTORS: list[dict[str, Any]] = FILE["vectors"]
LAB: list[dict[str, Any]] = FILE["lab_quotes"]
TPM_RH_OWNER = struct.pack(">I", 0x40000001)


def _b(vector: dict[str, Any], field: str) -> bytes:
    return bytes.fromhex(vector[field])


def _pcrs(vector: dict[str, Any]) -> dict[int, bytes]:
    return {int(p): bytes.fromhex(v) for p, v in vector["pcrs"].items()}


def _name(tpmt_public: bytes) -> bytes:
    # Name = nameAlg || H_nameAlg(TPMT_PUBLIC); these objects use SHA-256 (0x000b).
    assert tpmt_public[2:4] == b"\x00\x0b"
    return b"\x00\x0b" + hashlib.sha256(tpmt_public).digest()


def _qualified_name(parent_qn: bytes, name: bytes) -> bytes:
    return name[:2] + hashlib.sha256(parent_qn + name).digest()


@pytest.fixture(params=VECTORS, ids=[v["name"] for v in VECTORS])
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    value: dict[str, Any] = request.param
    return value


def test_two_vectors_one_per_key_type() -> None:
    assert [v["name"] for v in VECTORS] == ["swtpm ecc quote", "swtpm rsa quote"]
    assert [v["name"] for v in LAB] == ["tpm lab ecc quote", "tpm lab rsa quote"]


def test_the_tpms_own_quote_parses(vector: dict[str, Any]) -> None:
    quote = parse_quote(_b(vector, "tpms_attest"))
    pcrs = _pcrs(vector)
    assert quote.extra_data == hashlib.sha256(_b(vector, "serialized_statement")).digest()
    assert quote.pcr_select == tuple(sorted(pcrs))
    assert quote.pcr_digest == pcr_digest(pcrs)
    # The quote key's qualified name: owner hierarchy -> storage primary -> quote key.
    parent_qn = _qualified_name(TPM_RH_OWNER, _name(_b(vector, "parent_tpmt_public")))
    key_name = _name(_b(vector, "quote_key_tpmt_public"))
    assert quote.qualified_signer == _qualified_name(parent_qn, key_name)


def test_the_tpms_own_quote_verifies(vector: dict[str, Any]) -> None:
    attest, sig = _b(vector, "tpms_attest"), _b(vector, "tpmt_signature")
    extra = hashlib.sha256(_b(vector, "serialized_statement")).digest()
    key = _b(vector, "quote_key_der")
    pcrs = _pcrs(vector)
    assert verify_quote(key, attest, sig, extra_data=extra, pcrs=pcrs) == parse_quote(attest)
    # The same real quote against other expectations.
    with pytest.raises(AuthenticationError, match="extraData"):
        verify_quote(key, attest, sig, extra_data=hashlib.sha256(b"x").digest(), pcrs=pcrs)
    with pytest.raises(AuthenticationError, match="PCR digest"):
        verify_quote(key, attest, sig, extra_data=extra, pcrs={**pcrs, 16: b"\x00" * 32})
    with pytest.raises(AuthenticationError, match="selection"):
        verify_quote(key, attest, sig, extra_data=extra, pcrs={**pcrs, 23: b"\x00" * 32})
    for bad in (attest[:-1], attest + b"\x00"):
        with pytest.raises(AuthenticationError, match="malformed TPM quote"):
            verify_quote(key, bad, sig, extra_data=extra, pcrs=pcrs)
    flipped = attest[:20] + bytes([attest[20] ^ 1]) + attest[21:]  # in extraData
    with pytest.raises(AuthenticationError):
        verify_quote(key, flipped, sig, extra_data=flipped[12:44], pcrs=pcrs)
    other = next(v for v in VECTORS if v is not vector)
    with pytest.raises(AuthenticationError, match="does not fit"):
        verify_quote(_b(other, "quote_key_der"), attest, sig, extra_data=extra, pcrs=pcrs)


def test_the_attestation_is_made_again_byte_for_byte(vector: dict[str, Any]) -> None:
    made = tpm2_attestation(
        _b(vector, "serialized_statement"),
        _b(vector, "quote_key_der"),
        _b(vector, "tpms_attest"),
        _b(vector, "tpmt_signature"),
    )
    assert made.to_bytes() == _b(vector, "attestation")


def test_the_tpms_attestation_validates(vector: dict[str, Any]) -> None:
    now = vector["now_ns"]
    key = _b(vector, "quote_key_der")
    proven = validate(_b(vector, "attestation"), now_ns=now, policy_cert=UNROOTED)
    assert str(proven.speaker) == vector["speaker"]
    assert proven.signer == tpm2_principal(key)
    assert proven.root_signer_type == "tpm2"
    att = Attestation.from_bytes(_b(vector, "attestation"))
    other = auth.encode(attrs.evolve(att.statement(), message=auth.Pred("Ready", ())))
    with pytest.raises(AuthenticationError, match="extraData"):
        validate(attrs.evolve(att, serialized_statement=other), now_ns=now, policy_cert=UNROOTED)


def test_the_tpms_ecc_attestation_validates_once_its_key_is_certified() -> None:
    vector = VECTORS[0]
    now = vector["now_ns"]
    policy = Signer.generate()
    policy_cert = certs.make_policy_certificate(policy, common_name="swtpm", now_ns=now)
    key_cert = certs.issue_host_certificate(
        policy, policy_cert, _b(vector, "quote_key_der"), now_ns=now, signer_type="tpm2"
    )
    att = attrs.evolve(Attestation.from_bytes(_b(vector, "attestation")), root_endorsement=key_cert)
    assert str(validate(att, now_ns=now, policy_cert=policy_cert).speaker) == vector["speaker"]
    other = Signer.generate()
    other_cert = certs.make_policy_certificate(other, common_name="other", now_ns=now)
    with pytest.raises(AuthenticationError, match="host certificate"):
        validate(att, now_ns=now, policy_cert=other_cert)


@pytest.mark.parametrize("lab", LAB, ids=[v["name"] for v in LAB])
def test_the_tpm_labs_quotes_verify(lab: dict[str, Any]) -> None:
    attest, sig, key = _b(lab, "tpms_attest"), _b(lab, "tpmt_signature"), _b(lab, "quote_key_der")
    extra = hashlib.sha256(lab["qualifying_data_of"].encode()).digest()
    pcrs = _pcrs(lab)
    assert pcrs[17] == pcrs[18] == b"\xff" * 32  # never reset since power-on
    quote = verify_quote(key, attest, sig, extra_data=extra, pcrs=pcrs)
    assert quote.pcr_select == (0, 1, 2, 3, 7, 16, 17, 18, 23)
    assert quote.pcr_digest == pcr_digest(pcrs)
    with pytest.raises(AuthenticationError, match="selection"):
        verify_quote(key, attest, sig, extra_data=extra, pcrs={**pcrs, 4: b"\x00" * 32})
    with pytest.raises(AuthenticationError, match="PCR digest"):
        verify_quote(key, attest, sig, extra_data=extra, pcrs={**pcrs, 17: b"\x00" * 32})
