"""TPM 2.0 commands as bytes: the few a TPM host sends on its hot path and at start.

Pure: no I/O, no TSS. Each ``*_command`` function returns a whole command (header,
handles, authorization area, parameters); each ``parse_*`` function takes the
parameter area of a successful response (see :func:`split_response`) and returns
Python values, bounded: a short, long or malformed response is a HostError (the
TPM is the host's own device, not a peer). A failed command is a :class:`TpmError`
(a HostError carrying the TPM's response code).

Authorization: objects with an empty password get the password session ``TPM_RS_PW``
with an empty HMAC. Unseal, NV_Read and NV_Increment take their authorization area
from the caller: the host's kept policy session (Unseal) and kept HMAC session (the NV
counters) are salted to the storage primary (:func:`start_salted_session_command`), and
:mod:`taonet.hosts.tpm2._session` computes the command HMAC, checks the response HMAC
and decrypts an encrypted answer (:func:`response_auth` gives the response's session
area). The other commands have no parameter encryption: Create carries the data it
seals in clear.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from taonet._errors import HostError

__all__ = ["TpmError"]

TPM_ST_NO_SESSIONS: Final = 0x8001
TPM_ST_SESSIONS: Final = 0x8002

CC_CREATE_PRIMARY: Final = 0x131
CC_NV_DEFINE_SPACE: Final = 0x12A
CC_NV_INCREMENT: Final = 0x134
CC_CREATE: Final = 0x153
CC_LOAD: Final = 0x157
CC_QUOTE: Final = 0x158
CC_UNSEAL: Final = 0x15E
CC_CONTEXT_LOAD: Final = 0x161
CC_CONTEXT_SAVE: Final = 0x162
CC_FLUSH_CONTEXT: Final = 0x165
CC_NV_READ_PUBLIC: Final = 0x169
CC_NV_READ: Final = 0x14E
CC_START_AUTH_SESSION: Final = 0x176
CC_GET_CAPABILITY: Final = 0x17A
CC_PCR_READ: Final = 0x17E
CC_POLICY_PCR: Final = 0x17F
CC_POLICY_RESTART: Final = 0x180
CC_READ_CLOCK: Final = 0x181
CC_PCR_EXTEND: Final = 0x182
CC_PCR_RESET: Final = 0x13D

TPM_RH_OWNER: Final = 0x40000001
TPM_RH_NULL: Final = 0x40000007
TPM_RS_PW: Final = 0x40000009
TPM_ALG_KEYEDHASH: Final = 0x0008
TPM_ALG_SHA256: Final = 0x000B
TPM_ALG_NULL: Final = 0x0010
TPM_ALG_AES: Final = 0x0006
TPM_ALG_CFB: Final = 0x0043
TPM_SE_HMAC: Final = 0x00
TPM_SE_POLICY: Final = 0x01
TPM_CAP_HANDLES: Final = 0x00000001

#: Response codes a caller acts on (format-one codes with their parameter,
#: handle or session number masked off, see :func:`rc_base`).
RC_INITIALIZE: Final = 0x100
RC_PCR_CHANGED: Final = 0x128
RC_NV_AUTHORIZATION: Final = 0x149
RC_NV_UNINITIALIZED: Final = 0x14A
RC_AUTH_UNAVAILABLE: Final = 0x12F
RC_HANDLE: Final = 0x08B
RC_POLICY_FAIL: Final = 0x09D
RC_INTEGRITY: Final = 0x09F
RC_BAD_AUTH: Final = 0x0A2
RC_OBJECT_MEMORY: Final = 0x902
RC_REFERENCE_H0: Final = 0x910
RC_REFERENCE_S0: Final = 0x918
RC_YIELDED: Final = 0x908
RC_TESTING: Final = 0x90A
RC_RETRY: Final = 0x922
#: Warnings after which the same command may simply be sent again.
RETRYABLE: Final = frozenset({RC_YIELDED, RC_TESTING, RC_RETRY})

_RC_NAMES: Final = {
    RC_INITIALIZE: "TPM not initialized",
    RC_PCR_CHANGED: "PCRs changed during the command",
    RC_NV_AUTHORIZATION: "NV index authorization not allowed",
    RC_NV_UNINITIALIZED: "NV index not yet written",
    RC_AUTH_UNAVAILABLE: "authValue or authPolicy not available",
    RC_HANDLE: "bad handle",
    RC_POLICY_FAIL: "policy check failed",
    RC_INTEGRITY: "integrity check failed",
    RC_BAD_AUTH: "session HMAC check failed",
    RC_OBJECT_MEMORY: "out of object memory",
    RC_REFERENCE_H0: "handle not loaded",
    RC_REFERENCE_S0: "session not loaded",
    RC_RETRY: "retry",
}

_COMMAND_NAMES: Final = {
    CC_CREATE_PRIMARY: "CreatePrimary",
    CC_NV_DEFINE_SPACE: "NV_DefineSpace",
    CC_NV_INCREMENT: "NV_Increment",
    CC_CREATE: "Create",
    CC_LOAD: "Load",
    CC_QUOTE: "Quote",
    CC_UNSEAL: "Unseal",
    CC_CONTEXT_LOAD: "ContextLoad",
    CC_CONTEXT_SAVE: "ContextSave",
    CC_FLUSH_CONTEXT: "FlushContext",
    CC_NV_READ_PUBLIC: "NV_ReadPublic",
    CC_NV_READ: "NV_Read",
    CC_START_AUTH_SESSION: "StartAuthSession",
    CC_GET_CAPABILITY: "GetCapability",
    CC_PCR_READ: "PCR_Read",
    CC_POLICY_PCR: "PolicyPCR",
    CC_POLICY_RESTART: "PolicyRestart",
    CC_READ_CLOCK: "ReadClock",
    CC_PCR_EXTEND: "PCR_Extend",
    CC_PCR_RESET: "PCR_Reset",
}

#: Largest command or response this module builds or accepts.
MAX_MESSAGE: Final = 8192
HEADER: Final = 10
#: Highest PCR index (the SHA-256 bank of a PC client TPM has 24).
MAX_PCR: Final = 23

# Sealed data objects: fixedTPM | fixedParent | noDA (no userWithAuth: the policy only).
_SEALED_ATTRIBUTES: Final = 0x00000002 | 0x00000010 | 0x00000400


class TpmError(HostError):
    """A TPM command failed: ``rc`` is the TPM's response code."""

    def __init__(self, command: int, rc: int) -> None:
        name = _COMMAND_NAMES.get(command, f"{command:#x}")
        what = _RC_NAMES.get(rc_base(rc))
        detail = f" ({what})" if what else ""
        super().__init__(f"TPM2_{name} failed: rc {rc:#05x}{detail}", rc=rc)
        self.command = command
        self.tpm_rc = rc

    @property
    def base(self) -> int:
        return rc_base(self.tpm_rc)


