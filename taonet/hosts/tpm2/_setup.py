"""The TPM 2.0 host's one-time work, done through tpm2-pytss (ESAPI).

Each function here opens its own ESAPI connection to the TPM named by a TCTI string,
does one job, flushes every transient object and session it loaded (a TPM has as few
as three object slots, and swtpm has no resource manager to clean up after a client),
and closes the connection. They are plain blocking functions: async callers run them
in ``trio.to_thread.run_sync`` with the TPM's ``CapacityLimiter(1)``, and not per
message: they provision (key creation, EK reading, credential activation, counter
definition). The per-call path (quote, unseal, counters) sends raw commands instead.

Every TSS or TPM failure becomes a :class:`~taonet.HostError` whose ``rc`` is the
TSS response code and whose message gives it in hex.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any, Final, Literal

from taonet._errors import ConfigError, HostError
from taonet._log import get_logger
from taonet.hosts.tpm2._params import (
    EK_CERT_INDICES,
    MAX_EK_CERT,
    POLICY_C_SHA384,
    PRIMARY_TEMPLATE,
    QUOTE_KEY_TEMPLATES,
    parse_tcti,
    policy_secret_digest,
)

os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_NT,
    TPM2_PT_NV,
    TPM2_SE,
    TPMA_NV,
    TPMA_SESSION,
)
from tpm2_pytss.internal.templates import ek_template
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_HA,
)

__all__ = [
    "EK_CERT_INDICES",
    "PRIMARY_TEMPLATE",
    "QUOTE_KEY_TEMPLATES",
    "activate_credential",
    "create_quote_key",
    "define_nv_counter",
    "extend_pcr",
    "flush_transient",
    "increment_nv_counter",
    "loaded_handles",
    "parse_tcti",
    "read_ek",
    "read_nv_counter",
    "read_pcrs",
    "reset_pcr",
]

_log = get_logger(__name__)

# ---- connection and errors -------------------------------------------------------------


@contextlib.contextmanager
def _tss_errors(what: str) -> Iterator[None]:
    try:
        yield
    except TSS2_Exception as exc:
        rc = int(exc.rc)
        raise HostError(f"TPM {what} failed: {exc} (rc {rc:#x})", rc=rc) from exc


@contextlib.contextmanager
def _esapi(tcti: str) -> Iterator[Any]:
    """An ESAPI connection to ``tcti`` for one job, closed afterwards."""
    name, conf = parse_tcti(tcti)
    with _tss_errors(f"connection to {name}:{conf}"):
        try:
            ectx = ESAPI(TCTILdr(name, conf))
        except (OSError, RuntimeError) as exc:
            raise HostError(f"cannot open TPM {name}:{conf}: {exc}") from exc
    try:
        yield ectx
    finally:
        with contextlib.suppress(TSS2_Exception, OSError, RuntimeError):
            ectx.close()


class _Flusher:
    """Flushes, at the end of a job, every object and session the job loaded."""

    def __init__(self, ectx: Any) -> None:
        self._ectx = ectx
        self._handles: list[Any] = []

    def add(self, handle: Any) -> Any:
        self._handles.append(handle)
        return handle

    def flush(self, handle: Any) -> None:
        if handle in self._handles:
            self._handles.remove(handle)
        with _tss_errors("FlushContext"):
            self._ectx.flush_context(handle)

    def close(self) -> None:
        while self._handles:
            handle = self._handles.pop()
            with contextlib.suppress(TSS2_Exception):
                self._ectx.flush_context(handle)


@contextlib.contextmanager
def _job(tcti: str) -> Iterator[tuple[Any, _Flusher]]:
    with _esapi(tcti) as ectx:
        flusher = _Flusher(ectx)
        try:
            yield ectx, flusher
        finally:
            flusher.close()


def _create_primary(ectx: Any, flusher: _Flusher) -> Any:
    template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.unmarshal(PRIMARY_TEMPLATE)[0])
    with _tss_errors("CreatePrimary (storage primary)"):
        handle, _, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)
    return flusher.add(handle)


# ---- the jobs ------------------------------------------------------------------------


# HANDLES from 0x80..: transient objects; from 0x02..: loaded sessions (HMAC 0x02..,
# policy 0x03..); from 0x03..: saved (context-saved) sessions.
_HANDLE_RANGES: Final = (
    (0x80000000, (0x80,)),
    (0x02000000, (0x02, 0x03)),
    (0x03000000, (0x02, 0x03)),
)


def _handles(ectx: Any) -> list[int]:
    found: list[int] = []
    for first, types in _HANDLE_RANGES:
        with _tss_errors("GetCapability (handles)"):
            _, data = ectx.get_capability(TPM2_CAP.HANDLES, first, 64)
        found += [int(h) for h in list(data.data.handles)[:64] if int(h) >> 24 in types]
    return found


def loaded_handles(tcti: str) -> list[int]:
    """The TPM handles of the transient objects, loaded sessions and saved sessions the
    TPM holds now (for tests that check a job flushed what it loaded)."""
    with _esapi(tcti) as ectx:
        return _handles(ectx)


def flush_transient(tcti: str) -> int:
    """Flush every transient object and loaded session on the TPM; returns how many.

    For a TPM without a resource manager (swtpm), where a crashed client's objects stay
    loaded and fill the slots. Never use it on a TPM other programs are using.
    """
    flushed = 0
    with _esapi(tcti) as ectx:
        for raw in _handles(ectx):
            with _tss_errors(f"FlushContext ({raw:#010x})"):
                ectx.flush_context(ectx.tr_from_tpmpublic(raw))
            flushed += 1
    if flushed:
        _log.info("tpm_transient_flushed", count=flushed)
    return flushed


def _nv_read_all(ectx: Any, handle: Any, size: int) -> bytes:
    with _tss_errors("GetCapability (NV buffer max)"):
        _, cap = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
    chunk = max(64, min(2048, int(cap.data.tpmProperties[0].value)))
    out = bytearray()
    while len(out) < size:
        with _tss_errors("NV_Read (EK certificate)"):
            got = bytes(
                ectx.nv_read(
                    handle, min(chunk, size - len(out)), len(out), auth_handle=ESYS_TR.OWNER
                )
            )
        if not got:
            raise HostError("NV_Read returned no data")
        out += got
    return bytes(out[:size])


def _ek_template(template_name: str) -> Any:
    found = ek_template.lookup(template_name)
    if found is None:  # pragma: no cover - tpm2-pytss always has the TCG templates
        raise HostError(f"tpm2-pytss has no EK template {template_name}")
    return TPM2B_PUBLIC(publicArea=found.template.publicArea)


def _find_ek(ectx: Any, prefer: int | None) -> tuple[int, str, Any]:
    """(cert NV index, template name, ESYS handle of the NV index) of the EK to use."""
    for index, template_name in EK_CERT_INDICES:
        if prefer is not None and index != prefer:
            continue
        try:
            handle = ectx.tr_from_tpmpublic(index)
        except TSS2_Exception:
            continue
        return index, template_name, handle
    wanted = f"{prefer:#010x}" if prefer is not None else "0x01c0000a, 0x01c00002 or 0x01c00016"
    raise HostError(f"the TPM has no EK certificate at {wanted}")


def read_ek(tcti: str, *, index: int | None = None) -> tuple[bytes, bytes]:
    """``(EK certificate DER, EK TPMT_PUBLIC bytes)`` of the TPM's endorsement key.

    Takes the first EK certificate found at the TCG indices: ECC P-256 (0x01c0000a),
    RSA-2048 (0x01c00002), ECC P-384 (0x01c00016); or exactly ``index``. The EK is
    recreated with CreatePrimary from the TCG template that index goes with, so the
    public area is the TPM's own; it must carry the certificate's key, else HostError.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with _job(tcti) as (ectx, flusher):
        found_index, template_name, nv = _find_ek(ectx, index)
        with _tss_errors("NV_ReadPublic (EK certificate)"):
            nv_public, _ = ectx.nv_read_public(nv)
        size = int(nv_public.nvPublic.dataSize)
        if not 0 < size <= MAX_EK_CERT:
            raise HostError(
                f"EK certificate at {found_index:#010x}: {size} bytes (at most {MAX_EK_CERT})"
            )
        der = _nv_read_all(ectx, nv, size)
        with _tss_errors(f"CreatePrimary ({template_name})"):
            ek, ek_public, _, _, _ = ectx.create_primary(
                TPM2B_SENSITIVE_CREATE(), _ek_template(template_name), ESYS_TR.ENDORSEMENT
            )
        flusher.add(ek)
        flusher.flush(ek)
    try:
        # An NV index's data may be followed by padding: take the DER's own length.
        cert = x509.load_der_x509_certificate(_der_prefix(der))
    except ValueError as exc:
        raise HostError(f"EK certificate at {found_index:#010x} is not DER X.509: {exc}") from exc
    tpm_key = serialization.load_pem_public_key(ek_public.to_pem())
    pkix = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, pkix) != tpm_key.public_bytes(
        serialization.Encoding.DER, pkix
    ):
        raise HostError(
            f"EK certificate at {found_index:#010x} is not for the EK of template {template_name}"
        )
    return cert.public_bytes(serialization.Encoding.DER), bytes(ek_public.publicArea.marshal())


