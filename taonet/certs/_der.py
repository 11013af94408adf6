"""The bytes of a signed X.509 object that its signature does not cover.

A certificate and a CRL are both ``SEQUENCE { tbs, signatureAlgorithm,
signatureValue BIT STRING }``: the signature covers ``tbs`` only. A parser that
accepts several encodings of the other two fields, or an outer algorithm that
differs from the one inside ``tbs``, lets different bytes pass for the same signed
object (a CRL with its BIT STRING's unused-bits count changed from 0 to 1 was
accepted as valid). :func:`check_envelope` accepts exactly one encoding: DER with
minimal lengths and nothing after it, the outer algorithm byte-identical to the
signed one and to the one the policy key uses, and no unused bits.

Only the few definite-length, single-byte-tag elements of that envelope are read
here; ``cryptography`` parses the rest.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from taonet._errors import AuthenticationError, CodecError

__all__ = [
    "ALGORITHM_NAMES",
    "ECDSA_WITH_SHA256",
    "ECDSA_WITH_SHA384",
    "TAG_BIT_STRING",
    "TAG_CONTEXT_0",
    "TAG_INTEGER",
    "TAG_SEQUENCE",
    "Envelope",
    "check_envelope",
    "elements",
    "encode",
    "read",
    "split",
]

TAG_INTEGER: Final = 0x02
TAG_BIT_STRING: Final = 0x03
TAG_SEQUENCE: Final = 0x30
TAG_CONTEXT_0: Final = 0xA0  # [0] EXPLICIT, constructed

#: AlgorithmIdentifier DER of ecdsa-with-SHA256 and -SHA384 (RFC 5758: no parameters).
ECDSA_WITH_SHA256: Final = bytes.fromhex("300a06082a8648ce3d040302")
ECDSA_WITH_SHA384: Final = bytes.fromhex("300a06082a8648ce3d040303")
ALGORITHM_NAMES: Final = {
    ECDSA_WITH_SHA256: "ecdsa-with-SHA256",
    ECDSA_WITH_SHA384: "ecdsa-with-SHA384",
}


def read(data: bytes, pos: int = 0) -> tuple[int, int, int]:
    """Read one DER element at ``pos``: (tag, start of its content, end of the element).

    CodecError unless the tag is a single byte and the length is definite, in its
    shortest form and within ``data``.
    """
    if pos + 2 > len(data):
        raise CodecError("DER: truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise CodecError("DER: multi-byte tags are not expected here")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise CodecError("DER: indefinite or oversized length")
        if pos + count > len(data):
            raise CodecError("DER: truncated length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise CodecError("DER: length not in its shortest form")
        pos += count
    if length > len(data) - pos:
        raise CodecError("DER: element runs past the end")
    return tag, pos, pos + length


def elements(content: bytes) -> list[tuple[int, bytes]]:
    """Split the content of a constructed element into (tag, whole element bytes)."""
    out = []
    pos = 0
    while pos < len(content):
        tag, _, end = read(content, pos)
        out.append((tag, content[pos:end]))
        pos = end
    return out


def encode(tag: int, content: bytes) -> bytes:
    """One DER element: ``tag``, the shortest length, ``content``."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


class Envelope(NamedTuple):
    """The three parts of a signed X.509 object."""

    tbs: bytes
    #: The AlgorithmIdentifier inside ``tbs`` (covered by the signature).
    inner_algorithm: bytes
    #: The AlgorithmIdentifier after ``tbs`` (not covered).
    outer_algorithm: bytes
    unused_bits: int
    signature: bytes


def split(der: bytes) -> Envelope:
    """Split a certificate or CRL; CodecError if it is not one DER SEQUENCE of three parts."""
    tag, start, end = read(der)
    if tag != TAG_SEQUENCE or end != len(der):
        raise CodecError("not a single DER SEQUENCE")
    parts = elements(der[start:end])
    if [t for t, _ in parts] != [TAG_SEQUENCE, TAG_SEQUENCE, TAG_BIT_STRING]:
        raise CodecError("not SEQUENCE { tbs, algorithm, signature BIT STRING }")
    tbs, outer, bits = (b for _, b in parts)
    _, bits_start, _ = read(bits)
    if bits_start == len(bits):
        raise CodecError("empty signature BIT STRING")
    # TBSCertificate starts [0] version, serialNumber; TBSCertList an optional
    # version INTEGER: the first SEQUENCE after those is the signed algorithm.
    _, tbs_start, tbs_end = read(tbs)
    inner = b""
    for inner_tag, element in elements(tbs[tbs_start:tbs_end])[:3]:
        if inner_tag == TAG_SEQUENCE:
            inner = element
            break
        if inner_tag not in (TAG_CONTEXT_0, TAG_INTEGER):
            break
    if not inner:
        raise CodecError("no signature algorithm in the signed part")
    return Envelope(
        tbs=tbs,
        inner_algorithm=inner,
        outer_algorithm=outer,
        unused_bits=bits[bits_start],
        signature=bits[bits_start + 1 :],
    )


def check_envelope(der: bytes, expected_algorithm: bytes, *, what: str) -> Envelope:
    """The envelope of ``der``; AuthenticationError unless it is the one canonical encoding.

    Canonical: DER with shortest lengths and nothing after the SEQUENCE, a
    signature BIT STRING with no unused bits, and the outer algorithm the same
    bytes as the signed one and as ``expected_algorithm``.
    """
    try:
        envelope = split(der)
    except CodecError as exc:
        raise AuthenticationError(f"{what} is not canonical DER: {exc}") from None
    if envelope.unused_bits != 0:
        raise AuthenticationError(
            f"{what} signature BIT STRING declares {envelope.unused_bits} unused bits "
            "(only 0 is canonical)"
        )
    if envelope.outer_algorithm != envelope.inner_algorithm:
        raise AuthenticationError(f"{what} outer signature algorithm differs from the signed one")
    if envelope.inner_algorithm != expected_algorithm:
        name = ALGORITHM_NAMES.get(expected_algorithm, "the expected algorithm")
        raise AuthenticationError(
            f"{what} is not signed with {name}, the algorithm of this domain's policy key"
        )
    return envelope