def rc_base(rc: int) -> int:
    """The response code without its parameter, handle or session number."""
    if rc & 0x80:  # format one: number in bits 6 and 8-11
        return rc & 0xBF
    return rc


def is_parameter_error(rc: int) -> bool:
    """Whether ``rc`` blames one of the command's parameters (not a handle or session)."""
    return rc & 0xC0 == 0xC0


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def tpm2b(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise HostError("a TPM2B field is over 65535 bytes")
    return u16(len(data)) + data


def command(cc: int, handles: Iterable[int], params: bytes, auth: bytes | None = None) -> bytes:
    body = b"".join(u32(h) for h in handles)
    if auth is not None:
        body += u32(len(auth)) + auth
    body += params
    tag = TPM_ST_NO_SESSIONS if auth is None else TPM_ST_SESSIONS
    size = HEADER + len(body)
    if size > MAX_MESSAGE:
        raise HostError(f"a TPM command of {size} bytes is over {MAX_MESSAGE}")
    return struct.pack(">HII", tag, size, cc) + body


def password_auth() -> bytes:
    # handle, nonce (empty), attributes (continueSession clear), hmac = password (empty)
    return struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)


def response_size(header: bytes) -> int:
    """The size a response's 10-byte header announces; HostError if impossible."""
    size = int(struct.unpack_from(">I", header, 2)[0])
    if not HEADER <= size <= MAX_MESSAGE:
        raise HostError(f"the TPM announced a response of {size} bytes")
    return size


