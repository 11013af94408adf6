"""TPM 2.0 quotes verified in pure Python: the built-in ``"tpm2"`` signer type.

A TPM 2.0 host is named ``tpm2([sha256 of the quote key's PKIX DER]).PCRs("0,1,7",
"hex,hex,hex")`` (see ``_tpm2_names``): the key that signs its quotes and the
SHA-256-bank PCR values it booted with (the original's form). It attests
by ``TPM2_Quote`` with qualifying data = SHA-256 of the serialized statement: the
attestation's ``tpm2_quote_structure`` is the TPMS_ATTEST the TPM signed, its
``signature`` the marshaled TPMT_SIGNATURE and its ``signer_key`` the quote key (PKIX
DER), under signer type ``"tpm2"``, which :mod:`taonet.attestation` knows built in:
verifying needs ``cryptography`` only, no TSS.

A quote is believed only if all of this holds (:func:`verify_quote`, in this order):
the TPMS_ATTEST parses with bounds (magic ``TPM_GENERATED_VALUE``, type
``TPM_ST_ATTEST_QUOTE``, every size bounded, one SHA-256 PCR bank, no trailing
bytes); its extraData is the expected qualifying data (constant-time compare); its
PCR selection is exactly the expected PCR numbers and its pcrDigest the SHA-256 of
the expected values in ascending order; and the signature verifies under the quote
key: ECDSA with SHA-256 for a P-256 key, RSASSA-PKCS1-v1_5 with SHA-256 (the whole
padding checked by ``cryptography``) for an RSA key of 2048, 3072 or 4096 bits with
public exponent 65537 (what a TPM makes; any other exponent only costs a verifier
time). A signature algorithm that does not fit the key is refused; so is any other
key type, and a key not in its canonical PKIX DER encoding (a compressed point, RSA
without NULL parameters, the RSASSA-PSS OID), since ``tpm2(hash)`` hashes the exact
bytes and one key must have one principal.

Not compared, on purpose:

* ``resetCount``, ``restartCount`` and ``firmwareVersion``: the TPM obfuscates them
  for keys outside the endorsement and platform hierarchies (they differ per key and
  look random). They are on :class:`Quote` for display only.
* ``qualifiedSigner``: the quote key's qualified name, nameAlg || H(QN(parent) ||
  Name(key)). Checking it needs the key's whole TPMT_PUBLIC and its parent's
  qualified name (which depends on the storage primary, so on the TPM's owner seed),
  none of which an attestation carries; and it would prove nothing the signature
  does not: only the holder of the quote key can sign. That the key is a restricted
  TPM key (so it signs only TPM-made structures starting with the magic value) is
  what its certificate from the domain's quote service vouches for (the service
  checks the key's attributes and binds them by ActivateCredential). It is exposed as
  :attr:`Quote.qualified_signer`.

Speed: a verifier checks the same few hosts over and over, so what depends only on a
quote key's bytes (its parsed key object, its principal) and on a name's PCRs
extension (the expected selection and digest, as the exact bytes that end a good
quote) is computed once and kept, for the last 1024 of each, keyed by the exact
bytes or text. Every check still runs on every call; per call the work is a bounded
parse, two constant-time compares and one signature verification.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import Final

import attrs

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet.attestation._attestation import Attestation, SignerType
from taonet.attestation._tpm2_keys import MAX_SIGNATURE_BYTES, Key, quote_key, verify_signature
from taonet.attestation._tpm2_names import (
    DEFAULT_PCRS,
    PCR_BANK_SHA256,
    Expected,
    expected_for_items,
    expected_for_text,
    host_name,
    host_pcrs,
    normal_pcr_items,
    parse_pcrs_ext,
    pcr_digest,
    pcr_selection_bytes,
    pcrs_ext,
    pcrs_ext_text,
    tpm2_principal,
)

__all__ = [
    "DEFAULT_PCRS",
    "MAX_QUOTE_BYTES",
    "MAX_SIGNATURE_BYTES",
    "PCR_BANK_SHA256",
    "SIGNER_TYPE",
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
]

#: Longest TPMS_ATTEST accepted: the largest well-formed quote is 4 + 2 + (2 + 66) +
#: (2 + 64) + 17 + 8 + 4 + 16 * 7 + (2 + 64) = 343 bytes.
MAX_QUOTE_BYTES: Final = 343

TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018
_HASH_COUNT: Final = 16  # TPML_PCR_SELECTION.count bound (HASH_COUNT)
_PCR_SELECT_MAX: Final = 4  # sizeofSelect bound (PCR_SELECT_MAX)
_CACHED: Final = 1024

_MAGIC_QUOTE: Final = struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)
_HEADER_SIZE: Final = 10  # magic, type, qualifiedSigner.size, extraData.size (if empty)
_CLOCK_FW: Final = struct.Struct(">QIIBQ")  # clock, resetCount, restartCount, safe, firmware


# ------------------------------------------------------------------ parsing


@attrs.frozen
class Quote:
    """A parsed TPMS_ATTEST of type quote (magic and type checked while parsing)."""

    #: The quote key's qualified name (not checked: see the module's docstring).
    qualified_signer: bytes
    #: The qualifying data the TPM was given: SHA-256 of the statement for taonet.
    extra_data: bytes
    #: TPMS_CLOCK_INFO: milliseconds the TPM has run, and whether it is "safe".
    clock: int
    #: Obfuscated for keys outside the endorsement and platform hierarchies: never compare.
    reset_count: int
    restart_count: int
    safe: bool
    #: Obfuscated like reset_count: display only.
    firmware_version: int
    #: The PCR numbers quoted, ascending (SHA-256 bank).
    pcr_select: tuple[int, ...]
    #: SHA-256 of the quoted PCR values in ascending order.
    pcr_digest: bytes


class _Reader:
    """Bounded big-endian reader: CodecError for anything past the end."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise CodecError(f"TPM quote: truncated in {what}")
        out = self.data[self.offset : end]
        self.offset = end
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def sized(self, bound: int, what: str) -> bytes:
        n = self.uint(2, what)
        if n > bound:
            raise CodecError(f"TPM quote: {what} of {n} bytes is over {bound}")
        return self.take(n, what)


