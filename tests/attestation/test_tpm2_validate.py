"""tpm2 attestations through ``validate``: names, delegation, policy roots, expiry."""

from __future__ import annotations

import hashlib

import attrs
import pytest

from taonet import AuthenticationError, auth, certs
from taonet.attestation import UNROOTED, Attestation, attest, validate
from taonet.attestation.tpm2 import host_name, pcrs_ext, tpm2_attestation, tpm2_principal
from taonet.crypto import Signer
from tests.attestation.tpm2_quotes import (
    ECC_KEY,
    OTHER_ECC_KEY,
    PCRS,
    RSA_KEY,
    QuoteFields,
    der,
    ecdsa_signature,
    rsassa_signature,
)

NOW = 1_800_000_000 * 10**9
SECOND = 10**9
DAY = 24 * 3600 * SECOND

QUOTE_DER = der(ECC_KEY)
HOST = host_name(QUOTE_DER, PCRS)
PROGRAM = HOST.extend(auth.PrinExt("Program", (auth.Bytes(b"\x01" * 32),)))
MESSAGE = auth.Pred("Ready", (auth.Str("now"),))

POLICY = Signer.generate()
POLICY_CERT = certs.make_policy_certificate(POLICY, common_name="tpm2 test", now_ns=NOW)
OTHER_POLICY = Signer.generate()
OTHER_POLICY_CERT = certs.make_policy_certificate(OTHER_POLICY, common_name="other", now_ns=NOW)
#: The quote key's certificate from the domain (what the quote service issues).
QUOTE_KEY_CERT = certs.issue_host_certificate(
    POLICY, POLICY_CERT, QUOTE_DER, now_ns=NOW, signer_type="tpm2"
)


def statement(
    speaker: auth.Prin = PROGRAM, message: auth.Form = MESSAGE, *, until: int = NOW + DAY
) -> bytes:
    return auth.encode(auth.Says(speaker=speaker, message=message, time=NOW, expiration=until))


def quoted(
    stmt: bytes,
    *,
    key: object = ECC_KEY,
    key_der: bytes = QUOTE_DER,
    pcrs: dict[int, bytes] = PCRS,
    root_endorsement: bytes | None = QUOTE_KEY_CERT,
    delegation: Attestation | None = None,
) -> Attestation:
    """What a TPM host makes: TPM2_Quote over SHA-256(stmt) and ``pcrs``."""
    attest_bytes = QuoteFields(extra_data=hashlib.sha256(stmt).digest(), pcrs=pcrs).to_bytes()
    if key is RSA_KEY:
        sig = rsassa_signature(RSA_KEY, attest_bytes)
    else:
        sig = ecdsa_signature(key, attest_bytes)  # type: ignore[arg-type]
    return tpm2_attestation(
        stmt,
        key_der,
        attest_bytes,
        sig,
        delegation=delegation,
        root_endorsement=root_endorsement,
    )


def test_a_tpm2_attestation_validates_against_the_policy() -> None:
    att = quoted(statement())
    assert att.signer_type == "tpm2"
    proven = validate(att.to_bytes(), now_ns=NOW, policy_cert=POLICY_CERT)
    assert proven.speaker == PROGRAM
    assert proven.message == MESSAGE
    assert proven.signer == tpm2_principal(QUOTE_DER)
    assert proven.root_signer_type == "tpm2"
    assert proven.root_signer_key == QUOTE_DER
    assert proven.root_endorsement == QUOTE_KEY_CERT
    # The host itself may speak too.
    assert validate(quoted(statement(HOST)), now_ns=NOW, policy_cert=POLICY_CERT).speaker == HOST
    anchor = certs.PolicyAnchor(POLICY_CERT, now_ns=NOW)
    assert validate(att, now_ns=NOW, policy_cert=anchor).speaker == PROGRAM


def test_an_rsa_quote_key_validates_unrooted() -> None:
    rsa_der = der(RSA_KEY)
    stmt = statement(host_name(rsa_der, PCRS))
    att = quoted(stmt, key=RSA_KEY, key_der=rsa_der, root_endorsement=None)
    assert validate(att, now_ns=NOW, policy_cert=UNROOTED).signer == tpm2_principal(rsa_der)