def _der_prefix(data: bytes) -> bytes:
    """The DER SEQUENCE at the start of ``data`` (bounded; ValueError if malformed)."""
    if len(data) < 2 or data[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    first = data[1]
    if first < 0x80:
        return data[: 2 + first]
    count = first & 0x7F
    if not 1 <= count <= 2 or len(data) < 2 + count:
        raise ValueError("bad DER length")
    length = int.from_bytes(data[2 : 2 + count], "big")
    end = 2 + count + length
    if end > len(data):
        raise ValueError("DER length past the end")
    return data[:end]


def create_quote_key(tcti: str, alg: Literal["ecc", "rsa"] = "ecc") -> tuple[bytes, bytes]:
    """Create a quote key under the storage primary: ``(TPM2B_PRIVATE, TPM2B_PUBLIC)`` bytes.

    ``alg`` ``"ecc"``: restricted ECC P-256 signing key, ECDSA-SHA-256; ``"rsa"``:
    RSA-2048, RSASSA-SHA-256 (see :data:`QUOTE_KEY_TEMPLATES`). The blobs are loadable
    only under :data:`PRIMARY_TEMPLATE`'s primary on this TPM.
    """
    if alg not in QUOTE_KEY_TEMPLATES:
        raise ConfigError(f"quote key algorithm {alg!r}: expected 'ecc' or 'rsa'")
    template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.unmarshal(QUOTE_KEY_TEMPLATES[alg])[0])
    with _job(tcti) as (ectx, flusher):
        primary = _create_primary(ectx, flusher)
        with _tss_errors(f"Create (quote key, {alg})"):
            private, public, _, _, _ = ectx.create(primary, TPM2B_SENSITIVE_CREATE(), template)
    _log.info("tpm_quote_key_created", alg=alg)
    return bytes(private.marshal()), bytes(public.marshal())