def split_response(command: bytes, response: bytes) -> tuple[bytes, bytes]:
    """(response handles area, parameter area) of ``response`` to ``command``.

    TpmError if the TPM refused; HostError if the response is malformed.
    """
    cc = struct.unpack_from(">I", command, 6)[0]
    if len(response) < HEADER:
        raise HostError("the TPM's response is shorter than its header")
    tag, size, rc = struct.unpack_from(">HII", response)
    if size != len(response):
        raise HostError("the TPM's response size does not match its header")
    if rc != 0:
        raise TpmError(cc, rc)
    n_handles = _RESPONSE_HANDLES.get(cc, 0)
    end_handles = HEADER + 4 * n_handles
    if len(response) < end_handles:
        raise HostError(f"the TPM's TPM2_{_COMMAND_NAMES.get(cc, hex(cc))} response is truncated")
    handles = response[HEADER:end_handles]
    if tag == TPM_ST_SESSIONS:
        if len(response) < end_handles + 4:
            raise HostError("the TPM's response lacks its parameter size")
        psize = struct.unpack_from(">I", response, end_handles)[0]
        start = end_handles + 4
        if start + psize > len(response):
            raise HostError("the TPM's response parameter size is past its end")
        return handles, response[start : start + psize]
    if tag != TPM_ST_NO_SESSIONS:
        raise HostError(f"the TPM's response has an unknown tag {tag:#x}")
    return handles, response[end_handles:]


_RESPONSE_HANDLES: Final = {
    CC_CREATE_PRIMARY: 1,
    CC_LOAD: 1,
    CC_CONTEXT_LOAD: 1,
    CC_START_AUTH_SESSION: 1,
}


