"""A Tao bound to a name over a key core: the one such class every backend uses.

A key core holds a host's keys and does the Tao's operations for a caller it is
told the name of, checking that the caller is the host or one of its
sub-principals. A :class:`KeyCore` does them synchronously
(:class:`~taonet.hosts.SoftHost`: soft keys in a keyset); an :class:`AsyncKeyCore`
awaits them (the TPM 2.0 core, whose operations are TPM commands).
:class:`BoundTao` is the :class:`~taonet.hosts.Tao` one program sees over either:
every operation goes to the core under the program's current name, and its
counters to the core's :class:`Counters` (:class:`HostCounters`, or a TPM's NV
counters). The soft host's :class:`~taonet.hosts.SoftTao`, the Linux host's
per-program Tao and the TPM host's Tao are all this class, so a new core brings no
new copy of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

from taonet import auth
from taonet._errors import HostError
from taonet.attestation import Attestation
from taonet.hosts._tao import SEAL_POLICY_SELF, Tao, check_size

__all__ = ["AsyncKeyCore", "BoundTao", "Counters", "KeyCore", "Named", "as_async_core"]


class KeyCore(Protocol):
    """A host's keys and what they do for a named caller.

    Each method raises HostError unless ``caller`` is :attr:`name` or one of its
    sub-principals, and binds what it makes to ``caller`` (or, under the ``any``
    policy, to the host).
    """

    @property
    def name(self) -> auth.Prin:
        """The host's name."""
        ...

    def check_caller(self, caller: auth.Prin) -> None:
        """HostError unless ``caller`` is this host or one of its sub-principals."""
        ...

    def seal_for(self, caller: auth.Prin, data: bytes, policy: str = SEAL_POLICY_SELF) -> bytes:
        """Seal ``data`` for ``caller`` under ``policy``."""
        ...

    def unseal_for(self, caller: auth.Prin, sealed: bytes) -> tuple[bytes, str]:
        """Open ``sealed`` for ``caller``: the data and the policy it was sealed under."""
        ...

    def shared_secret_for(self, caller: auth.Prin, n: int, policy: str = SEAL_POLICY_SELF) -> bytes:
        """``n`` bytes derived for ``caller`` under ``policy``."""
        ...

    def attest_for(
        self,
        caller: auth.Prin,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        """Sign ``issuer says message`` for ``caller`` (issuer: ``caller`` or below)."""
        ...


class AsyncKeyCore(Protocol):
    """A :class:`KeyCore` whose operations are awaited (check_caller stays plain).

    ``is_async_core`` is True: it tells :func:`as_async_core` not to wrap it.
    """

    is_async_core: bool

    @property
    def name(self) -> auth.Prin:
        """The host's name."""
        ...

    def check_caller(self, caller: auth.Prin) -> None:
        """HostError unless ``caller`` is this host or one of its sub-principals."""
        ...

    async def seal_for(
        self, caller: auth.Prin, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes: ...

    async def unseal_for(self, caller: auth.Prin, sealed: bytes) -> tuple[bytes, str]: ...

    async def shared_secret_for(
        self, caller: auth.Prin, n: int, policy: str = SEAL_POLICY_SELF
    ) -> bytes: ...

    async def attest_for(
        self,
        caller: auth.Prin,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation: ...


class _SyncCore:
    """A :class:`KeyCore` seen as an :class:`AsyncKeyCore` (each call runs inline)."""

    is_async_core = True
    __slots__ = ("_core",)

    def __init__(self, core: KeyCore) -> None:
        self._core = core

    @property
    def name(self) -> auth.Prin:
        return self._core.name

    def check_caller(self, caller: auth.Prin) -> None:
        self._core.check_caller(caller)

    async def seal_for(
        self, caller: auth.Prin, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        return self._core.seal_for(caller, data, policy)

    async def unseal_for(self, caller: auth.Prin, sealed: bytes) -> tuple[bytes, str]:
        return self._core.unseal_for(caller, sealed)

    async def shared_secret_for(
        self, caller: auth.Prin, n: int, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        return self._core.shared_secret_for(caller, n, policy)

    async def attest_for(
        self,
        caller: auth.Prin,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        return self._core.attest_for(
            caller, message, issuer=issuer, time=time, expiration=expiration
        )


def as_async_core(core: KeyCore | AsyncKeyCore) -> AsyncKeyCore:
    """``core`` itself if it is an :class:`AsyncKeyCore`, else a thin adapter over it."""
    if getattr(core, "is_async_core", False) is True:
        return core  # type: ignore[return-value]
    return _SyncCore(core)  # type: ignore[arg-type]


class Counters(Protocol):
    """Counters and rollback-protected sealing for the programs of a key core
    (:class:`~taonet.hosts.HostCounters` keeps them in a sealed table; a TPM host in
    NV counters)."""

    async def init_counter(self, caller: auth.Prin, label: str, counter: int) -> None: ...

    async def get_counter(self, caller: auth.Prin, label: str) -> int: ...

    async def rollback_protected_seal(
        self, caller: auth.Prin, label: str, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes: ...

    async def rollback_protected_unseal(
        self, caller: auth.Prin, sealed: bytes
    ) -> tuple[bytes, str]: ...


class Named(Protocol):
    """What holds a program's current name (it grows with :meth:`Tao.extend_tao_name`)."""

    name: auth.Prin


class _Name:
    __slots__ = ("name",)

    def __init__(self, name: auth.Prin) -> None:
        self.name = name


class BoundTao(Tao):
    """The :class:`~taonet.hosts.Tao` of one program over a :class:`KeyCore` or an
    :class:`AsyncKeyCore`.

    ``program`` holds the program's name (an object with a mutable ``name``, or a
    principal); ``counters`` returns the core's :class:`Counters` (opened on first
    use if need be); ``check_name``, if given, is called with each name the program
    would extend to and raises HostError to refuse it.
    """

    def __init__(
        self,
        core: KeyCore | AsyncKeyCore,
        program: Named | auth.Prin,
        counters: Callable[[], Awaitable[Counters]],
        *,
        check_name: Callable[[auth.Prin], None] | None = None,
    ) -> None:
        holder = _Name(program) if isinstance(program, auth.Prin) else program
        core.check_caller(holder.name)
        self._core = as_async_core(core)
        self._program = holder
        self._counters = counters
        self._check_name = check_name

    async def get_tao_name(self) -> auth.Prin:
        return self._program.name

    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        if not isinstance(subprin, auth.SubPrin):
            raise HostError("extend_tao_name takes a SubPrin")
        name = self._program.name.extend(subprin)
        if self._check_name is not None:
            self._check_name(name)
        self._program.name = name

    async def get_random_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(check_size(n, what="random bytes"))

    async def get_shared_secret(self, n: int, policy: str = SEAL_POLICY_SELF) -> bytes:
        return await self._core.shared_secret_for(self._program.name, n, policy)

    async def attest(
        self,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        return await self._core.attest_for(
            self._program.name, message, issuer=issuer, time=time, expiration=expiration
        )

    async def seal(self, data: bytes, policy: str = SEAL_POLICY_SELF) -> bytes:
        return await self._core.seal_for(self._program.name, data, policy)

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        return await self._core.unseal_for(self._program.name, sealed)

    async def init_counter(self, label: str, counter: int) -> None:
        counters = await self._counters()
        await counters.init_counter(self._program.name, label, counter)

    async def get_counter(self, label: str) -> int:
        counters = await self._counters()
        return await counters.get_counter(self._program.name, label)

    async def rollback_protected_seal(
        self, label: str, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        counters = await self._counters()
        return await counters.rollback_protected_seal(self._program.name, label, data, policy)

    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        counters = await self._counters()
        return await counters.rollback_protected_unseal(self._program.name, sealed)
