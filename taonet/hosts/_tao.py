"""The Tao interface every host backend implements.

A program talks to its host through a :class:`Tao`. The host knows the program's
principal name (measured when it started the program, extended by the program
itself with :meth:`Tao.extend_tao_name`), and binds every operation to that name:
sealed data opens only for the same name (policy "self"), attestations are spoken
by that name, shared secrets differ per name.

Every method is async because real backends block (RPC to a parent, TPM calls).
"""

from __future__ import annotations

import abc
from typing import Final

from taonet import auth
from taonet._errors import HostError
from taonet.attestation import Attestation

__all__ = [
    "MAX_RANDOM_BYTES",
    "MAX_SEALED_BYTES",
    "SEAL_POLICIES",
    "SEAL_POLICY_ANY",
    "SEAL_POLICY_FEW",
    "SEAL_POLICY_SELF",
    "Tao",
    "check_policy",
    "check_size",
]

SEAL_POLICY_SELF: Final = "self"
SEAL_POLICY_FEW: Final = "few"
SEAL_POLICY_ANY: Final = "any"
SEAL_POLICIES: Final = frozenset({SEAL_POLICY_SELF, SEAL_POLICY_FEW, SEAL_POLICY_ANY})

#: Largest request for random bytes or a shared secret.
MAX_RANDOM_BYTES: Final = 1024 * 1024
#: Largest payload to seal (the RPC frame ceiling leaves room for the header).
MAX_SEALED_BYTES: Final = 16 * 1024 * 1024


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
