"""The soft Tao: a root host whose keys live in a password-protected keyset.

A :class:`SoftHost` is named ``key([sha256 of its attestation key])``. It serves
programs by name: every operation is bound to the calling principal, which must be
the host's name or one of its sub-principals. :class:`SoftTao` is the :class:`Tao`
one program sees (in-process): the host plus the program's current name.

Sealed blobs (our own format, taonet seals only for itself)::

    b"TSL1" | len(policy) (1 byte) | policy | sha256(bound name encoding) (32 bytes)
            | AES-256-GCM(data, associated data = everything before it)

The bound name is the caller's full name for "self" and "few" (the original treats
"few" like "self"), and the host's name for "any" (any program on this host). An
unseal by another name is refused before decryption, with a clear HostError; any
flipped byte fails the AEAD check.

Shared secrets are HKDF-SHA256 over the keyset's deriving key, with the policy and
the bound name's encoding as info: stable across restarts, distinct per program.

On disk, a soft host directory holds ``keys`` (the sealed keyset, mode 0600),
once certified by a domain, ``host_cert.der`` (the policy key's host certificate,
attached to every attestation as ``root_endorsement``) and, once a program used a
counter, ``counters.sealed`` (the counter table, sealed with the host's key; see
:mod:`taonet.hosts._counters` for what that does and does not protect against).

A stacked host can use a SoftHost as its key core: it passes ``name=`` (the name its
parent gave it) and ``delegation=`` (the parent's attestation ``key(host key)
speaksfor name``), which every attestation then carries; its counters are kept apart
(see :mod:`taonet.hosts.linux._stacked`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from taonet import auth, certs
from taonet._errors import AuthenticationError, CodecError, ConfigError, HostError
from taonet._files import atomic_write, read_file
from taonet.attestation import Attestation, attest
from taonet.crypto import Crypter, KdfParams, Keyset, hkdf_sha256, load_keyset, save_keyset
from taonet.hosts._core import BoundTao
from taonet.hosts._counters import COUNTERS_FILE, CounterStore, HostCounters, SoftTableSealer
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

__all__ = ["SoftHost", "SoftTao"]

_SEAL_MAGIC: Final = b"TSL1"
_SECRET_SALT: Final = b"taonet soft tao shared secret v1"
_MAX_SECRET: Final = 255 * 32  # HKDF-SHA256's output limit
KEYS_FILE: Final = "keys"
CERT_FILE: Final = "host_cert.der"


class SoftHost:
    """A root Tao host with soft keys (see the module docstring)."""

    def __init__(
        self,
        keyset: Keyset,
        *,
        root_endorsement: bytes | None = None,
        directory: Path | None = None,
        clock: Callable[[], int] = time.time_ns,
        name: auth.Prin | None = None,
        delegation: Attestation | None = None,
    ) -> None:
        if keyset.crypter is None or keyset.deriving_key is None:
            raise ConfigError("a soft host keyset needs a crypting key and a deriving key")
        if name is not None and not isinstance(name, auth.Prin):
            raise ConfigError("a soft host's name must be a principal")
        self._keyset = keyset
        self._crypter: Crypter = keyset.crypter
        self._deriving_key: bytes = keyset.deriving_key
        self._root_endorsement = root_endorsement
        self._digests = NameDigests()
        self._directory = directory
        self._clock = clock
        self._delegation = delegation
        self._key_principal = auth.key_principal(keyset.signer.public_key_der())
        #: The host's name: its key principal, or the name a parent host gave it.
        self.name: Final = self._key_principal if name is None else name
        #: Counters and rollback-protected sealing, once opened (see open_counters).
        self.counters: HostCounters | None = None
        self._counters_lock = trio.Lock()

    # -- creation and loading -------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | Path,
        password: bytes,
        *,
        kdf: KdfParams | None = None,
        curve: str = "P-256",
        clock: Callable[[], int] = time.time_ns,
    ) -> SoftHost:
        """Make a new soft host in ``directory`` (created if needed; must hold no keys)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (path / KEYS_FILE).exists():
            raise ConfigError(f"{path} already holds a soft host keyset")
        keyset = Keyset.generate(curve=curve, crypter=True, deriving=True)
        save_keyset(path / KEYS_FILE, keyset, password, kdf=kdf or KdfParams.default())
        return cls(keyset, directory=path, clock=clock)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        password: bytes,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> SoftHost:
        """Open the soft host in ``directory``; ConfigError on a wrong password."""
        path = Path(directory)
        keyset = load_keyset(path / KEYS_FILE, password)
        cert_path = path / CERT_FILE
        endorsement = read_file(cert_path, limit=64 * 1024) if cert_path.exists() else None
        return cls(keyset, root_endorsement=endorsement, directory=path, clock=clock)

    # -- host identity ----------------------------------------------------------

    def public_key_der(self) -> bytes:
        """The host's attestation key (PKIX DER), for a domain to certify."""
        return self._keyset.signer.public_key_der()

    @property
    def key_principal(self) -> auth.Prin:
        """The attestation key's own principal (the name, unless a parent gave another)."""
        return self._key_principal

    @property
    def delegation(self) -> Attestation | None:
        """The parent's attestation that this host's key speaks for its name, if any."""
        return self._delegation

    def replace_delegation(self, delegation: Attestation) -> None:
        """Carry ``delegation`` from now on instead of the current one: the parent's
        newer attestation of the same statement (``key(host key) speaksfor name``),
        e.g. before the current one expires. One assignment, so every attestation
        carries one delegation or the other whole. HostError for another statement."""
        current = self._delegation
        try:
            said = delegation.statement().message
        except CodecError as exc:
            raise HostError(f"the new delegation does not decode: {exc}") from None
        wanted = auth.Speaksfor(delegate=self._key_principal, delegator=self.name)
        if current is None or said != wanted:
            raise HostError(
                "a new delegation must say key(this host's key) speaksfor this host's name, "
                "replacing one that did"
            )
        self._delegation = delegation

    @property
    def root_endorsement(self) -> bytes | None:
        """The policy key's certificate for this host, if it has one."""
        return self._root_endorsement

    def set_root_endorsement(self, cert_der: bytes) -> None:
        """Attach (and store, for a host on disk) the domain's host certificate."""
        cert = certs.load_certificate(cert_der, what="host certificate")
        if certs.public_key_der(cert) != self.public_key_der():
            raise ConfigError("that host certificate certifies another key than this host's")
        self._root_endorsement = cert_der
        if self._directory is not None:
            atomic_write(self._directory / CERT_FILE, cert_der, mode=0o644)

    def tao_for(self, name: auth.Prin | None = None) -> SoftTao:
        """The Tao a program named ``name`` (default: the host's own name) sees."""
        return SoftTao(self, name if name is not None else self.name)

    async def open_counters(self) -> HostCounters:
        """The host's counters, opened once: ``<directory>/counters.sealed``, sealed
        with the host's key, or an in-memory table for a host without a directory.

        HostError (naming the file) if the stored table cannot be opened.
        """
        async with self._counters_lock:
            if self.counters is None:
                if self._directory is None:
                    store = await CounterStore.open(None)
                else:
                    store = await CounterStore.open(
                        self._directory / COUNTERS_FILE, SoftTableSealer(self)
                    )
                self.counters = HostCounters(self, store)
            return self.counters

    # -- operations bound to a caller --------------------------------------------

    def check_caller(self, caller: auth.Prin) -> None:
        """HostError unless ``caller`` is this host or one of its sub-principals."""
        if not isinstance(caller, auth.Prin) or not caller.is_sub_principal_of(self.name):
            raise HostError(f"{caller} is not this host ({self.name}) or hosted by it")

    def _binding(self, caller: auth.Prin, policy: str) -> bytes:
        return self._digests(self.name if policy == SEAL_POLICY_ANY else caller)

    def seal_for(self, caller: auth.Prin, data: bytes, policy: str = SEAL_POLICY_SELF) -> bytes:
        """Seal ``data`` for ``caller`` under ``policy``."""
        self.check_caller(caller)
        check_policy(policy)
        check_size(len(data), what="seal", limit=MAX_SEALED_BYTES)
        pol = policy.encode()
        header = _SEAL_MAGIC + bytes([len(pol)]) + pol + self._binding(caller, policy)
        return header + self._crypter.encrypt(bytes(data), header)

    def unseal_for(self, caller: auth.Prin, sealed: bytes) -> tuple[bytes, str]:
        """Open ``sealed`` for ``caller``; HostError if not theirs or tampered with."""
        self.check_caller(caller)
        if len(sealed) > MAX_SEALED_BYTES + 1024:
            raise HostError("sealed data is larger than anything this host seals")
        if len(sealed) < len(_SEAL_MAGIC) + 1 or sealed[:4] != _SEAL_MAGIC:
            raise HostError("not sealed data from a taonet soft host (bad magic)")
        plen = sealed[4]
        end = 5 + plen + 32
        if len(sealed) < end:
            raise HostError("sealed data is truncated")
        policy = sealed[5 : 5 + plen].decode("ascii", errors="replace")
        if policy not in SEAL_POLICIES:
            raise HostError(f"sealed data names an unknown policy {policy!r}")
        binding = sealed[5 + plen : end]
        if not hmac.compare_digest(binding, self._binding(caller, policy)):
            raise HostError(
                f"sealed data is bound to another principal (policy {policy!r}); "
                f"{caller} may not unseal it"
            )
        try:
            data = self._crypter.decrypt(sealed[end:], sealed[:end])
        except (AuthenticationError, CodecError):
            raise HostError(
                "sealed data failed its integrity check: tampered with, or sealed by another host"
            ) from None
        return data, policy

    def shared_secret_for(self, caller: auth.Prin, n: int, policy: str = SEAL_POLICY_SELF) -> bytes:
        """``n`` bytes derived for ``caller`` under ``policy``."""
        self.check_caller(caller)
        check_policy(policy)
        check_size(n, what="shared secret", limit=_MAX_SECRET)
        if n == 0:
            return b""
        info = policy.encode() + b"\x00" + self._binding(caller, policy)
        return hkdf_sha256(self._deriving_key, salt=_SECRET_SALT, info=info, length=n)

    def attest_for(
        self,
        caller: auth.Prin,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        """Sign ``issuer says message`` for ``caller`` with the host's key."""
        self.check_caller(caller)
        now = self._clock()
        speaker, start, expiration = check_attest(caller, issuer, time, expiration, now)
        return attest(
            self._keyset.signer,
            message,
            speaker=speaker,
            time=start,
            expiration=expiration,
            now_ns=now,
            delegation=self._delegation,
            root_endorsement=self._root_endorsement,
        )


class SoftTao(BoundTao):
    """The :class:`Tao` of one program on a :class:`SoftHost` (a :class:`BoundTao`
    over the host's keys)."""

    def __init__(self, host: SoftHost, name: auth.Prin) -> None:
        super().__init__(host, name, host.open_counters)
        self._host = host

    @property
    def host(self) -> SoftHost:
        return self._host