def test_a_delegation_from_the_tpm_host_to_a_soft_key() -> None:
    # The TPM host attests "soft key speaksfor HOST"; a program under HOST speaks
    # through the soft key.
    soft = Signer.generate()
    soft_name = auth.key_principal(soft.public_key_der())
    grant = quoted(statement(HOST, auth.Speaksfor(delegate=soft_name, delegator=HOST)))
    att = attest(soft, MESSAGE, speaker=PROGRAM, now_ns=NOW, delegation=grant)
    proven = validate(att.to_bytes(), now_ns=NOW, policy_cert=POLICY_CERT)
    assert proven.speaker == PROGRAM
    assert proven.signer == soft_name
    assert proven.root_signer == tpm2_principal(QUOTE_DER)
    assert proven.root_signer_type == "tpm2"
    assert proven.not_after == NOW + DAY
    with pytest.raises(AuthenticationError, match="host certificate"):
        validate(att, now_ns=NOW, policy_cert=OTHER_POLICY_CERT)
    # The grant with other PCRs: the quote is over PCRS, the name says otherwise.
    other = host_name(QUOTE_DER, {**PCRS, 7: b"\x99" * 32})
    forged = quoted(
        statement(other, auth.Speaksfor(delegate=soft_name, delegator=other)), pcrs=PCRS
    )
    att = attest(soft, MESSAGE, speaker=other, now_ns=NOW, delegation=forged)
    with pytest.raises(AuthenticationError, match="PCR digest"):
        validate(att, now_ns=NOW, policy_cert=POLICY_CERT)


def test_the_same_quote_for_another_domains_policy_is_refused() -> None:
    att = quoted(statement())
    with pytest.raises(AuthenticationError, match="host certificate"):
        validate(att, now_ns=NOW, policy_cert=OTHER_POLICY_CERT)
    # Nor does the other domain's certificate for the same key make it ours.
    theirs = certs.issue_host_certificate(
        OTHER_POLICY, OTHER_POLICY_CERT, QUOTE_DER, now_ns=NOW, signer_type="tpm2"
    )
    with pytest.raises(AuthenticationError):
        validate(quoted(statement(), root_endorsement=theirs), now_ns=NOW, policy_cert=POLICY_CERT)


def test_an_expired_quote_key_certificate_is_refused() -> None:
    short = certs.issue_host_certificate(
        POLICY, POLICY_CERT, QUOTE_DER, now_ns=NOW, validity_days=1, signer_type="tpm2"
    )
    att = quoted(statement(until=NOW + 10 * DAY), root_endorsement=short)
    assert validate(att, now_ns=NOW, policy_cert=POLICY_CERT).speaker == PROGRAM
    with pytest.raises(AuthenticationError, match="expired"):
        validate(att, now_ns=NOW + 2 * DAY, policy_cert=POLICY_CERT)


def test_a_key_host_certificate_does_not_certify_a_tpm2_signer() -> None:
    # The certificate names key([hash]) for the same key bytes: not a tpm2 host.
    as_key = certs.issue_host_certificate(POLICY, POLICY_CERT, QUOTE_DER, now_ns=NOW)
    with pytest.raises(AuthenticationError, match="another principal"):
        validate(quoted(statement(), root_endorsement=as_key), now_ns=NOW, policy_cert=POLICY_CERT)


def test_no_root_endorsement_is_refused_against_a_policy() -> None:
    with pytest.raises(AuthenticationError, match="no root endorsement"):
        validate(quoted(statement(), root_endorsement=None), now_ns=NOW, policy_cert=POLICY_CERT)


