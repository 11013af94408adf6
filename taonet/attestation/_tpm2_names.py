"""TPM 2.0 host names: ``tpm2([sha256 PKIX]).PCRs("nums", "values")`` and their PCRs.

A TPM host is named by its quote key and the SHA-256-bank PCR values it booted with,
in the original's form: one ``PCRs`` extension whose first argument lists the PCR
numbers (decimal, ascending, comma-joined) and whose second lists their values
(lower-case hex, comma-joined). Also the marshaled TPML_PCR_SELECTION and pcrDigest a
quote over those PCRs carries, and, remembered per name, the exact bytes that end a
good quote over them (what the quote verifier compares).
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Final

from taonet import auth
from taonet._errors import CodecError

__all__ = [
    "DEFAULT_PCRS",
    "NUM_PCRS",
    "PCR_BANK_SHA256",
    "host_name",
    "host_pcrs",
    "parse_pcrs_ext",
    "pcr_digest",
    "pcr_selection_bytes",
    "pcrs_ext",
    "tpm2_principal",
]

#: TPM_ALG_SHA256: the only PCR bank taonet names and verifies.
PCR_BANK_SHA256: Final = 0x000B
#: The PCRs a TPM host is named by unless told otherwise (SHA-256 bank): firmware (0),
#: firmware configuration (1), option ROMs (2, 3), boot loader (4) and secure boot
#: state (7), what a modern machine measures. The original's 17 and 18 are TXT only.
DEFAULT_PCRS: Final = (0, 1, 2, 3, 4, 7)
#: PCRs 0..23: the PC Client platform's PCR count.
NUM_PCRS: Final = 24
_CACHED: Final = 1024

# PCR numbers as the original writes them: decimal without leading zeros.
_PCR_NUMBER: Final = re.compile(r"0|[1-9][0-9]?")
_PCR_VALUE: Final = re.compile(r"[0-9a-f]{64}")

#: What a verifier expects at the end of a quote: (TPML_PCR_SELECTION || TPM2B
#: pcrDigest as bytes, the PCR numbers, the digest).
Expected = tuple[bytes, tuple[int, ...], bytes]


def _check_pcr_number(pcr: object) -> int:
    if type(pcr) is not int or not 0 <= pcr < NUM_PCRS:
        raise ValueError(f"PCR numbers are ints from 0 to {NUM_PCRS - 1}, not {pcr!r}")
    return pcr


def _check_pcr_value(pcr: int, value: object) -> bytes:
    # bytes(32) would be 32 zero bytes: only bytes-like values are values.
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != 32:
        what = (
            f"{len(value)} bytes"
            if isinstance(value, bytes | bytearray | memoryview)
            else (f"a {type(value).__name__}")
        )
        raise ValueError(f"PCR {pcr}: a SHA-256 bank value is 32 bytes, not {what}")
    return bytes(value)


def _checked_pcrs(pcrs: Mapping[int, bytes]) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    numbers = sorted(_check_pcr_number(p) for p in pcrs)
    if not numbers:
        raise ValueError("a TPM host is named by at least one PCR")
    return tuple(numbers), tuple(_check_pcr_value(p, pcrs[p]) for p in numbers)


def normal_pcr_items(pcrs: Mapping[int, bytes]) -> tuple[tuple[int, bytes], ...]:
    """``pcrs`` checked and as ((number, bytes value), ...) ascending: a safe cache key.

    ValueError for no PCRs, a number that is not an int (bool included) from 0 to 23,
    or a value that is not bytes-like of 32 bytes.
    """
    # The common case in one pass (exact ints and 32-byte bytes), since a verifier
    # calls this for every quote; anything else takes the full check and its message.
    if type(pcrs) is dict and pcrs:
        for number, value in pcrs.items():
            if (
                type(number) is not int
                or not 0 <= number < NUM_PCRS
                or type(value) is not bytes
                or len(value) != 32
            ):
                break
        else:
            return tuple(sorted(pcrs.items()))
    numbers, values = _checked_pcrs(pcrs)
    return tuple(zip(numbers, values, strict=True))


def pcrs_ext(pcrs: Mapping[int, bytes]) -> auth.PrinExt:
    """``PCRs("0,1,7", "hex,hex,hex")``: PCR numbers ascending and their SHA-256 values.

    ValueError for no PCRs, a number outside 0..23 or a value that is not 32 bytes.
    """
    numbers, values = _checked_pcrs(pcrs)
    return auth.PrinExt(
        "PCRs",
        (
            auth.Str(",".join(str(p) for p in numbers)),
            auth.Str(",".join(v.hex() for v in values)),
        ),
    )


@functools.lru_cache(maxsize=_CACHED)
def _pcrs_from_text(numbers: str, values: str) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    # A pure function of the two strings; remembered (errors are not).
    if len(numbers) > 3 * NUM_PCRS or len(values) > 65 * NUM_PCRS:
        raise CodecError("PCRs extension: longer than 24 PCRs")
    nums = numbers.split(",")
    vals = values.split(",")
    if len(nums) != len(vals):
        raise CodecError(f"PCRs extension: {len(nums)} PCR numbers but {len(vals)} values")
    out: list[int] = []
    for n in nums:
        if not _PCR_NUMBER.fullmatch(n) or int(n) >= NUM_PCRS:
            raise CodecError(f"PCRs extension: {n[:8]!r} is not a PCR number from 0 to 23")
        if out and int(n) <= out[-1]:
            raise CodecError("PCRs extension: PCR numbers must be ascending, each once")
        out.append(int(n))
    for v in vals:
        if not _PCR_VALUE.fullmatch(v):
            raise CodecError("PCRs extension: a value is not 64 lower-case hex digits")
    return tuple(out), tuple(bytes.fromhex(v) for v in vals)


def pcrs_ext_text(ext: auth.PrinExt) -> tuple[str, str]:
    """The two strings of a ``PCRs(numbers, values)`` extension; CodecError otherwise."""
    if ext.name != "PCRs":
        raise CodecError(f"expected a PCRs extension, not {ext.name[:32]!r}")
    args = ext.args
    if len(args) != 2 or not isinstance(args[0], auth.Str) or not isinstance(args[1], auth.Str):
        raise CodecError("PCRs extension: expected two strings, PCR numbers and values")
    return args[0].value, args[1].value


def parse_pcrs_ext(ext: auth.PrinExt) -> dict[int, bytes]:
    """The PCR values a ``PCRs(...)`` extension names; CodecError on any other form.

    Only the canonical form reads: numbers 0..23 in decimal, ascending, each once;
    values 64 lower-case hex digits; as many values as numbers; at least one.
    """
    numbers, values = _pcrs_from_text(*pcrs_ext_text(ext))
    return dict(zip(numbers, values, strict=True))


def tpm2_principal(quote_key_der: bytes) -> auth.Prin:
    """``tpm2([sha256 of the quote key's PKIX DER])``: the quote key's principal."""
    return auth.principal_for_key("tpm2", quote_key_der)


def host_name(quote_key_der: bytes, pcrs: Mapping[int, bytes]) -> auth.Prin:
    """``tpm2([sha256 PKIX]).PCRs("nums", "values")``: a TPM host's name."""
    return tpm2_principal(quote_key_der).extend(pcrs_ext(pcrs))


def host_pcrs(name: auth.Prin) -> dict[int, bytes] | None:
    """The PCRs of a name ``tpm2(..).PCRs(..)[...]``; None for a name of another form.

    CodecError when the first extension is ``PCRs`` but not in the canonical form.
    """
    exts = name.ext.exts
    if name.type != "tpm2" or not exts or exts[0].name != "PCRs":
        return None
    return parse_pcrs_ext(exts[0])


def pcr_selection_bytes(pcrs: Iterable[int]) -> bytes:
    """Marshaled TPML_PCR_SELECTION of one SHA-256 bank (sizeofSelect 3) over ``pcrs``."""
    bitmap = 0
    for p in pcrs:
        bitmap |= 1 << _check_pcr_number(p)
    return struct.pack(">IHB", 1, PCR_BANK_SHA256, 3) + bitmap.to_bytes(3, "little")


def pcr_digest(pcrs: Mapping[int, bytes]) -> bytes:
    """SHA-256 of the PCR values in ascending PCR order: a quote's pcrDigest."""
    return hashlib.sha256(b"".join(_checked_pcrs(pcrs)[1])).digest()


def _expected(numbers: tuple[int, ...], values: tuple[bytes, ...]) -> Expected:
    digest = hashlib.sha256(b"".join(values)).digest()
    return pcr_selection_bytes(numbers) + b"\x00\x20" + digest, numbers, digest


@functools.lru_cache(maxsize=_CACHED)
def expected_for_text(numbers: str, values: str) -> Expected:
    """What ends a good quote over a ``PCRs(numbers, values)`` extension's PCRs."""
    return _expected(*_pcrs_from_text(numbers, values))


@functools.lru_cache(maxsize=_CACHED)
def expected_for_items(items: tuple[tuple[int, bytes], ...]) -> Expected:
    """What ends a good quote over the PCRs ``items`` (number, value); ValueError if bad.

    Cached by ``items``: give it :func:`normal_pcr_items` (``True`` == 1 == 1.0 as
    keys, so unchecked items could reuse another map's entry).
    """
    return _expected(*_checked_pcrs(dict(items)))
