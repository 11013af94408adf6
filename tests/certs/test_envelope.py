"""The bytes of a certificate or CRL that its signature does not cover have one encoding."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from taonet import AuthenticationError, CodecError, auth, certs
from taonet.certs._der import encode, read, split
from taonet.crypto import Signer
from taonet.testing import CertificateFactory

NOW = 1_800_000_000 * 10**9
FACTORY = CertificateFactory.generate(now_ns=NOW)
HOST_KEY = Signer.generate().public_key_der()
PROGRAM_KEY = Signer.generate().public_key_der()
PROGRAM = auth.key_principal(PROGRAM_KEY)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x30", "truncated element"),
        (b"\x30\x81\x05" + bytes(5), "shortest form"),  # 5 needs no long form
        (b"\x30\x82\x00\x80" + bytes(128), "shortest form"),  # leading zero octet
        (b"\x30\x80" + bytes(4), "indefinite"),
        (b"\x30\x85" + bytes(5), "indefinite or oversized"),
        (b"\x30\x05\x00", "runs past the end"),
        (b"\x1f\x01\x00", "multi-byte tags"),
    ],
)
def test_der_reader_is_strict(data: bytes, error: str) -> None:
    with pytest.raises(CodecError, match=error):
        read(data)


def test_der_encode_uses_the_shortest_length() -> None:
    for n in (0, 1, 127, 128, 255, 256, 70000):
        element = encode(0x04, bytes(n))
        tag, start, end = read(element)
        assert (tag, end - start, end) == (0x04, n, len(element))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x30\x00\x00", "not a single DER SEQUENCE"),  # something after it
        (encode(0x30, encode(0x30, b"") + encode(0x30, b"")), "not SEQUENCE { tbs"),
        (
            encode(0x30, encode(0x30, b"") + encode(0x30, b"") + encode(0x03, b"")),
            "empty signature",
        ),
        (
            encode(0x30, encode(0x30, encode(0x04, b"")) + encode(0x30, b"") + encode(0x03, b"\0")),
            "no signature algorithm",
        ),
    ],
)
def test_split_refuses_what_is_not_a_signed_object(data: bytes, error: str) -> None:
    with pytest.raises(CodecError, match=error):
        split(data)


def test_split_finds_both_algorithms() -> None:
    der = FACTORY.host_certificate(HOST_KEY, now_ns=NOW)
    envelope = split(der)
    assert envelope.inner_algorithm == envelope.outer_algorithm
    assert envelope.unused_bits == 0
    assert der == encode(
        0x30,
        envelope.tbs + envelope.outer_algorithm + encode(0x03, b"\0" + envelope.signature),
    )


def verifies(kind: str, der: bytes) -> bool:
    try:
        if kind == "host":
            FACTORY.anchor.verify_host_certificate(der, host_key_der=HOST_KEY, now_ns=NOW)
        else:
            certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW)
    except AuthenticationError:
        return False
    return True


def even_tailed(make: Callable[[], bytes]) -> bytes:
    """A certificate whose signature ends in three zero bits (so unused bits 1-3 parse)."""
    while True:
        der = make()
        if der[-1] & 0x07 == 0:
            return der


def certificate(kind: str) -> bytes:
    if kind == "host":
        return even_tailed(lambda: FACTORY.host_certificate(HOST_KEY, now_ns=NOW))
    return even_tailed(lambda: FACTORY.program_certificate(PROGRAM_KEY, PROGRAM, now_ns=NOW))


@pytest.mark.parametrize("kind", ["host", "program"])
def test_no_other_envelope_verifies(kind: str) -> None:
    # Every value of every byte after the signed part (outer algorithm, BIT STRING
    # header and signature), and three masks on every byte anywhere: only the
    # original verifies. Before, the BIT STRING unused-bits octet could read 1 to 3.
    der = certificate(kind)
    assert verifies(kind, der)
    tail = len(der) - len(split(der).signature) - 16
    for i in range(len(der)):
        values = range(256) if i >= tail else [der[i] ^ m for m in (0x01, 0x80, 0xFF)]
        for value in values:
            mutant = der[:i] + bytes([value]) + der[i + 1 :]
            assert not verifies(kind, mutant) or mutant == der, (i, value)
    assert not verifies(kind, der + b"\0")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["host", "program"])
def test_every_single_byte_mutant_is_refused(kind: str) -> None:
    der = certificate(kind)
    for i in range(len(der)):
        for value in range(256):
            mutant = der[:i] + bytes([value]) + der[i + 1 :]
            assert not verifies(kind, mutant) or mutant == der, (i, value)