def _as_bytes(data: object, what: str, error: type[Exception] = CodecError) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise error(f"{what}: expected bytes, not {type(data).__name__}")


def parse_quote(tpms_attest: bytes) -> Quote:
    """Parse a TPMS_ATTEST of type quote with every size bounded; CodecError otherwise.

    Refuses another magic or type, a qualifiedSigner over 66 bytes, extraData over
    64, a safe flag other than 0 or 1, more than 16 or other than one PCR bank, a
    bank other than SHA-256, sizeofSelect over 4, a pcrDigest over 64 bytes, and
    any byte after the pcrDigest.
    """
    data = _as_bytes(tpms_attest, "TPM quote")
    if len(data) > MAX_QUOTE_BYTES:
        raise CodecError(f"TPM quote: {len(data)} bytes is over {MAX_QUOTE_BYTES}")
    r = _Reader(data)
    magic = r.uint(4, "magic")
    if magic != TPM_GENERATED_VALUE:
        raise CodecError(f"TPM quote: magic {magic:#010x} is not TPM_GENERATED_VALUE")
    kind = r.uint(2, "type")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise CodecError(f"TPM quote: type {kind:#06x} is not TPM_ST_ATTEST_QUOTE (0x8018)")
    signer = r.sized(66, "qualifiedSigner")
    extra = r.sized(64, "extraData")
    clock, resets, restarts, safe, firmware = _CLOCK_FW.unpack(r.take(_CLOCK_FW.size, "clock"))
    if safe > 1:
        raise CodecError(f"TPM quote: clockInfo.safe is {safe}, not 0 or 1")
    count = r.uint(4, "PCR selection")
    if count > _HASH_COUNT:
        raise CodecError(f"TPM quote: {count} PCR banks is over {_HASH_COUNT}")
    if count != 1:
        raise CodecError(f"TPM quote: {count} PCR banks selected, not one SHA-256 bank")
    bank = r.uint(2, "PCR selection")
    if bank != PCR_BANK_SHA256:
        raise CodecError(f"TPM quote: PCR bank {bank:#06x} is not SHA-256 ({PCR_BANK_SHA256:#06x})")
    size = r.uint(1, "PCR selection")
    if size > _PCR_SELECT_MAX:
        raise CodecError(f"TPM quote: sizeofSelect {size} is over {_PCR_SELECT_MAX}")
    bitmap = int.from_bytes(r.take(size, "PCR selection"), "little")
    selected = tuple(p for p in range(8 * size) if bitmap >> p & 1)
    digest = r.sized(64, "pcrDigest")
    if r.offset != len(data):
        raise CodecError(f"TPM quote: {len(data) - r.offset} bytes after the pcrDigest")
    return Quote(signer, extra, clock, resets, restarts, bool(safe), firmware, selected, digest)