def _ek_policy_session(ectx: Any, flusher: _Flusher, template_name: str) -> Any:
    """A policy session satisfying the EK's authPolicy (TCG L-1/L-2: PolicySecret of
    the endorsement hierarchy, SHA-256; H-3: the same in SHA-384, then PolicyOR with
    PolicyC)."""
    high = template_name.startswith("EK-HIGH")
    hash_alg = TPM2_ALG.SHA384 if high else TPM2_ALG.SHA256
    with _tss_errors("StartAuthSession (EK policy)"):
        session = ectx.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            hash_alg,
        )
    flusher.add(session)
    with _tss_errors("PolicySecret (endorsement)"):
        ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
        if high:
            policy_a = policy_secret_digest("sha384")
            ectx.policy_or(session, TPML_DIGEST([policy_a, POLICY_C_SHA384]))
        # ESAPI starts sessions with continueSession set; the flusher flushes it anyway.
        ectx.trsess_set_attributes(session, 0, TPMA_SESSION.CONTINUESESSION)
    return session


def activate_credential(
    tcti: str,
    quote_priv: bytes,
    quote_pub: bytes,
    credential_blob: bytes,
    encrypted_secret: bytes,
    *,
    ek_index: int | None = None,
) -> bytes:
    """TPM2_ActivateCredential: the secret a MakeCredential for (EK, quote key) wrapped.

    ``quote_priv`` / ``quote_pub`` are the quote key's TPM2B_PRIVATE / TPM2B_PUBLIC
    bytes (as :func:`create_quote_key` returns). ``credential_blob`` is the content of
    TPM2B_ID_OBJECT (``TPM2B integrityHMAC || encIdentity``) and ``encrypted_secret``
    the content of TPM2B_ENCRYPTED_SECRET, both without their own 2-byte size. The EK
    is the one :func:`read_ek` picks (or the one whose certificate is at ``ek_index``).
    A blob made for another EK or another key's name raises HostError.
    """
    if len(credential_blob) > 1024 or len(encrypted_secret) > 1024:
        raise HostError("credential blob or encrypted secret larger than 1024 bytes")
    try:
        private, used = TPM2B_PRIVATE.unmarshal(quote_priv)
        public, used2 = TPM2B_PUBLIC.unmarshal(quote_pub)
    except Exception as exc:  # tpm2-pytss raises assorted errors for bad bytes
        raise HostError(f"quote key blobs do not parse: {exc}") from exc
    if used != len(quote_priv) or used2 != len(quote_pub):
        raise HostError("quote key blobs have trailing bytes")
    with _job(tcti) as (ectx, flusher):
        _, template_name, _ = _find_ek(ectx, ek_index)
        primary = _create_primary(ectx, flusher)
        with _tss_errors("Load (quote key)"):
            key = flusher.add(ectx.load(primary, private, public))
        flusher.flush(primary)
        with _tss_errors(f"CreatePrimary ({template_name})"):
            ek, _, _, _, _ = ectx.create_primary(
                TPM2B_SENSITIVE_CREATE(), _ek_template(template_name), ESYS_TR.ENDORSEMENT
            )
        flusher.add(ek)
        session = _ek_policy_session(ectx, flusher, template_name)
        with _tss_errors("ActivateCredential"):
            secret = ectx.activate_credential(
                key,
                ek,
                TPM2B_ID_OBJECT(credential=credential_blob),
                TPM2B_ENCRYPTED_SECRET(secret=encrypted_secret),
                session1=ESYS_TR.PASSWORD,
                session2=session,
            )
    return bytes(secret)


