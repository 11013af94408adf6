"""The client side of a salted TPM 2.0 policy or HMAC session, in Python (no TSS).

The TPM host keeps one policy session for unsealing and one HMAC session for its NV
counters (NV_Read, NV_Increment). Each is started with
TPM2_StartAuthSession salted to the storage primary (TPM 2.0 Part 1 §19.6.12,
§11.4.10.3): an ephemeral ECC P-256 key agrees ``Z`` with the primary's public point,
``salt = KDFe(SHA256, Z, "SECRET", ephemeral.x, primary.x, 256)``, and the TPM gets the
ephemeral point as ``encryptedSalt``. Only the holder of the primary's private key (the
TPM) learns the salt, so only it and this process know

    sessionKey = KDFa(SHA256, salt, "ATH", nonceTPM, nonceCaller, 256)

(bind is TPM_RH_NULL, so no bind authValue). Each command in the session then:

* sends a fresh ``nonceCaller`` and the attributes continueSession|encrypt, and the
  command HMAC ``HMAC(sessionKey || authValue, cpHash || nonceCaller || nonceTPM ||
  attributes)``, ``cpHash = SHA256(commandCode || names || parameters)``. A policy
  session that ran neither PolicyAuthValue nor PolicyPassword leaves the authValue out
  (Part 1 §19.6.13; the sealed objects' is empty anyway): the key is the sessionKey
  alone. An HMAC session includes the authorized entity's authValue, and the NV
  counters' is empty, so the key is the same. The TPM checks this HMAC once the
  session has a key (swtpm answers TPM_RC_BAD_AUTH to a wrong one), so a proxy cannot
  point the Unseal elsewhere, and since ``names`` holds each handle's Name (an NV
  index's is nameAlg || SHA-256(TPMS_NV_PUBLIC)), an NV index deleted and defined again
  with another public area between the host's commands fails it too;
* checks the response HMAC ``HMAC(sessionKey, rpHash || nonceTPM' || nonceCaller ||
  attributes)``, ``rpHash = SHA256(0 || commandCode || parameters)`` (over the
  parameters as sent, that is encrypted): a proxy that alters, replays or invents a
  response fails here, with a HostError;
* decrypts the first TPM2B response parameter with AES-128-CFB, key and IV
  ``KDFa(SHA256, sessionKey || authValue, "CFB", nonceTPM', nonceCaller, 256)``
  (Part 1 §21.3; IV zero-free, taken from the KDF output).

Nonces roll with every command: ``nonceTPM'`` becomes the next command's nonceTPM. A
response that fails its check leaves the session's nonce unknown, so the caller must
start a new session (:class:`~taonet.hosts.tpm2._runtime.TpmRuntime` rebuilds).

The primary's public point is checked by the caller against the Name recorded at
host creation before any session is salted to it (a forged primary would get the
salt).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from taonet._errors import HostError
from taonet.attestation.tpm2_credential import kdfa, kdfe

try:  # cryptography >= 47 moved CFB to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

__all__ = [
    "ATTR_CONTINUE",
    "ATTR_ENCRYPT",
    "NONCE_SIZE",
    "SaltedSession",
    "ecc_point",
    "make_salt",
    "object_name",
]

#: TPMA_SESSION bits.
ATTR_CONTINUE: Final = 0x01
ATTR_ENCRYPT: Final = 0x40
#: nonceCaller size (the session's hash size, SHA-256).
NONCE_SIZE: Final = 32
_ALG_SHA256: Final = 0x000B
_COORD: Final = 32  # P-256 coordinate size


def object_name(public: bytes) -> bytes:
    """The Name (nameAlg SHA-256 || SHA-256(TPMT_PUBLIC)) of a marshaled TPM2B_PUBLIC."""
    if len(public) < 4 or int.from_bytes(public[:2], "big") != len(public) - 2:
        raise HostError("a TPM2B_PUBLIC is malformed")
    if int.from_bytes(public[4:6], "big") != _ALG_SHA256:
        raise HostError("a TPM object's nameAlg is not SHA-256")
    return struct.pack(">H", _ALG_SHA256) + hashlib.sha256(public[2:]).digest()


def ecc_point(public: bytes, template: bytes) -> tuple[bytes, bytes]:
    """(x, y) of a marshaled TPM2B_PUBLIC made from ECC ``template`` (empty unique).

    HostError unless the public area is ``template`` with a P-256 point as its unique."""
    prefix = template[:-4]  # the template ends with unique.x, unique.y empty
    body = public[2:]
    expected = len(prefix) + 2 * (2 + _COORD)
    if (
        len(public) < 2
        or int.from_bytes(public[:2], "big") != len(body)
        or len(body) != expected
        or not body.startswith(prefix)
    ):
        raise HostError("the TPM's storage primary is not the template's P-256 key")
    rest = body[len(prefix) :]
    if rest[:2] != struct.pack(">H", _COORD) or rest[2 + _COORD : 4 + _COORD] != struct.pack(
        ">H", _COORD
    ):
        raise HostError("the TPM's storage primary has a malformed point")
    return rest[2 : 2 + _COORD], rest[4 + _COORD :]


def make_salt(x: bytes, y: bytes) -> tuple[bytes, bytes]:
    """(salt, encryptedSalt as a TPMS_ECC_POINT) for a session salted to point (x, y)."""
    try:
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError:
        raise HostError("the TPM's storage primary point is not on P-256") from None
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    z = ephemeral.exchange(ec.ECDH(), peer)
    numbers = ephemeral.public_key().public_numbers()
    ex, ey = numbers.x.to_bytes(_COORD, "big"), numbers.y.to_bytes(_COORD, "big")
    salt = kdfe("sha256", z, b"SECRET", ex, x, 256)
    point = struct.pack(">H", _COORD) + ex + struct.pack(">H", _COORD) + ey
    return salt, point


class SaltedSession:
    """One salted SHA-256 policy or HMAC session's keys and rolling nonce (see the module)."""

    __slots__ = ("_key", "handle", "nonce_tpm")

    def __init__(self, handle: int, salt: bytes, nonce_tpm: bytes, nonce_caller: bytes) -> None:
        self.handle = handle
        self.nonce_tpm = nonce_tpm
        self._key = kdfa("sha256", salt, b"ATH", nonce_tpm, nonce_caller, 256)

    def command_auth(
        self, cc: int, names: list[bytes], params: bytes, attributes: int
    ) -> tuple[bytes, bytes]:
        """(TPMS_AUTH_COMMAND, nonceCaller) for one command in this session."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        cp = hashlib.sha256(struct.pack(">I", cc) + b"".join(names) + params).digest()
        mac = hmac.new(
            self._key, cp + nonce + self.nonce_tpm + bytes([attributes]), hashlib.sha256
        ).digest()
        area = (
            struct.pack(">IH", self.handle, len(nonce))
            + nonce
            + bytes([attributes])
            + struct.pack(">H", len(mac))
            + mac
        )
        return area, nonce

    def open_response(
        self, cc: int, params: bytes, auth: bytes, nonce_caller: bytes, attributes: int
    ) -> bytes:
        """Check a response's HMAC, roll the nonce, decrypt the first TPM2B parameter.

        ``params`` is the response's parameter area and ``auth`` its one
        TPMS_AUTH_RESPONSE. Returns the parameters with the first TPM2B decrypted.
        HostError if anything does not match (the session is then unusable).
        """
        nonce_tpm, got_attrs, mac = _parse_auth_response(auth)
        if got_attrs != attributes:
            raise HostError("the TPM's response has other session attributes than sent")
        rp = hashlib.sha256(struct.pack(">II", 0, cc) + params).digest()
        want = hmac.new(
            self._key, rp + nonce_tpm + nonce_caller + bytes([got_attrs]), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(mac, want):
            raise HostError(
                "the TPM's response failed its session HMAC: something between this "
                "process and the TPM altered or forged it"
            )
        self.nonce_tpm = nonce_tpm
        if not attributes & ATTR_ENCRYPT:
            return params
        if len(params) < 2 or int.from_bytes(params[:2], "big") > len(params) - 2:
            raise HostError("the TPM's encrypted response parameter is truncated")
        n = int.from_bytes(params[:2], "big")
        bits = kdfa("sha256", self._key, b"CFB", nonce_tpm, nonce_caller, 256)
        decryptor = Cipher(algorithms.AES(bits[:16]), CFB(bits[16:])).decryptor()
        plain = decryptor.update(params[2 : 2 + n]) + decryptor.finalize()
        return params[:2] + plain + params[2 + n :]


def _parse_auth_response(auth: bytes) -> tuple[bytes, int, bytes]:
    """(nonceTPM, attributes, hmac) of exactly one TPMS_AUTH_RESPONSE."""
    if len(auth) < 2:
        raise HostError("the TPM's response session area is truncated")
    n = int.from_bytes(auth[:2], "big")
    if n != NONCE_SIZE or len(auth) < 2 + n + 3:
        raise HostError("the TPM's response session area is malformed")
    nonce = auth[2 : 2 + n]
    attrs = auth[2 + n]
    m = int.from_bytes(auth[3 + n : 5 + n], "big")
    if len(auth) != 5 + n + m:
        raise HostError("the TPM's response session area is malformed")
    return nonce, attrs, auth[5 + n :]