class Reader:
    """A bounds-checked big-endian reader over one response's parameters."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise HostError(f"the TPM's {self._what} response is truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out


def handle_of(handles: bytes) -> int:
    return int(struct.unpack(">I", handles[:4])[0])


# -- PCR selections ----------------------------------------------------------------


def check_pcrs(pcrs: Iterable[int]) -> tuple[int, ...]:
    """Sorted, distinct PCR indices 0..23; HostError otherwise (or if empty)."""
    out = []
    for p in pcrs:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= MAX_PCR:
            raise HostError(f"a PCR index must be an integer from 0 to {MAX_PCR}, got {p!r}")
        out.append(p)
    if not out or len(set(out)) != len(out):
        raise HostError("a PCR list must be non-empty and name each PCR once")
    return tuple(sorted(out))


# -- commands ------------------------------------------------------------------------


def create_primary_command(template: bytes) -> bytes:
    params = tpm2b(u16(0) + u16(0))  # inSensitive: empty userAuth and data
    params += tpm2b(template) + u16(0) + u32(0)  # inPublic, outsideInfo, creationPCR
    return command(CC_CREATE_PRIMARY, [TPM_RH_OWNER], params, password_auth())


def create_command(parent: int, template: bytes, data: bytes = b"") -> bytes:
    """Create under ``parent``: a key from ``template``, or a sealed object for ``data``."""
    params = tpm2b(u16(0) + tpm2b(data)) + tpm2b(template) + u16(0) + u32(0)
    return command(CC_CREATE, [parent], params, password_auth())


def parse_create(params: bytes) -> tuple[bytes, bytes]:
    """(TPM2B_PRIVATE, TPM2B_PUBLIC), both marshaled with their size."""
    r = Reader(params, "Create")
    private = r.tpm2b()
    public = r.tpm2b()
    return tpm2b(private), tpm2b(public)


def sealed_template(policy_digest: bytes) -> bytes:
    """TPMT_PUBLIC of a sealed data object usable only through ``policy_digest``."""
    return (
        u16(TPM_ALG_KEYEDHASH)
        + u16(TPM_ALG_SHA256)
        + u32(_SEALED_ATTRIBUTES)
        + tpm2b(policy_digest)
        + u16(TPM_ALG_NULL)  # keyedHash scheme: none
        + u16(0)  # unique: empty
    )


def load_command(parent: int, private: bytes, public: bytes) -> bytes:
    """Load marshaled TPM2B_PRIVATE and TPM2B_PUBLIC (with their sizes) under ``parent``."""
    return command(CC_LOAD, [parent], private + public, password_auth())


def context_save_command(handle: int) -> bytes:
    return command(CC_CONTEXT_SAVE, [handle], b"")


def context_load_command(context: bytes) -> bytes:
    return command(CC_CONTEXT_LOAD, [], context)


def flush_command(handle: int) -> bytes:
    return command(CC_FLUSH_CONTEXT, [], u32(handle))


def quote_command(key: int, qualifying_data: bytes, selection: bytes) -> bytes:
    params = tpm2b(qualifying_data) + u16(TPM_ALG_NULL) + selection
    return command(CC_QUOTE, [key], params, password_auth())


def parse_quote(params: bytes) -> tuple[bytes, bytes]:
    """(TPMS_ATTEST, marshaled TPMT_SIGNATURE)."""
    r = Reader(params, "Quote")
    attest = r.tpm2b()
    signature = r.rest()
    if not signature:
        raise HostError("the TPM's Quote response has no signature")
    return attest, signature


def start_salted_session_command(
    tpm_key: int, nonce: bytes, encrypted_salt: bytes, session_type: int = TPM_SE_POLICY
) -> bytes:
    """A SHA-256 session of ``session_type`` (TPM_SE_POLICY or TPM_SE_HMAC) salted to
    ``tpm_key`` (unbound), AES-128-CFB parameter encryption (see
    :mod:`taonet.hosts.tpm2._session` for the salt)."""
    if session_type not in (TPM_SE_POLICY, TPM_SE_HMAC):
        raise HostError(f"unknown TPM session type {session_type:#x}")
    params = (
        tpm2b(nonce)
        + tpm2b(encrypted_salt)
        + struct.pack(">BHHHH", session_type, TPM_ALG_AES, 128, TPM_ALG_CFB, TPM_ALG_SHA256)
    )
    return command(CC_START_AUTH_SESSION, [tpm_key, TPM_RH_NULL], params)


def parse_start_auth_session(params: bytes) -> bytes:
    """nonceTPM."""
    r = Reader(params, "StartAuthSession")
    nonce = r.tpm2b()
    if r.rest() or not 16 <= len(nonce) <= 64:
        raise HostError("the TPM's StartAuthSession response is malformed")
    return nonce


def parse_create_primary(params: bytes) -> bytes:
    """outPublic (a marshaled TPM2B_PUBLIC, with its size)."""
    return tpm2b(Reader(params, "CreatePrimary").tpm2b())


def policy_restart_command(session: int) -> bytes:
    return command(CC_POLICY_RESTART, [session], b"")


def policy_pcr_command(session: int, selection: bytes) -> bytes:
    # pcrDigest empty: the TPM uses the current values (checked again at Unseal).
    return command(CC_POLICY_PCR, [session], u16(0) + selection)


def unseal_command(item: int, auth: bytes) -> bytes:
    """Unseal ``item`` with ``auth``, the salted policy session's TPMS_AUTH_COMMAND
    (see :mod:`taonet.hosts.tpm2._session`)."""
    return command(CC_UNSEAL, [item], b"", auth)


def response_auth(command: bytes, response: bytes) -> bytes:
    """The authorization area of a successful ``TPM_ST_SESSIONS`` response to ``command``
    (after its parameters); HostError if there is none."""
    split_response(command, response)  # TpmError, HostError
    if struct.unpack_from(">H", response)[0] != TPM_ST_SESSIONS:
        raise HostError("the TPM's response has no session area")
    cc = struct.unpack_from(">I", command, 6)[0]
    end_handles = HEADER + 4 * _RESPONSE_HANDLES.get(cc, 0)
    psize = struct.unpack_from(">I", response, end_handles)[0]
    return response[end_handles + 4 + psize :]


def parse_unseal(params: bytes) -> bytes:
    r = Reader(params, "Unseal")
    data = r.tpm2b()
    if r.rest():
        raise HostError("the TPM's Unseal response has trailing bytes")
    return data


def pcr_read_command(selection: bytes) -> bytes:
    return command(CC_PCR_READ, [], selection)


def parse_pcr_read(params: bytes, pcrs: tuple[int, ...]) -> dict[int, bytes]:
    """The values of ``pcrs`` (at most 8, one bank) from a PCR_Read response."""
    r = Reader(params, "PCR_Read")
    r.u32()  # pcrUpdateCounter
    if r.u32() != 1 or r.u16() != TPM_ALG_SHA256:
        raise HostError("the TPM's PCR_Read answered another bank than SHA-256")
    mask = int.from_bytes(r.take(r.u8()), "little")
    got = [p for p in range(mask.bit_length()) if mask >> p & 1]
    if got != list(pcrs):
        raise HostError(f"the TPM's PCR_Read returned PCRs {got}, not {list(pcrs)}")
    count = r.u32()
    if count != len(pcrs):
        raise HostError("the TPM's PCR_Read returned another number of digests")
    values = {}
    for p in pcrs:
        value = r.tpm2b()
        if len(value) != 32:
            raise HostError(f"the TPM's PCR_Read returned a {len(value)}-byte SHA-256 value")
        values[p] = value
    return values


def pcr_extend_command(pcr: int, digest: bytes) -> bytes:
    """Extend SHA-256 PCR ``pcr`` with ``digest`` (tests and tools; a host never extends)."""
    values = u32(1) + u16(TPM_ALG_SHA256) + digest
    return command(CC_PCR_EXTEND, [check_pcrs([pcr])[0]], values, password_auth())


def pcr_reset_command(pcr: int) -> bytes:
    """Reset PCR ``pcr`` (16 and 23 at locality 0; tests and tools)."""
    return command(CC_PCR_RESET, [check_pcrs([pcr])[0]], b"", password_auth())


def read_clock_command() -> bytes:
    return command(CC_READ_CLOCK, [], b"")


def parse_read_clock(params: bytes) -> tuple[int, int]:
    """(resetCount, restartCount): not obfuscated here, unlike inside a quote."""
    r = Reader(params, "ReadClock")
    r.u64()  # time
    r.u64()  # clock
    return r.u32(), r.u32()


def get_handles_command(first: int, count: int = 64) -> bytes:
    return command(CC_GET_CAPABILITY, [], u32(TPM_CAP_HANDLES) + u32(first) + u32(count))


def parse_get_handles(params: bytes) -> list[int]:
    r = Reader(params, "GetCapability")
    r.u8()  # moreData
    if r.u32() != TPM_CAP_HANDLES:
        raise HostError("the TPM's GetCapability answered another capability")
    count = r.u32()
    if count > 256:
        raise HostError("the TPM's GetCapability answered too many handles")
    return [r.u32() for _ in range(count)]