# ---- NV counters -----------------------------------------------------------------------

#: The attributes of taonet's NV counters (the TPM adds WRITTEN after the first
#: increment): AUTHREAD|AUTHWRITE|OWNERREAD|NO_DA, type COUNTER; empty auth value.
COUNTER_ATTRIBUTES: Final = int(
    TPMA_NV.AUTHREAD
    | TPMA_NV.AUTHWRITE
    | TPMA_NV.OWNERREAD
    | TPMA_NV.NO_DA
    | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
)
_NV_WRITTEN: Final = int(TPMA_NV.WRITTEN)


def _check_counter_index(index: int) -> None:
    # Owner-defined NV indices: handle type 0x01, outside the TCG-reserved 0x01c0_0000+.
    if not 0x01000000 <= index < 0x01C00000:
        raise ConfigError(f"NV counter index {index:#010x}: expected 0x01000000..0x01bfffff")


def define_nv_counter(tcti: str, index: int) -> bool:
    """Define an NV monotonic counter at ``index`` (owner hierarchy, empty auth); True
    if it was defined now, False if it existed already with taonet's attributes.

    A new counter is incremented once, so it can be read at once (a TPM starts a new
    counter at the highest value any counter of it ever had, not at 0). An index that
    exists with other attributes or size raises HostError: it is not taonet's.
    """
    _check_counter_index(index)
    with _esapi(tcti) as ectx:
        try:
            handle = ectx.tr_from_tpmpublic(index)
        except TSS2_Exception:
            handle = None
        if handle is not None:
            with _tss_errors("NV_ReadPublic (counter)"):
                public, _ = ectx.nv_read_public(handle)
            attrs = int(public.nvPublic.attributes) & ~_NV_WRITTEN
            if (
                attrs != COUNTER_ATTRIBUTES
                or int(public.nvPublic.dataSize) != 8
                or int(public.nvPublic.nameAlg) != int(TPM2_ALG.SHA256)
            ):
                raise HostError(
                    f"NV index {index:#010x} exists with attributes {attrs:#x} and size"
                    f" {int(public.nvPublic.dataSize)}: not a taonet counter"
                    f" (expected {COUNTER_ATTRIBUTES:#x}, 8)"
                )
            if not int(public.nvPublic.attributes) & _NV_WRITTEN:
                with _tss_errors("NV_Increment (first)"):
                    ectx.nv_increment(handle, auth_handle=handle)
            return False
        nv_public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=COUNTER_ATTRIBUTES, dataSize=8
            )
        )
        with _tss_errors("NV_DefineSpace (counter)"):
            handle = ectx.nv_define_space(b"", nv_public, ESYS_TR.OWNER)
        with _tss_errors("NV_Increment (first)"):
            ectx.nv_increment(handle, auth_handle=handle)
    _log.info("tpm_counter_defined", index=f"{index:#010x}")
    return True