# ------------------------------------------------------------------ verification


def _explain(attest: bytes, extra: bytes, expected: Expected) -> AuthenticationError:
    """Why a quote failed the fast checks, in the documented order."""
    try:
        quote = parse_quote(attest)
    except CodecError as exc:
        return AuthenticationError(f"malformed {exc}")
    if not hmac.compare_digest(quote.extra_data, extra):
        return AuthenticationError(
            "TPM quote: extraData differs from the expected qualifying data "
            "(SHA-256 of the statement)"
        )
    _, numbers, digest = expected
    if quote.pcr_select != numbers:
        got = ",".join(map(str, quote.pcr_select)) or "none"
        return AuthenticationError(
            f"TPM quote: PCR selection {got} differs from the expected "
            f"{','.join(map(str, numbers))} (SHA-256 bank)"
        )
    if not hmac.compare_digest(quote.pcr_digest, digest):
        return AuthenticationError(
            f"TPM quote: PCR digest {quote.pcr_digest.hex()[:16]}.. differs from the "
            f"digest of the expected PCR values {digest.hex()[:16]}.."
        )
    # Same fields, other bytes: e.g. the selection encoded with another sizeofSelect.
    return AuthenticationError("TPM quote: PCR selection is not encoded as expected")


def _verify(key: Key, attest: bytes, sig: bytes, extra: bytes, expected: Expected) -> int:
    """Check a quote; return the offset of its clockInfo. The fast path.

    The header is read with bounds, and everything after clockInfo must be exactly
    the expected selection and digest (which also fixes the length). Any difference
    goes to _explain, which parses in full and says what differs.
    """
    n = len(attest)
    if _HEADER_SIZE <= n <= MAX_QUOTE_BYTES and attest[:6] == _MAGIC_QUOTE:
        signer_size = attest[6] << 8 | attest[7]
        o = _HEADER_SIZE + signer_size  # extraData starts here
        if signer_size <= 66 and o <= n:
            clock = o + (attest[o - 2] << 8 | attest[o - 1])
            end = clock + _CLOCK_FW.size
            if (
                clock - o <= 64
                and end <= n
                and attest[clock + 16] <= 1  # clockInfo.safe
                and hmac.compare_digest(attest[o:clock], extra)
                and hmac.compare_digest(attest[end:], expected[0])
            ):
                verify_signature(key, attest, sig)
                return clock
    raise _explain(attest, extra, expected)


def verify_quote(
    quote_key_der: bytes,
    tpms_attest: bytes,
    tpmt_signature: bytes,
    *,
    extra_data: bytes,
    pcrs: Mapping[int, bytes],
) -> Quote:
    """Verify a TPM2_Quote; return it parsed, or raise AuthenticationError saying why.

    ``quote_key_der`` is the quote key (PKIX DER), ``extra_data`` the qualifying data
    the quote must carry, ``pcrs`` the SHA-256 PCR values it must be over (exactly
    those PCRs). Checks, in order: the TPMS_ATTEST parses with bounds; extraData;
    PCR selection and digest; the signature (see the module's docstring).
    ValueError if ``pcrs`` itself is not a valid PCR map: keys ints (not bool) from
    0 to 23, values bytes-like of 32 bytes, at least one PCR.

    The signature bytes are not canonical: an ECDSA r or s may be sent shorter than 32
    bytes (leading zeros dropped) and another valid (r, n - s) verifies too, so one
    quote may have several valid TPMT_SIGNATUREs. Nothing keys on them (the quote and
    its verdict are what count), so this is harmless; do not use them as an identifier.
    """
    # Exact bytes (what callers pass) skip _as_bytes: this runs once per quote.
    if type(quote_key_der) is not bytes:
        quote_key_der = _as_bytes(quote_key_der, "TPM quote key", AuthenticationError)
    attest = tpms_attest
    if type(attest) is not bytes:
        attest = _as_bytes(attest, "TPM quote", AuthenticationError)
    if type(tpmt_signature) is not bytes:
        tpmt_signature = _as_bytes(tpmt_signature, "TPM signature", AuthenticationError)
    if type(extra_data) is not bytes:
        extra_data = _as_bytes(extra_data, "extra_data", TypeError)
    # Checked and normalised before the cache: {True: v} or {1.0: v} must not hit
    # the entry {1: v} left, and a bytearray value is not hashable.
    expected = expected_for_items(normal_pcr_items(pcrs))
    clock = _verify(quote_key(quote_key_der), attest, tpmt_signature, extra_data, expected)
    o = 10 + (attest[6] << 8 | attest[7])
    ms, resets, restarts, safe, firmware = _CLOCK_FW.unpack_from(attest, clock)
    return Quote(
        attest[8 : o - 2],
        attest[o:clock],
        ms,
        resets,
        restarts,
        bool(safe),
        firmware,
        expected[1],
        expected[2],
    )


