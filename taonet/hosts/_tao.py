"""The Tao interface every host backend implements.

A program talks to its host through a :class:`Tao`. The host knows the program's
principal name (measured when it started the program, extended by the program
itself with :meth:`Tao.extend_tao_name`), and binds every operation to that name:
sealed data opens only for the same name (policy "self"), attestations are spoken
by that name, shared secrets differ per name.

Hosts with monotonic counters also offer rollback-protected sealing: each program
has counters by label that only increase, and a rollback-protected blob opens only
while its label's counter still holds the value it was sealed at, so an older copy
of the blob (restored from a backup, replayed by an attacker) is refused. Hosts
without counters keep the default methods, which raise :class:`~taonet.NotSupportedError`.

Every method is async because real backends block (RPC to a parent, TPM calls).
"""

from __future__ import annotations

import abc
import hashlib
from typing import Final

from taonet import auth
from taonet._errors import HostError, NotSupportedError
from taonet.attestation import DEFAULT_VALIDITY_NS, Attestation

__all__ = [
    "MAX_COUNTER",
    "MAX_LABEL_BYTES",
    "MAX_RANDOM_BYTES",
    "MAX_SEALED_BYTES",
    "NOT_SUPPORTED",
    "SEAL_POLICIES",
    "SEAL_POLICY_ANY",
    "SEAL_POLICY_FEW",
    "SEAL_POLICY_SELF",
    "NameDigests",
    "Tao",
    "check_attest",
    "check_counter",
    "check_label",
    "check_policy",
    "check_size",
    "check_time",
]

SEAL_POLICY_SELF: Final = "self"
SEAL_POLICY_FEW: Final = "few"
SEAL_POLICY_ANY: Final = "any"
SEAL_POLICIES: Final = frozenset({SEAL_POLICY_SELF, SEAL_POLICY_FEW, SEAL_POLICY_ANY})

#: Largest request for random bytes or a shared secret.
MAX_RANDOM_BYTES: Final = 1024 * 1024
#: Largest payload to seal (the RPC frame ceiling leaves room for the header).
MAX_SEALED_BYTES: Final = 16 * 1024 * 1024
#: Longest counter label, in bytes of UTF-8.
MAX_LABEL_BYTES: Final = 256
#: Largest counter value (counters are int64 on the wire and never negative).
MAX_COUNTER: Final = 2**63 - 1
#: What a host without counters answers the counter methods.
NOT_SUPPORTED: Final = "not supported by this host"


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is one of self, few, any; else raise HostError."""
    if policy not in SEAL_POLICIES:
        raise HostError(f"unknown policy {policy!r}: expected one of self, few, any")
    return policy


def check_size(n: int, *, what: str, limit: int = MAX_RANDOM_BYTES) -> int:
    """Return ``n`` if 0 <= n <= limit; else raise HostError."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= limit:
        raise HostError(f"{what}: size must be an integer from 0 to {limit}, got {n!r}")
    return n


def check_label(label: str) -> str:
    """Return ``label`` if it is a non-empty str of at most 256 bytes of UTF-8."""
    if not isinstance(label, str):
        raise HostError(f"a counter label must be a string, got {type(label).__name__}")
    try:
        size = len(label.encode("utf-8"))
    except UnicodeEncodeError:
        raise HostError("a counter label must be valid UTF-8 text") from None
    if not 0 < size <= MAX_LABEL_BYTES:
        raise HostError(
            f"a counter label must be 1 to {MAX_LABEL_BYTES} bytes of UTF-8, got {size} bytes"
        )
    return label


