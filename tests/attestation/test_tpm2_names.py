"""TPM 2.0 host names: tpm2([key]).PCRs("nums", "values"), PCR selections and digests."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, auth
from taonet.attestation.tpm2 import (
    DEFAULT_PCRS,
    PCR_BANK_SHA256,
    host_name,
    host_pcrs,
    parse_pcrs_ext,
    pcr_digest,
    pcr_selection_bytes,
    pcrs_ext,
    tpm2_principal,
)
from tests.attestation.tpm2_quotes import ECC_KEY, PCRS, RSA_KEY, der

ECC_DER = der(ECC_KEY)
RSA_DER = der(RSA_KEY)


def test_host_name_is_the_originals_form() -> None:
    name = host_name(ECC_DER, {18: b"\xcd" * 32, 17: b"\xab" * 32})
    digest = hashlib.sha256(ECC_DER).hexdigest()
    assert str(name) == f'tpm2([{digest}]).PCRs("17,18", "{"ab" * 32},{"cd" * 32}")'
    assert name == tpm2_principal(ECC_DER).extend(pcrs_ext({17: b"\xab" * 32, 18: b"\xcd" * 32}))
    assert auth.parse_prin(str(name)) == name
    assert auth.decode_prin(auth.encode(name)) == name


def test_tpm2_principal_hashes_the_pkix_key() -> None:
    assert tpm2_principal(ECC_DER) == auth.Prin(
        "tpm2", auth.Bytes(hashlib.sha256(ECC_DER).digest())
    )


def test_default_pcrs_and_their_selection_bytes() -> None:
    assert DEFAULT_PCRS == (0, 1, 2, 3, 4, 7)
    assert PCR_BANK_SHA256 == 0x000B
    # count 1, TPM_ALG_SHA256, sizeofSelect 3, bitmap little-endian by byte.
    assert pcr_selection_bytes(DEFAULT_PCRS) == bytes.fromhex("00000001000b039f0000")
    assert pcr_selection_bytes([16, 23]) == bytes.fromhex("00000001000b03000081")
    with pytest.raises(ValueError, match="0 to 23"):
        pcr_selection_bytes([24])


def test_pcr_digest_is_sha256_of_the_values_in_ascending_order() -> None:
    values = {7: b"\x07" * 32, 0: b"\x00" * 32}
    assert pcr_digest(values) == hashlib.sha256(b"\x00" * 32 + b"\x07" * 32).digest()


@given(
    st.dictionaries(
        st.integers(0, 23), st.binary(min_size=32, max_size=32), min_size=1, max_size=24
    )
)
def test_pcrs_round_trip_through_the_name(pcrs: dict[int, bytes]) -> None:
    name = host_name(RSA_DER, pcrs)
    assert host_pcrs(name) == pcrs
    assert host_pcrs(auth.parse_prin(str(name))) == pcrs
    assert parse_pcrs_ext(pcrs_ext(pcrs)) == pcrs
    # A program under the host still carries the host's PCRs.
    program = name.extend(auth.PrinExt("Program", (auth.Bytes(b"p"),)))
    assert host_pcrs(program) == pcrs


@pytest.mark.parametrize(
    "bad",
    [{}, {24: b"\x00" * 32}, {-1: b"\x00" * 32}, {0: b"\x00" * 31}, {True: b"\x00" * 32}],
)
def test_pcrs_ext_refuses_what_is_not_a_pcr_map(bad: dict[int, bytes]) -> None:
    with pytest.raises(ValueError, match="PCR"):
        pcrs_ext(bad)


V = "ab" * 32
W = "cd" * 32


@pytest.mark.parametrize(
    ("ext", "error"),
    [
        (auth.PrinExt("PCR", (auth.Str("1"), auth.Str(V))), "expected a PCRs extension"),
        (auth.PrinExt("PCRs", (auth.Str("1"),)), "two strings"),
        (auth.PrinExt("PCRs", (auth.Int(1), auth.Str(V))), "two strings"),
        (auth.PrinExt("PCRs", (auth.Str("1,2"), auth.Str(V))), "2 PCR numbers but 1 values"),
        (auth.PrinExt("PCRs", (auth.Str("2,1"), auth.Str(f"{V},{W}"))), "ascending"),
        (auth.PrinExt("PCRs", (auth.Str("1,1"), auth.Str(f"{V},{W}"))), "ascending"),
        (auth.PrinExt("PCRs", (auth.Str("01"), auth.Str(V))), "not a PCR number"),
        (auth.PrinExt("PCRs", (auth.Str("24"), auth.Str(V))), "not a PCR number"),
        (auth.PrinExt("PCRs", (auth.Str(" 1"), auth.Str(V))), "not a PCR number"),
        (auth.PrinExt("PCRs", (auth.Str(""), auth.Str(""))), "not a PCR number"),
        (auth.PrinExt("PCRs", (auth.Str("1"), auth.Str(V.upper()))), "lower-case hex"),
        (auth.PrinExt("PCRs", (auth.Str("1"), auth.Str(V[:-2]))), "lower-case hex"),
        (auth.PrinExt("PCRs", (auth.Str("1"), auth.Str("x" * 5000))), "longer than 24"),
    ],
)
def test_parse_pcrs_ext_reads_only_the_canonical_form(ext: auth.PrinExt, error: str) -> None:
    with pytest.raises(CodecError, match=error):
        parse_pcrs_ext(ext)


def test_host_pcrs_of_other_names_is_none() -> None:
    pcrs = pcrs_ext(PCRS)
    assert host_pcrs(auth.Prin("key", auth.Bytes(b"k"), (pcrs,))) is None
    assert host_pcrs(tpm2_principal(ECC_DER)) is None
    other_first = tpm2_principal(ECC_DER).extend(auth.PrinExt("Program", ()), pcrs)
    assert host_pcrs(other_first) is None
    with pytest.raises(CodecError):
        host_pcrs(tpm2_principal(ECC_DER).extend(auth.PrinExt("PCRs", (auth.Str("x"),))))