# ------------------------------------------------------------------ the "tpm2" signer type


@functools.lru_cache(maxsize=_CACHED)
def _signer_principal(der: bytes) -> auth.Prin:
    quote_key(der)  # refuse a key we would not verify with
    return tpm2_principal(der)


def _verify_tpm2_says(att: Attestation, says: auth.Says) -> None:
    attest = att.tpm2_quote_structure
    if attest is None:
        raise AuthenticationError("tpm2 attestation carries no quote (tpm2_quote_structure)")
    der = _as_bytes(att.signer_key, "TPM quote key", AuthenticationError)
    key = quote_key(der)
    speaker = says.speaker
    if not isinstance(speaker, auth.Prin):
        raise AuthenticationError("tpm2 attestation: the speaker is not a principal")
    exts = speaker.ext.exts
    if (
        speaker.type != "tpm2"
        or speaker.key_hash != _signer_principal(der).key_hash
        or not exts
        or exts[0].name != "PCRs"
    ):
        raise AuthenticationError(
            f"tpm2 attestation: the speaker {_short(speaker)} is not "
            "tpm2([quote key]).PCRs(...): a TPM speaks only with the PCRs it quotes"
        )
    try:
        expected = expected_for_text(*pcrs_ext_text(exts[0]))
    except CodecError as exc:
        raise AuthenticationError(f"tpm2 attestation: the speaker's {exc}") from None
    extra = hashlib.sha256(att.serialized_statement).digest()
    _verify(
        key,
        _as_bytes(attest, "TPM quote", AuthenticationError),
        _as_bytes(att.signature, "TPM signature", AuthenticationError),
        extra,
        expected,
    )


def _verify_tpm2(att: Attestation) -> None:
    try:
        says = att.statement()
    except CodecError as exc:
        raise AuthenticationError(f"tpm2 attestation: malformed statement: {exc}") from None
    _verify_tpm2_says(att, says)


def _short(prin: auth.Prin) -> str:
    text = str(prin)
    return text if len(text) <= 160 else text[:157] + "..."


def _tpm2_signer_principal(der: bytes) -> auth.Prin:
    return _signer_principal(_as_bytes(der, "TPM quote key", AuthenticationError))


#: The built-in ``"tpm2"`` signer type: quote verification and ``tpm2(hash)`` principals.
SIGNER_TYPE: Final = SignerType(
    verify=_verify_tpm2, principal=_tpm2_signer_principal, verify_says=_verify_tpm2_says
)


def tpm2_attestation(
    statement_bytes: bytes,
    quote_key_der: bytes,
    tpms_attest: bytes,
    tpmt_signature: bytes,
    *,
    delegation: Attestation | None = None,
    root_endorsement: bytes | None = None,
) -> Attestation:
    """The attestation a TPM host makes from a quote over ``statement_bytes``.

    The quote must have been made with qualifying data SHA-256(``statement_bytes``)
    over the PCRs the speaker names; nothing is checked here (:func:`validate
    <taonet.attestation.validate>` checks everything). ``root_endorsement`` is the
    quote key's certificate from the domain.
    """
    return Attestation(
        serialized_statement=statement_bytes,
        signer_type="tpm2",
        signer_key=quote_key_der,
        signature=tpmt_signature,
        serialized_delegation=delegation.to_bytes() if delegation is not None else None,
        tpm2_quote_structure=tpms_attest,
        root_endorsement=root_endorsement,
    )
