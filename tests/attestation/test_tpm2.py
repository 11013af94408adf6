"""The pure-Python TPM 2.0 quote verifier: each attack correctly signed, wrong in one field."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError
from taonet.attestation import tpm2
from taonet.attestation.tpm2 import (
    PCR_BANK_SHA256,
    Quote,
    parse_quote,
    pcr_digest,
    verify_quote,
)
from tests.attestation.tpm2_quotes import (
    DIGEST_INFO_SHA1,
    DIGEST_INFO_SHA256,
    ECC_KEY,
    ECDSA,
    OTHER_ECC_KEY,
    PCRS,
    RSA_KEY,
    RSAPSS,
    RSASSA,
    SHA1,
    SHA256,
    SHA384,
    QuoteFields,
    bank,
    der,
    ecdsa_signature,
    pkcs1_block,
    pss_block,
    raw_rsa,
    rsa_tpmt,
    rsassa_signature,
    tpm2b,
)

EXTRA = hashlib.sha256(b"the serialized statement").digest()
ECC_DER = der(ECC_KEY)
RSA_DER = der(RSA_KEY)
GOOD = QuoteFields(extra_data=EXTRA)


def ecc_quote(fields: QuoteFields = GOOD) -> tuple[bytes, bytes]:
    attest = fields.to_bytes()
    return attest, ecdsa_signature(ECC_KEY, attest)


# ------------------------------------------------------------------ parsing


def test_parse_reads_every_field() -> None:
    fields = attrs.evolve(GOOD, safe=0, qualified_signer=b"\x40\x00\x00\x01")
    quote = parse_quote(fields.to_bytes())
    assert quote == Quote(
        qualified_signer=b"\x40\x00\x00\x01",
        extra_data=EXTRA,
        clock=fields.clock,
        reset_count=fields.reset_count,
        restart_count=fields.restart_count,
        safe=False,
        firmware_version=fields.firmware_version,
        pcr_select=tuple(sorted(PCRS)),
        pcr_digest=pcr_digest(PCRS),
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"magic": 0xFF544348}, "magic"),
        ({"type": 0x8017}, "type 0x8017"),  # a certify structure, not a quote
        ({"qualified_signer": b"\x00" * 67}, "qualifiedSigner of 67 bytes is over 66"),
        ({"extra_data": b"\x00" * 65}, "extraData of 65 bytes is over 64"),
        ({"safe": 2}, "safe is 2"),
        ({"banks": ()}, "0 PCR banks"),
        ({"banks": (bank([0]),) * 17}, "17 PCR banks is over 16"),
        ({"banks": (bank([0]), bank([1], alg=SHA1))}, "2 PCR banks"),
        ({"banks": (bank([0], alg=SHA1),)}, "bank 0x0004 is not SHA-256"),
        ({"banks": (bank([0], alg=SHA384),)}, "bank 0x000c is not SHA-256"),
        ({"banks": (bank([0], size=5),)}, "sizeofSelect 5 is over 4"),
        ({"pcr_digest": b"\x00" * 65}, "pcrDigest of 65 bytes is over 64"),
    ],
)
def test_parse_refuses_each_bad_field(change: dict[str, object], error: str) -> None:
    with pytest.raises(CodecError, match=error):
        parse_quote(attrs.evolve(GOOD, **change).to_bytes())  # type: ignore[arg-type]


def test_parse_refuses_truncated_padded_and_oversized() -> None:
    good = GOOD.to_bytes()
    for cut in range(len(good)):
        with pytest.raises(CodecError):
            parse_quote(good[:cut])
    with pytest.raises(CodecError, match="1 bytes after the pcrDigest"):
        parse_quote(good + b"\x00")
    with pytest.raises(CodecError, match="over 343"):
        parse_quote(good + b"\x00" * 400)
    with pytest.raises(CodecError, match="expected bytes"):
        parse_quote("text")  # type: ignore[arg-type]


@given(st.binary(max_size=400))
def test_parse_of_random_bytes_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        parse_quote(data)


@given(st.binary(max_size=400), st.integers(0, 12))
def test_parse_of_random_bytes_after_a_good_header(tail: bytes, header: int) -> None:
    prefix = struct.pack(">IH", 0xFF544347, 0x8018)[: max(header, 0)]
    with contextlib.suppress(CodecError):
        parse_quote(prefix + tail)


@given(st.data())
def test_parse_of_mutated_quotes_raises_only_codec_error(data: st.DataObject) -> None:
    good = bytearray(GOOD.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CodecError):
        parse_quote(bytes(good))


@given(st.binary(max_size=400), st.binary(max_size=600))
def test_verify_of_random_bytes_raises_only_authentication_error(attest: bytes, sig: bytes) -> None:
    for key in (ECC_DER, RSA_DER):
        with pytest.raises(AuthenticationError):
            verify_quote(key, attest, sig, extra_data=EXTRA, pcrs=PCRS)


# ------------------------------------------------------------------ verification


def test_a_good_ecc_quote_verifies_and_is_returned_parsed() -> None:
    attest, sig = ecc_quote()
    quote = verify_quote(ECC_DER, attest, sig, extra_data=EXTRA, pcrs=PCRS)
    assert quote == parse_quote(attest)
    # The same PCRs given in another order, and as another mapping type, are the same.
    again = verify_quote(
        ECC_DER, attest, sig, extra_data=EXTRA, pcrs=dict(reversed(list(PCRS.items())))
    )
    assert again == quote


def test_a_good_rsa_quote_verifies() -> None:
    attest = GOOD.to_bytes()
    quote = verify_quote(
        RSA_DER, attest, rsassa_signature(RSA_KEY, attest), extra_data=EXTRA, pcrs=PCRS
    )
    assert quote.extra_data == EXTRA


def test_obfuscated_counters_and_the_qualified_signer_are_not_compared() -> None:
    # resetCount, restartCount and firmwareVersion are obfuscated per key; the
    # qualifiedSigner needs the parent's qualified name (see the module docstring).
    fields = attrs.evolve(
        GOOD,
        reset_count=0xFFFFFFFF,
        restart_count=0,
        firmware_version=1,
        qualified_signer=b"\x00\x0b" + b"\xee" * 32,
        safe=0,
    )
    attest, sig = ecc_quote(fields)
    quote = verify_quote(ECC_DER, attest, sig, extra_data=EXTRA, pcrs=PCRS)
    assert quote.qualified_signer == b"\x00\x0b" + b"\xee" * 32
    assert (quote.reset_count, quote.restart_count, quote.firmware_version) == (0xFFFFFFFF, 0, 1)


OTHER_VALUE = {**PCRS, 7: b"\x78" * 32}
EXTRA_PCR = {**PCRS, 23: b"\x23" * 32}
MISSING_PCR = {p: v for p, v in PCRS.items() if p != 16}

#: (what, the quote's fields, the error): each quote is signed by the right key and
#: wrong in one field only, checked against EXTRA and PCRS.
ONE_FIELD_WRONG: list[tuple[str, QuoteFields, str]] = [
    (
        "other qualifying data",
        attrs.evolve(GOOD, extra_data=hashlib.sha256(b"another statement").digest()),
        "extraData differs",
    ),
    ("no qualifying data", attrs.evolve(GOOD, extra_data=b""), "extraData differs"),
    ("other PCR values", attrs.evolve(GOOD, pcrs=OTHER_VALUE), "PCR digest .* differs"),
    ("another PCR digest", attrs.evolve(GOOD, pcr_digest=b"\x01" * 32), "PCR digest"),
    ("a short PCR digest", attrs.evolve(GOOD, pcr_digest=pcr_digest(PCRS)[:31]), "PCR digest"),
    ("an extra PCR", attrs.evolve(GOOD, pcrs=EXTRA_PCR), "selection 0,1,7,16,23 differs"),
    ("a missing PCR", attrs.evolve(GOOD, pcrs=MISSING_PCR), "selection 0,1,7 differs"),
    (
        "another bank",
        attrs.evolve(GOOD, banks=(bank(sorted(PCRS), alg=SHA1),)),
        "bank 0x0004 is not SHA-256",
    ),
    (
        "a second bank",
        attrs.evolve(GOOD, banks=(bank(sorted(PCRS)), bank(sorted(PCRS), alg=SHA384))),
        "2 PCR banks",
    ),
    (
        "the selection encoded in 4 bytes",
        attrs.evolve(GOOD, banks=(bank(sorted(PCRS), size=4),)),
        "not encoded as expected",
    ),
    ("wrong magic", attrs.evolve(GOOD, magic=0), "magic 0x00000000"),
    ("wrong type", attrs.evolve(GOOD, type=0x8014), "type 0x8014"),  # TPM_ST_ATTEST_CERTIFY
    ("an unsafe-flag out of range", attrs.evolve(GOOD, safe=7), "safe is 7"),
]


@pytest.mark.parametrize(("what", "fields", "error"), ONE_FIELD_WRONG, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("alg", ["ecc", "rsa"])
def test_a_quote_wrong_in_one_field_is_refused(
    what: str, fields: QuoteFields, error: str, alg: str
) -> None:
    attest = fields.to_bytes()
    if alg == "ecc":
        key, sig = ECC_DER, ecdsa_signature(ECC_KEY, attest)
    else:
        key, sig = RSA_DER, rsassa_signature(RSA_KEY, attest)
    with pytest.raises(AuthenticationError, match=error):
        verify_quote(key, attest, sig, extra_data=EXTRA, pcrs=PCRS)


def test_truncated_and_padded_quotes_are_refused_though_re_signed() -> None:
    good = GOOD.to_bytes()
    for attest, error in [
        (good[:-1], "truncated in pcrDigest"),
        (good[:-33], "truncated in pcrDigest"),
        (good[:40], "truncated"),
        (good + b"\x00", "1 bytes after the pcrDigest"),
        (good + pcr_digest(PCRS), "32 bytes after the pcrDigest"),
    ]:
        with pytest.raises(AuthenticationError, match=error):
            verify_quote(
                ECC_DER, attest, ecdsa_signature(ECC_KEY, attest), extra_data=EXTRA, pcrs=PCRS
            )


def test_a_quote_signed_by_another_key_is_refused() -> None:
    attest = GOOD.to_bytes()
    with pytest.raises(AuthenticationError, match="does not verify under the quote key"):
        verify_quote(
            ECC_DER, attest, ecdsa_signature(OTHER_ECC_KEY, attest), extra_data=EXTRA, pcrs=PCRS
        )
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_quote(
            RSA_DER, attest, rsassa_signature(other_rsa, attest), extra_data=EXTRA, pcrs=PCRS
        )


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


ATTEST = GOOD.to_bytes()
SIZE = RSA_KEY.key_size // 8

#: RSA signatures made with the private key's raw operation over hand-made blocks.
BAD_PADDING: list[tuple[str, Callable[[], bytes]]] = [
    ("no DigestInfo", lambda: pkcs1_block(_sha256(ATTEST), SIZE)),
    ("a SHA-1 DigestInfo", lambda: pkcs1_block(DIGEST_INFO_SHA1 + _sha256(ATTEST)[:20], SIZE)),
    (
        "the SHA-1 DigestInfo of SHA-1",
        lambda: pkcs1_block(DIGEST_INFO_SHA1 + hashlib.sha1(ATTEST).digest(), SIZE),
    ),
    (
        "padding of 0x00",
        lambda: pkcs1_block(DIGEST_INFO_SHA256 + _sha256(ATTEST), SIZE, pad_byte=0),
    ),
    (
        "padding of 0xfe",
        lambda: pkcs1_block(DIGEST_INFO_SHA256 + _sha256(ATTEST), SIZE, pad_byte=0xFE),
    ),
    ("block type 2", lambda: pkcs1_block(DIGEST_INFO_SHA256 + _sha256(ATTEST), SIZE, block_type=2)),
    (
        "garbage after the digest",
        lambda: pkcs1_block(DIGEST_INFO_SHA256 + _sha256(ATTEST) + b"\x00" * 8, SIZE),
    ),
    ("the digest right-aligned in zeros", lambda: _sha256(ATTEST).rjust(SIZE, b"\x00")),
    ("a PSS encoding", lambda: pss_block(RSA_KEY, ATTEST)),
]


def test_the_raw_rsa_helper_makes_a_good_signature_from_a_good_block() -> None:
    block = pkcs1_block(DIGEST_INFO_SHA256 + _sha256(ATTEST), SIZE)
    sig = rsa_tpmt(raw_rsa(RSA_KEY, block))
    assert verify_quote(RSA_DER, ATTEST, sig, extra_data=EXTRA, pcrs=PCRS).extra_data == EXTRA


@pytest.mark.parametrize(("what", "block"), BAD_PADDING, ids=[w for w, _ in BAD_PADDING])
def test_an_rsa_signature_with_bad_padding_is_refused(
    what: str, block: Callable[[], bytes]
) -> None:
    sig = rsa_tpmt(raw_rsa(RSA_KEY, block()))
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_quote(RSA_DER, ATTEST, sig, extra_data=EXTRA, pcrs=PCRS)


@pytest.mark.parametrize(
    ("key", "sig", "error"),
    [
        (RSA_DER, ecdsa_signature(ECC_KEY, ATTEST), "ECDSA does not fit the RSA quote key"),
        (ECC_DER, rsassa_signature(RSA_KEY, ATTEST), "RSASSA does not fit the ECC P-256"),
        (
            RSA_DER,
            rsassa_signature(RSA_KEY, ATTEST, alg=RSAPSS),
            "RSAPSS does not fit the RSA quote key",
        ),
        (RSA_DER, rsa_tpmt(raw_rsa(RSA_KEY, pss_block(RSA_KEY, ATTEST)), alg=RSAPSS), "RSAPSS"),
        (ECC_DER, ecdsa_signature(ECC_KEY, ATTEST, alg=0x001A), "0x001a does not fit"),
        (ECC_DER, ecdsa_signature(ECC_KEY, ATTEST, hash_alg=SHA1), "hash 0x0004 is not SHA-256"),
        (RSA_DER, rsassa_signature(RSA_KEY, ATTEST, hash_alg=SHA384), "hash 0x000c"),
        (ECC_DER, ecdsa_signature(ECC_KEY, ATTEST) + b"\x00", "trailing bytes"),
        (ECC_DER, ecdsa_signature(ECC_KEY, ATTEST)[:-1], "malformed ECDSA s"),
        (ECC_DER, ecdsa_signature(ECC_KEY, ATTEST)[:5], "not a TPMT_SIGNATURE"),
        (RSA_DER, rsassa_signature(RSA_KEY, ATTEST) + b"\x00", "RSASSA signature size"),
        (RSA_DER, rsassa_signature(RSA_KEY, ATTEST)[:-1], "RSASSA signature size"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_signature_that_does_not_fit_is_refused(key: bytes, sig: bytes, error: str) -> None:
    with pytest.raises(AuthenticationError, match=error):
        verify_quote(key, ATTEST, sig, extra_data=EXTRA, pcrs=PCRS)


def test_ecdsa_r_padded_past_the_curve_size_is_refused() -> None:
    # Same r and s, other bytes: a 33-byte r would make the signature malleable.
    sig = ecdsa_signature(ECC_KEY, ATTEST)
    padded = sig[:4] + tpm2b(b"\x00" + sig[6:38]) + sig[38:]
    with pytest.raises(AuthenticationError, match="malformed ECDSA r"):
        verify_quote(ECC_DER, ATTEST, padded, extra_data=EXTRA, pcrs=PCRS)


def test_short_r_and_s_as_a_tpm_may_send_them_verify() -> None:
    # r and s are integers: a TPM2B without leading zero bytes is the same value.
    for _ in range(64):
        attest = attrs.evolve(GOOD, clock=_).to_bytes()
        sig = ecdsa_signature(ECC_KEY, attest)
        r, s = sig[6:38], sig[40:72]
        short = sig[:4] + tpm2b(r.lstrip(b"\x00")) + tpm2b(s.lstrip(b"\x00"))
        verify_quote(ECC_DER, attest, short, extra_data=EXTRA, pcrs=PCRS)


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (der(ec.generate_private_key(ec.SECP384R1())), "curve secp384r1 is not P-256"),
        (der(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "RSA-1024"),
        (
            der(ed25519.Ed25519PrivateKey.generate()),  # type: ignore[arg-type]
            "not an ECC P-256 or RSA key",
        ),
        (b"\x30\x03\x02\x01\x00", "malformed"),
        (b"\x00" * 5000, "over 2048"),
    ],
    ids=["p384", "rsa1024", "ed25519", "garbage", "oversized"],
)
def test_a_quote_key_of_another_kind_is_refused(key: bytes, error: str) -> None:
    attest, sig = ecc_quote()
    with pytest.raises(AuthenticationError, match=error):
        verify_quote(key, attest, sig, extra_data=EXTRA, pcrs=PCRS)


def test_the_checks_run_in_the_documented_order() -> None:
    # Wrong everywhere at once: the first failing check is named.
    both = attrs.evolve(GOOD, extra_data=b"x", pcrs=EXTRA_PCR)
    attest = both.to_bytes()
    with pytest.raises(AuthenticationError, match="extraData"):
        verify_quote(
            ECC_DER, attest, ecdsa_signature(OTHER_ECC_KEY, attest), extra_data=EXTRA, pcrs=PCRS
        )
    attest = attrs.evolve(GOOD, pcrs=EXTRA_PCR).to_bytes()
    with pytest.raises(AuthenticationError, match="selection"):
        verify_quote(ECC_DER, attest, b"", extra_data=EXTRA, pcrs=PCRS)
    attest = attrs.evolve(GOOD, magic=1, extra_data=b"x").to_bytes()
    with pytest.raises(AuthenticationError, match="magic"):
        verify_quote(ECC_DER, attest, b"", extra_data=EXTRA, pcrs=PCRS)


def test_expected_pcrs_that_are_not_a_pcr_map_are_a_value_error() -> None:
    attest, sig = ecc_quote()
    with pytest.raises(ValueError, match="32 bytes"):
        verify_quote(ECC_DER, attest, sig, extra_data=EXTRA, pcrs={0: b"short"})


def test_the_public_namespace() -> None:
    assert set(tpm2.__all__) >= {
        "DEFAULT_PCRS",
        "PCR_BANK_SHA256",
        "Quote",
        "host_name",
        "host_pcrs",
        "parse_pcrs_ext",
        "parse_quote",
        "pcr_digest",
        "pcr_selection_bytes",
        "pcrs_ext",
        "tpm2_attestation",
        "tpm2_principal",
        "verify_quote",
    }
    for name in tpm2.__all__:
        if not name.isupper():
            assert getattr(tpm2, name).__module__ == "taonet.attestation.tpm2", name
    assert ECDSA == 0x0018
    assert RSASSA == 0x0014
    assert SHA256 == PCR_BANK_SHA256


@given(
    st.binary(max_size=66),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 1),
    st.integers(0, 2**64 - 1),
)
def test_a_good_quote_with_any_other_fields_is_returned_as_parsed(
    signer: bytes, clock: int, resets: int, safe: int, firmware: int
) -> None:
    # The fast path and the full parser agree on every field they both read.
    fields = attrs.evolve(
        GOOD,
        qualified_signer=signer,
        clock=clock,
        reset_count=resets,
        restart_count=resets ^ 0xFFFFFFFF,
        safe=safe,
        firmware_version=firmware,
    )
    attest, sig = ecc_quote(fields)
    assert verify_quote(ECC_DER, attest, sig, extra_data=EXTRA, pcrs=PCRS) == parse_quote(attest)


def test_values_that_are_not_bytes_are_refused() -> None:
    attest, sig = ecc_quote()
    with pytest.raises(AuthenticationError, match="expected bytes"):
        verify_quote(ECC_DER.hex(), attest, sig, extra_data=EXTRA, pcrs=PCRS)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="expected bytes"):
        verify_quote(ECC_DER, attest.hex(), sig, extra_data=EXTRA, pcrs=PCRS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected bytes"):
        verify_quote(ECC_DER, attest, sig, extra_data=32, pcrs=PCRS)  # type: ignore[arg-type]
    # bytearray and memoryview are bytes enough.
    loose: Any = verify_quote
    loose(bytearray(ECC_DER), memoryview(attest), bytearray(sig), extra_data=EXTRA, pcrs=PCRS)