def read_nv_counter(tcti: str, index: int) -> int:
    """The value of taonet's NV counter at ``index`` (HostError if undefined)."""
    _check_counter_index(index)
    with _esapi(tcti) as ectx, _tss_errors(f"NV_Read (counter {index:#010x})"):
        handle = ectx.tr_from_tpmpublic(index)
        value = bytes(ectx.nv_read(handle, 8, 0, auth_handle=handle))
    return int.from_bytes(value, "big")


def increment_nv_counter(tcti: str, index: int) -> int:
    """Increment taonet's NV counter at ``index``; returns the new value."""
    _check_counter_index(index)
    with _esapi(tcti) as ectx, _tss_errors(f"NV_Increment (counter {index:#010x})"):
        handle = ectx.tr_from_tpmpublic(index)
        ectx.nv_increment(handle, auth_handle=handle)
        value = bytes(ectx.nv_read(handle, 8, 0, auth_handle=handle))
    return int.from_bytes(value, "big")


# ---- PCRs ------------------------------------------------------------------------------


def _check_pcrs(pcrs: Iterable[int]) -> list[int]:
    chosen = sorted(set(pcrs))
    if not chosen or any(not isinstance(p, int) or not 0 <= p <= 23 for p in chosen):
        raise ConfigError(f"PCRs {chosen[:30]}: expected a non-empty list of 0..23")
    return chosen


def read_pcrs(tcti: str, pcrs: Iterable[int]) -> dict[int, bytes]:
    """``{pcr: value}`` of the SHA-256 bank for ``pcrs`` (0..23)."""
    chosen = _check_pcrs(pcrs)
    out: dict[int, bytes] = {}
    with _esapi(tcti) as ectx:
        # PCR_Read answers at most 8 digests per call: ask in groups of 8.
        for start in range(0, len(chosen), 8):
            group = chosen[start : start + 8]
            selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, group)))
            with _tss_errors("PCR_Read"):
                _, got_selection, digests = ectx.pcr_read(selection)
            got: list[int] = []
            for sel in got_selection:
                bitmap = int.from_bytes(bytes(sel.pcrSelect)[: int(sel.sizeofSelect)], "little")
                got += [p for p in range(int(sel.sizeofSelect) * 8) if bitmap >> p & 1]
            for pcr, digest in zip(got, digests, strict=False):
                out[pcr] = bytes(digest)
    missing = [p for p in chosen if p not in out or len(out[p]) != 32]
    if missing:
        raise HostError(f"the TPM has no SHA-256 bank values for PCRs {missing}")
    return out


def extend_pcr(tcti: str, pcr: int, data: bytes) -> bytes:
    """Extend SHA-256 PCR ``pcr`` with SHA-256(``data``); returns the new value."""
    (chosen,) = _check_pcrs([pcr])
    digest = hashlib.sha256(data).digest()
    values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))])
    with _esapi(tcti) as ectx, _tss_errors(f"PCR_Extend (PCR {chosen})"):
        ectx.pcr_extend(ESYS_TR.parse(f"pcr{chosen}"), values)
    return read_pcrs(tcti, [chosen])[chosen]


def reset_pcr(tcti: str, pcr: int) -> None:
    """PCR_Reset (only PCRs 16 and 23 are resettable at locality 0)."""
    (chosen,) = _check_pcrs([pcr])
    with _esapi(tcti) as ectx, _tss_errors(f"PCR_Reset (PCR {chosen})"):
        ectx.pcr_reset(ESYS_TR.parse(f"pcr{chosen}"))