@pytest.mark.parametrize(
    ("speaker", "error"),
    [
        (tpm2_principal(QUOTE_DER), "is not tpm2"),
        (tpm2_principal(QUOTE_DER).extend(auth.PrinExt("Program", ())), "is not tpm2"),
        (
            tpm2_principal(QUOTE_DER).extend(auth.PrinExt("Program", ()), pcrs_ext(PCRS)),
            "is not tpm2",
        ),
        (auth.principal_for_key("key", QUOTE_DER).extend(pcrs_ext(PCRS)), "is not tpm2"),
        (host_name(der(OTHER_ECC_KEY), PCRS), "is not tpm2"),
        (
            tpm2_principal(QUOTE_DER).extend(auth.PrinExt("PCRs", (auth.Str("7,1"),))),
            "the speaker's PCRs extension",
        ),
    ],
    ids=["no PCRs", "no PCRs, a program", "PCRs not first", "key type", "another key", "bad PCRs"],
)
def test_a_tpm2_signer_speaks_only_as_tpm2_key_pcrs(speaker: auth.Prin, error: str) -> None:
    # Each quote is good: over SHA-256 of its statement and the PCRS it would name.
    with pytest.raises(AuthenticationError, match=error):
        validate(quoted(statement(speaker)), now_ns=NOW, policy_cert=UNROOTED)


def test_the_statement_is_what_the_quote_covers() -> None:
    att = quoted(statement())
    # Another statement under the same quote: extraData is SHA-256 of the original.
    other = statement(PROGRAM, auth.Pred("Ready", (auth.Str("later"),)))
    with pytest.raises(AuthenticationError, match="extraData"):
        validate(attrs.evolve(att, serialized_statement=other), now_ns=NOW, policy_cert=UNROOTED)
    # A quote over other PCRs than the speaker names.
    moved = quoted(statement(), pcrs={**PCRS, 16: b"\xff" * 32})
    with pytest.raises(AuthenticationError, match="PCR digest"):
        validate(moved, now_ns=NOW, policy_cert=UNROOTED)
    # The quote key swapped for another: its name is not the speaker's.
    swapped = attrs.evolve(att, signer_key=der(OTHER_ECC_KEY))
    with pytest.raises(AuthenticationError, match="is not tpm2"):
        validate(swapped, now_ns=NOW, policy_cert=UNROOTED)
    with pytest.raises(AuthenticationError, match="no quote"):
        validate(attrs.evolve(att, tpm2_quote_structure=None), now_ns=NOW, policy_cert=UNROOTED)


def test_the_tpm2_signer_type_is_built_in_and_cannot_be_replaced() -> None:
    from taonet.attestation import SignerType, register_signer_type

    lax = SignerType(verify=lambda att: None, principal=lambda der: tpm2_principal(der))
    with pytest.raises(ValueError, match="already registered"):
        register_signer_type("tpm2", lax)


def test_the_signer_types_plain_verify_checks_the_same() -> None:
    # SignerType.verify (without the decoded statement) decodes it and checks alike.
    from taonet.attestation._tpm2 import SIGNER_TYPE

    att = quoted(statement())
    SIGNER_TYPE.verify(att)
    assert SIGNER_TYPE.principal(QUOTE_DER) == tpm2_principal(QUOTE_DER)
    with pytest.raises(AuthenticationError, match="malformed statement"):
        SIGNER_TYPE.verify(attrs.evolve(att, serialized_statement=b"\x00"))
    moved = quoted(statement(), pcrs={**PCRS, 16: b"\xff" * 32})
    with pytest.raises(AuthenticationError, match="PCR digest"):
        SIGNER_TYPE.verify(moved)
    with pytest.raises(AuthenticationError, match="malformed"):
        SIGNER_TYPE.principal(b"not a key")


def test_an_rsa_3072_quote_key_is_accepted() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from tests.attestation.tpm2_quotes import rsa_tpmt

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    key_der = der(key)
    stmt = statement(host_name(key_der, PCRS))
    attest_bytes = QuoteFields(extra_data=hashlib.sha256(stmt).digest()).to_bytes()
    sig = rsa_tpmt(key.sign(attest_bytes, padding.PKCS1v15(), hashes.SHA256()))
    att = tpm2_attestation(stmt, key_der, attest_bytes, sig)
    assert validate(att, now_ns=NOW, policy_cert=UNROOTED).signer == tpm2_principal(key_der)