def check_time(value: int | None, what: str) -> None:
    """HostError unless ``value`` (an attestation time) is None or an int64 of ns."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63
    ):
        raise HostError(f"attest: {what} must be an int64 of nanoseconds, got {value!r}")


def check_attest(
    caller: auth.Prin,
    issuer: auth.Prin | None,
    time: int | None,
    expiration: int | None,
    now_ns: int,
) -> tuple[auth.Prin, int, int]:
    """A key core's checks of an attest request: the speaker (``issuer``, or the
    caller; it must be the caller or below), and the statement's start and expiration
    (from ``now_ns`` for a year by default). HostError for anything else."""
    speaker = caller if issuer is None else issuer
    if not isinstance(speaker, auth.Prin):
        raise HostError(f"attest: the issuer must be a principal, got {type(speaker).__name__}")
    if not speaker.is_sub_principal_of(caller):
        raise HostError(f"issuer {speaker} is not {caller} or one of its sub-principals")
    check_time(time, "time")
    check_time(expiration, "expiration")
    start = now_ns if time is None else time
    if expiration is None:
        if start > 2**63 - 1 - DEFAULT_VALIDITY_NS:
            raise HostError("attest: a statement from that time cannot get the default validity")
        expiration = start + DEFAULT_VALIDITY_NS
    return speaker, start, expiration


class NameDigests:
    """SHA-256 of principals' encodings, remembered for the names programs keep.

    Programs keep their name object between calls: digests are remembered by identity
    (the object is kept with its digest, so an id is never reused wrongly), at most
    ``limit`` of them.
    """

    __slots__ = ("_digests", "_limit")

    def __init__(self, limit: int = 1024) -> None:
        self._digests: dict[int, tuple[auth.Prin, bytes]] = {}
        self._limit = limit

    def __call__(self, name: auth.Prin) -> bytes:
        cached = self._digests.get(id(name))
        if cached is not None and cached[0] is name:
            return cached[1]
        digest = hashlib.sha256(auth.encode(name)).digest()
        if len(self._digests) >= self._limit:
            self._digests.clear()
        self._digests[id(name)] = (name, digest)
        return digest


def check_counter(value: int) -> int:
    """Return ``value`` if it is an integer from 0 to 2**63 - 1 (an int64 >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise HostError(f"a counter must be an integer from 0 to {MAX_COUNTER}, got {value!r}")
    return value


class Tao(abc.ABC):
    """What a hosted program may ask of its host."""

    @abc.abstractmethod
    async def get_tao_name(self) -> auth.Prin:
        """The caller's full principal name."""

    @abc.abstractmethod
    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        """Irreversibly extend the caller's name with ``subprin``."""

    @abc.abstractmethod
    async def get_random_bytes(self, n: int) -> bytes:
        """``n`` random bytes from the host's best source."""

    @abc.abstractmethod
    async def get_shared_secret(self, n: int, policy: str = SEAL_POLICY_SELF) -> bytes:
        """``n`` bytes derived for the caller under ``policy`` (stable across restarts)."""

    @abc.abstractmethod
    async def attest(
        self,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        """Have the host sign ``issuer says message`` for the caller.

        ``issuer`` defaults to the caller's name and must be it or a sub-principal of
        it. Times are int64 nanoseconds since the epoch; by default the statement is
        valid from now for one year.
        """

    @abc.abstractmethod
    async def seal(self, data: bytes, policy: str = SEAL_POLICY_SELF) -> bytes:
        """Encrypt and integrity-protect ``data`` so only ``policy`` may unseal it."""

    @abc.abstractmethod
    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        """Open data sealed by :meth:`seal`; return it and its policy.

        Raises HostError if the caller is not allowed or the blob was tampered with.
        """

    # -- counters and rollback-protected sealing (optional) ------------------------------

    async def init_counter(self, label: str, counter: int) -> None:
        """Set the caller's counter for ``label`` to ``counter``.

        Counters only increase: a value below the current one is a HostError, the
        current value is a no-op. ``counter`` is an int64 >= 0.
        """
        raise NotSupportedError(NOT_SUPPORTED)

    async def get_counter(self, label: str) -> int:
        """The caller's counter for ``label``; HostError if it has none."""
        raise NotSupportedError(NOT_SUPPORTED)

    async def rollback_protected_seal(
        self, label: str, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        """Bump the caller's counter for ``label`` and seal ``data`` bound to it.

        A missing counter starts from 0, so the first seal is at 1. The new counter
        is durable before the blob is returned. Every earlier blob for ``label``
        stops opening: keep the returned one.
        """
        raise NotSupportedError(NOT_SUPPORTED)

    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        """Open a blob from :meth:`rollback_protected_seal`; return the data and policy.

        HostError if the blob belongs to another program, or if its counter is not
        the label's current counter: lower means an older blob (rollback detected),
        higher means the host's own counter state was rolled back.
        """
        raise NotSupportedError(NOT_SUPPORTED)
