"""The TPM 2.0 key core: the Tao's operations done by a TPM for a named caller.

:class:`Tpm2Core` is an :class:`~taonet.hosts.AsyncKeyCore`, so the one
:class:`~taonet.hosts.BoundTao` serves it as it serves the soft core. Its name is
``tpm2([sha256 of the PKIX quote key]).PCRs("nums", "hexvals")`` over the PCRs it
was configured with, as read when it started.

Attest: TPM2_Quote over those PCRs with qualifying data SHA-256(serialized
statement); the quote key's certificate, once the domain certified it, is the
attestation's root endorsement. A quote whose PCR digest is not the one the name
states (a PCR was extended since the host started) is refused here, with the PCRs
that differ, rather than handed out to fail verification later.

Seal (hybrid): a fresh AES-256-GCM key goes into a TPM sealed object whose only
authorization is the PolicyPCR digest of the name's PCR values; the data is
encrypted under that key. Sealed blobs (distinct from the soft host's ``TSL1``)::

    b"T2S1" | len(policy) (1 byte) | policy | sha256(bound name encoding) (32 bytes)
            | TPM2B_PRIVATE | TPM2B_PUBLIC (the sealed object)
            | nonce (12 bytes) | AES-256-GCM(data, associated data = everything before the nonce)

The bound name and the policies are the soft host's: the caller's full name for
"self" and "few", the host's name for "any". Unseal checks the binding, that the
sealed object has exactly this host's policy, then loads it and runs PolicyRestart,
PolicyPCR and Unseal in the kept policy session: a PCR extended after sealing makes
the TPM refuse, reported as a HostError naming the PCRs that changed.

Shared secrets: HKDF-SHA256 over a deriving key kept sealed (PCR policy) in the
state directory, with the policy and the bound name as info.

Who can use the TPM can also unseal what this host sealed while the PCRs hold,
and could make sealed objects of its own: the TPM host protects against other
machines and other boot states, not against other users of the same TPM device.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taonet import auth
from taonet._errors import HostError
from taonet.attestation import Attestation
from taonet.attestation.tpm2 import host_name, pcr_digest, tpm2_attestation
from taonet.crypto import hkdf_sha256
from taonet.hosts._tao import (
    MAX_SEALED_BYTES,
    SEAL_POLICIES,
    SEAL_POLICY_ANY,
    SEAL_POLICY_SELF,
    NameDigests,
    check_attest,
    check_policy,
    check_size,
)
from taonet.hosts.tpm2 import _wire
from taonet.hosts.tpm2._runtime import TpmRuntime, differing

__all__ = ["SEAL_MAGIC", "Tpm2Core"]

SEAL_MAGIC: Final = b"T2S1"
_NONCE: Final = 12
_SECRET_SALT: Final = b"taonet tpm2 tao shared secret v1"
_MAX_SECRET: Final = 255 * 32
_MAX_OBJECT: Final = 2048  # a sealed object's TPM2B_PRIVATE or TPM2B_PUBLIC


class Tpm2Core:
    """A TPM host's key core (an :class:`~taonet.hosts.AsyncKeyCore`)."""

    is_async_core = True

    def __init__(
        self,
        runtime: TpmRuntime,
        *,
        quote_key_der: bytes,
        pcrs: dict[int, bytes],
        root_endorsement: bytes | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._runtime = runtime
        self.quote_key_der: Final = quote_key_der
        self.pcrs: Final = dict(pcrs)
        self._name = host_name(quote_key_der, pcrs)
        self.root_endorsement = root_endorsement
        self._clock = clock
        self._deriving_key = b""
        self._policy_digest = runtime.policy_digest
        # A sealed object's public area: our template, then unique = a 32-byte digest.
        prefix = _wire.sealed_template(self._policy_digest)[:-2]
        self._sealed_prefix = prefix
        digest = pcr_digest(pcrs)
        # How every good quote of this host ends: the selection, then the digest.
        self._quote_tail = runtime.selection + _wire.tpm2b(digest)
        self._digests = NameDigests()

    @property
    def runtime(self) -> TpmRuntime:
        """The TPM connection and what it keeps loaded."""
        return self._runtime

    @property
    def name(self) -> auth.Prin:
        """The host's name: its quote key and the PCR values it started with."""
        return self._name

    def set_deriving_key(self, key: bytes) -> None:
        self._deriving_key = key

    def check_caller(self, caller: auth.Prin) -> None:
        """HostError unless ``caller`` is this host or one of its sub-principals."""
        if not isinstance(caller, auth.Prin) or not caller.is_sub_principal_of(self._name):
            raise HostError(f"{caller} is not this host ({self._name}) or hosted by it")

    def _binding(self, caller: auth.Prin, policy: str) -> bytes:
        return self._digests(self._name if policy == SEAL_POLICY_ANY else caller)

    # -- attest ----------------------------------------------------------------------

    async def attest_for(
        self,
        caller: auth.Prin,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        """A quote-signed ``issuer says message`` for ``caller``."""
        self.check_caller(caller)
        speaker, start, expiration = check_attest(caller, issuer, time, expiration, self._clock())
        statement = auth.Says(speaker=speaker, message=message, time=start, expiration=expiration)
        serialized = auth.encode(statement)
        qualifying = hashlib.sha256(serialized).digest()
        runtime = self._runtime

        async def quote() -> tuple[bytes, bytes, dict[int, bytes] | None]:
            handle = await runtime.load_quote_key()
            try:
                _, params = await runtime.call(
                    _wire.quote_command(handle, qualifying, runtime.selection)
                )
            finally:
                await runtime.flush(handle)
            attest, signature = _wire.parse_quote(params)
            now = None if attest.endswith(self._quote_tail) else await runtime.read_pcrs()
            return attest, signature, now

        attest, signature, now = await runtime.run(quote)
        if now is not None:
            raise HostError(
                f"the TPM's PCRs changed since this host started ({differing(self.pcrs, now)} "
                "differ from its name): it cannot attest under that name"
            )
        return tpm2_attestation(
            serialized,
            self.quote_key_der,
            attest,
            signature,
            root_endorsement=self.root_endorsement,
        )

    # -- seal and unseal ---------------------------------------------------------------

    async def seal_for(
        self, caller: auth.Prin, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        """Seal ``data`` for ``caller`` under ``policy`` (see the module docstring)."""
        self.check_caller(caller)
        check_policy(policy)
        check_size(len(data), what="seal", limit=MAX_SEALED_BYTES)
        key = secrets.token_bytes(32)
        private, public = await self.seal_object(key)
        pol = policy.encode()
        header = SEAL_MAGIC + bytes([len(pol)]) + pol + self._binding(caller, policy)
        header += private + public
        nonce = secrets.token_bytes(_NONCE)
        return header + nonce + AESGCM(key).encrypt(nonce, bytes(data), header)

    async def seal_object(self, secret: bytes) -> tuple[bytes, bytes]:
        """A TPM sealed object holding ``secret`` under this host's PCR policy."""
        runtime = self._runtime
        template = _wire.sealed_template(self._policy_digest)

        async def create() -> tuple[bytes, bytes]:
            _, params = await runtime.call(_wire.create_command(runtime.primary, template, secret))
            return _wire.parse_create(params)

        return await runtime.run(create)

    async def unseal_for(self, caller: auth.Prin, sealed: bytes) -> tuple[bytes, str]:
        """Open ``sealed`` for ``caller``; HostError if not theirs, tampered with, or
        the PCRs changed since it was sealed."""
        self.check_caller(caller)
        if len(sealed) > MAX_SEALED_BYTES + 8192:
            raise HostError("sealed data is larger than anything this host seals")
        sealed = bytes(sealed)
        if sealed[:4] != SEAL_MAGIC or len(sealed) < 5:
            raise HostError("not sealed data from a taonet TPM host (bad magic)")
        plen = sealed[4]
        end = 5 + plen + 32
        policy = sealed[5 : 5 + plen].decode("ascii", errors="replace")
        if len(sealed) < end or policy not in SEAL_POLICIES:
            raise HostError("sealed data is truncated or names an unknown policy")
        if not hmac.compare_digest(sealed[5 + plen : end], self._binding(caller, policy)):
            raise HostError(
                f"sealed data is bound to another principal (policy {policy!r}); "
                f"{caller} may not unseal it"
            )
        private, public, rest = _split_objects(sealed, end)
        header_end = len(sealed) - len(rest)
        if len(rest) < _NONCE + 16:
            raise HostError("sealed data is truncated")
        key = await self.unseal_object(private, public)
        try:
            data = AESGCM(key).decrypt(rest[:_NONCE], rest[_NONCE:], sealed[:header_end])
        except (InvalidTag, ValueError):
            raise HostError(
                "sealed data failed its integrity check: tampered with, or sealed by another host"
            ) from None
        return data, policy

    async def unseal_object(self, private: bytes, public: bytes) -> bytes:
        """The secret in a sealed object of this host (PolicyPCR in the kept session)."""
        prefix = self._sealed_prefix
        size = len(prefix) + 34
        if (
            len(public) != 2 + size
            or int.from_bytes(public[:2], "big") != size
            or not public.startswith(prefix, 2)
            or public[2 + len(prefix) : 4 + len(prefix)] != b"\x00\x20"
        ):
            raise HostError("the sealed object is not under this host's PCR policy")
        runtime = self._runtime

        async def unseal() -> bytes:
            try:
                handles, _ = await runtime.call(
                    _wire.load_command(runtime.primary, private, public)
                )
            except _wire.TpmError as exc:
                if exc.command == _wire.CC_LOAD and _wire.is_parameter_error(exc.tpm_rc):
                    raise HostError(
                        f"sealed data failed its integrity check: tampered with, or sealed by "
                        f"another host or TPM ({exc})",
                        rc=exc.rc,
                    ) from None
                raise
            handle = _wire.handle_of(handles)
            try:
                await runtime.call(_wire.policy_restart_command(runtime.session))
                await runtime.call(_wire.policy_pcr_command(runtime.session, runtime.selection))
                try:
                    secret = await runtime.unseal(handle, public)
                except _wire.TpmError as exc:
                    if exc.base in (_wire.RC_POLICY_FAIL, _wire.RC_PCR_CHANGED):
                        now = await runtime.read_pcrs()
                        which = differing(self.pcrs, now)
                        where = (
                            f"{which} differ from this host's name"
                            if which
                            else "the PCRs differ from those it was sealed under"
                        )
                        raise HostError(
                            f"the TPM refused to unseal: the PCRs changed since the data was "
                            f"sealed ({where}) ({exc})",
                            rc=exc.rc,
                        ) from None
                    raise
            finally:
                await runtime.flush(handle)
            return secret

        return await runtime.run(unseal)

    # -- shared secrets ------------------------------------------------------------------

    async def shared_secret_for(
        self, caller: auth.Prin, n: int, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        """``n`` bytes derived for ``caller`` under ``policy`` (stable across restarts)."""
        self.check_caller(caller)
        check_policy(policy)
        check_size(n, what="shared secret", limit=_MAX_SECRET)
        if n == 0:
            return b""
        if not self._deriving_key:
            raise HostError("this TPM host has no deriving key loaded")
        info = policy.encode() + b"\x00" + self._binding(caller, policy)
        return hkdf_sha256(self._deriving_key, salt=_SECRET_SALT, info=info, length=n)

    def derived_key(self, purpose: bytes) -> bytes:
        """A 32-byte key for the host's own use (``purpose`` keeps uses apart)."""
        return hkdf_sha256(
            self._deriving_key, salt=_SECRET_SALT, info=b"host\x00" + purpose, length=32
        )


def _split_objects(data: bytes, start: int) -> tuple[bytes, bytes, bytes]:
    pos = start
    parts = []
    for _ in range(2):
        if len(data) < pos + 2:
            raise HostError("sealed data is truncated")
        n = int.from_bytes(data[pos : pos + 2], "big")
        if n > _MAX_OBJECT or len(data) < pos + 2 + n:
            raise HostError("sealed data is truncated or its TPM object is malformed")
        parts.append(data[pos : pos + 2 + n])
        pos += 2 + n
    return parts[0], parts[1], data[pos:]
